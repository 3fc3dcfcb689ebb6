"""Training step time: vlmbed against a plain-transformers reimplementation of the VLM2Vec training step.

    python benchmarks/train_throughput.py [--size 16m] [--batch-size 16] [--chunk 4] [--steps 8] [--repeats 3]

Same model (a random Qwen2.5-VL folder, :mod:`speed_world`: ``16m`` by default, the size where compute
dominates a step as in released models; ``tiny`` measures per-forward overhead), same examples, fp32, SDPA,
one process; both update with fused AdamW (the HF Trainer's default, which VLM2Vec trains with; vlmbed's
``build_optimizer``).
Examples are (query, positive) pairs: text -> text, text -> image, image + text -> text.

- ``baseline`` (VLM2Vec's step, written here with transformers only): raw strings with the image placeholder
  and PIL images go through the processor in the step (VLM2Vec's collator, padding to the longest row of a
  fixed-size random batch), ``model.model`` -> last-token pooling at ``attention_mask.sum() - 1`` ->
  normalise -> in-batch InfoNCE (temperature 0.02) -> backward -> AdamW. Its GradCache: a gradient-free
  forward of every chunk, the loss and its gradient on the cached representations, then a forward with a
  graph and backward of ``(reps * grad).sum()`` per chunk (two forwards), as VLM2Vec's GradCache does.
- ``vlmbed``: the training loop's pieces: batches from vlmbed's plan (fixed size on fixed-length data,
  token budget on mixed data: ``data.batching.mode=token_budget`` with the budget scaled until a batch holds
  on average ``--batch-size`` examples), collated by the loader in the training process (``--workers 0``, the
  default ``data.num_workers``: on a 2-core machine a worker process takes a core from the model), then
  :func:`vlmbed.train.gradcache.full_batch_step` or :class:`~vlmbed.train.gradcache.GradCache` with the
  InfoNCE objective, AdamW. GradCache's gradient-free first pass takes ``4 x --chunk`` rows per forward
  (``train.gradcache_embed_chunk: auto``; the model has no active dropout).

Settings: ``fixed`` (every query and every positive of one length: texts of exactly ``--text-tokens``
tokens, images of one size) and ``mixed`` (text lengths and image sizes drawn per example), each ``plain``
and ``gradcache`` (``--chunk`` rows per forward). Both sides train on the same examples for ``--steps``
batches' worth (``steps * batch_size`` examples) per repeat; ``step_s`` = seconds per ``batch_size``
examples (median over interleaved repeats). Prints one JSON line: per setting ``step_s_vlmbed``,
``step_s_baseline``; ``ratio_fixed`` / ``ratio_mixed`` (baseline over vlmbed, plain), ``gradcache_over_plain``
(vlmbed, fixed data) and the same for the baseline, ``loss_rel_diff`` (first-step loss of the two on the
same fixed batch).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from speed_world import SIZES, build_model, interleaved  # noqa: E402

PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
EOS = "<|im_end|>"
TEMPERATURE = 0.02


# ----------------------------------------------------------------------------- data
def make_examples(n: int, rng, tokenizer, mixed: bool, text_tokens: int, side: int):
    from encode_throughput import single_token_words
    from PIL import Image

    from vlmbed.types import Example, Item

    words = single_token_words(tokenizer)

    def text(k):
        return "".join(" " + str(w) for w in rng.choice(words, size=max(1, int(k))))

    def length():
        return rng.integers(3, 4 * text_tokens) if mixed else text_tokens

    def image():
        w, h = (rng.integers(side // 4, 2 * side, size=2) if mixed else (side, side))
        return Image.fromarray((rng.random((int(h), int(w), 3)) * 255).astype("uint8"))

    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(Example(query=Item(text=text(length())), positives=[Item(text=text(length()))], task="t2t"))
        elif kind == 1:
            out.append(Example(query=Item(text=text(length())), positives=[Item(image=image())], task="t2i"))
        else:
            out.append(Example(query=Item(text=text(length() // 2), image=image()), positives=[Item(text=text(length()))], task="vqa"))
    return out


# ----------------------------------------------------------------------------- the VLM2Vec-style baseline
class Baseline:
    """VLM2Vec's training step with transformers only (see the module docstring)."""

    def __init__(self, folder: Path, lr: float):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32,
                                                                 attn_implementation="sdpa")
        self.model.train()
        self.processor = AutoProcessor.from_pretrained(folder)
        # the HF Trainer's default optimizer (VLM2Vec trains with it): fused AdamW since torch 2.8
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, fused=True)

    def collate(self, items) -> dict:
        texts = [(PLACEHOLDER if it.has_image else "") + it.text + EOS for it in items]
        images = [it.load_image() for it in items if it.has_image]
        return dict(self.processor(text=texts, images=images or None, padding=True, return_tensors="pt"))

    def embed(self, inputs: dict) -> torch.Tensor:
        hidden = self.model.model(**inputs, use_cache=False).last_hidden_state  # (B, T, d)
        last = inputs["attention_mask"].sum(dim=1) - 1  # (B,) right padding
        reps = hidden[torch.arange(hidden.shape[0]), last]  # (B, d)
        return torch.nn.functional.normalize(reps, dim=-1)

    @staticmethod
    def loss(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        logits = q @ p.T / TEMPERATURE  # (B, B)
        return torch.nn.functional.cross_entropy(logits, torch.arange(q.shape[0]))

    def step(self, examples, chunk: int | None) -> float:
        q_in = self.collate([ex.query for ex in examples])
        p_in = self.collate([ex.positive for ex in examples])
        if chunk is None:
            loss = self.loss(self.embed(q_in), self.embed(p_in))
            loss.backward()
        else:
            loss = self.gradcache(q_in, p_in, chunk)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def gradcache(self, q_in: dict, p_in: dict, chunk: int) -> torch.Tensor:
        q_chunks, p_chunks = self.split(q_in, chunk), self.split(p_in, chunk)
        with torch.no_grad():
            q = torch.cat([self.embed(c) for c in q_chunks])
            p = torch.cat([self.embed(c) for c in p_chunks])
        q.requires_grad_(True)
        p.requires_grad_(True)
        loss = self.loss(q, p)
        loss.backward()
        for chunks, grads in ((q_chunks, q.grad), (p_chunks, p.grad)):
            start = 0
            for c in chunks:
                reps = self.embed(c)
                (reps * grads[start : start + reps.shape[0]]).sum().backward()
                start += reps.shape[0]
        return loss.detach()

    def split(self, inputs: dict, chunk: int) -> list[dict]:
        """Row chunks; images go with their rows (Qwen's flat pixel layout, cut at each row's patches)."""
        n = inputs["input_ids"].shape[0]
        if "pixel_values" not in inputs:
            return [{k: v[s : s + chunk] for k, v in inputs.items()} for s in range(0, n, chunk)]
        image_token = self.model.config.image_token_id
        per_row = (inputs["input_ids"] == image_token).sum(dim=1) * 4  # patches per row (merge 2 x 2)
        ends = per_row.cumsum(0)
        out, grid_at = [], 0
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            a, b = int(ends[s - 1]) if s else 0, int(ends[e - 1])
            rows_with_image = int((per_row[s:e] > 0).sum())
            part = {k: v[s:e] for k, v in inputs.items() if k not in ("pixel_values", "image_grid_thw")}
            if b > a:
                part["pixel_values"] = inputs["pixel_values"][a:b]
                part["image_grid_thw"] = inputs["image_grid_thw"][grid_at : grid_at + rows_with_image]
            grid_at += rows_with_image
            out.append(part)
        return out


# ----------------------------------------------------------------------------- vlmbed
class Vlmbed:
    """vlmbed's training pieces: plan, collator in a loader worker, full batch or GradCache, InfoNCE."""

    def __init__(self, folder: Path, lr: float):
        from vlmbed.config import TrainConfig
        from vlmbed.models.embedder import Embedder
        from vlmbed.train.optim import build_optimizer

        self.embedder = Embedder.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
        self.embedder.train()
        self.opt = build_optimizer(self.embedder, TrainConfig(lr=lr, weight_decay=0.0))  # vlmbed's optimizer

    def batches(self, examples, batch_size: int, budget: bool, seed: int) -> list[list[int]]:
        from vlmbed.data.batching import BatchingSpec, BatchPlan
        from vlmbed.data.costs import CostModel, example_costs

        if not budget:
            spec = BatchingSpec(batch_size=batch_size)
            return [b[0] for b in BatchPlan(len(examples), spec, seed=seed).epoch(0)]
        costs = example_costs(examples, CostModel(self.embedder.encoder, kind="tokens"))
        tokens = batch_size * float((costs[:, 0] + costs[:, 1]).mean())  # both roles' tokens, before padding
        for _ in range(4):  # scale the budget until a batch holds batch_size examples on average
            spec = BatchingSpec(batch_size=batch_size, mode="token_budget", max_tokens=int(tokens))
            plan = [b[0] for b in BatchPlan(len(examples), spec, seed=seed, costs=costs).epoch(0)]
            tokens *= batch_size / (sum(len(b) for b in plan) / len(plan))
        return plan

    def loader(self, examples, plan: list[list[int]], workers: int):
        from torch.utils.data import DataLoader

        from vlmbed.data.collate import ContrastiveCollator

        collator = ContrastiveCollator(self.embedder.encoder)
        return DataLoader([[examples[i] for i in b] for b in plan], batch_size=None, collate_fn=collator,
                          num_workers=workers, persistent_workers=workers > 0)  # workers live across epochs

    def step(self, batch: dict, chunk: int | None) -> torch.Tensor:
        from vlmbed.config import InfoNCEConfig
        from vlmbed.train.gradcache import GradCache, embed_chunk_size, full_batch_step
        from vlmbed.train.loop import encoder_fn
        from vlmbed.train.losses import contrastive_loss

        objectives = [InfoNCEConfig(temperature=TEMPERATURE)]
        roles = {"query": batch["query"], "positive": batch["positive"]}

        def loss_fn(reps):
            return contrastive_loss(reps, batch, objectives)

        def backward(loss, _last):
            loss.backward()

        encode = encoder_fn(self.embedder)
        if chunk is None:
            out = full_batch_step(encode, roles, loss_fn, backward, adapter=self.embedder.adapter,
                                  image_token_id=self.embedder.model.config.image_token_id)
        else:
            engine = GradCache(chunk, self.embedder.model.config.image_token_id, adapter=self.embedder.adapter,
                               embed_chunk_size=embed_chunk_size("auto", chunk, self.embedder))
            out = engine.step(encode, roles, loss_fn, backward)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return out.parts["loss"]


# ----------------------------------------------------------------------------- measurement
def run(args) -> dict:
    rng = np.random.default_rng(0)
    out: dict = {"torch_threads": torch.get_num_threads(), "size": args.size, "batch_size": args.batch_size,
                 "chunk": args.chunk, "steps": args.steps, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(Path(tmp) / args.size, args.size)
        base, ours = Baseline(folder, args.lr), Vlmbed(folder, args.lr)
        side = int(SIZES[args.size][2][1] ** 0.5)
        n = args.steps * args.batch_size
        tok = ours.embedder.processor.tokenizer
        data = {kind: make_examples(n, rng, tok, kind == "mixed", args.text_tokens, side) for kind in ("fixed", "mixed")}
        first = data["fixed"][: args.batch_size]
        out["loss_baseline"] = base.step(first, None)
        out["loss_vlmbed"] = float(ours.step(ours.loader(first, [list(range(len(first)))], 0).__iter__().__next__(),
                                             None))
        out["loss_rel_diff"] = round(abs(out["loss_baseline"] - out["loss_vlmbed"]) / abs(out["loss_baseline"]), 6)
        for kind, examples in data.items():
            plan = ours.batches(examples, args.batch_size, budget=kind == "mixed", seed=0)
            order = np.random.default_rng(1).permutation(n)  # the baseline's random fixed-size batches
            fixed_batches = [[examples[i] for i in order[s : s + args.batch_size]] for s in range(0, n, args.batch_size)]
            loader = ours.loader(examples, plan, args.workers)  # one loader, as in a training run
            units = {"vlmbed": sum(len(b) for b in plan) / args.batch_size, "baseline": n / args.batch_size}
            for mode, chunk in (("plain", None), ("gradcache", args.chunk)):

                def run_baseline(chunk=chunk, fixed_batches=fixed_batches):
                    for b in fixed_batches:
                        base.step(b, chunk)

                def run_vlmbed(chunk=chunk, loader=loader):
                    for batch in loader:
                        ours.step(batch, chunk)

                arms = {"vlmbed": run_vlmbed, "baseline": run_baseline}
                for arm in arms.values():  # warm-up: loader workers started, allocator and optimizer state
                    arm()
                times = interleaved(arms, args.repeats)
                name = f"{kind}_{mode}"
                out[name] = {f"step_s_{arm}": round(statistics.median(ts) / units[arm], 4) for arm, ts in times.items()}
                out[name]["batches_vlmbed"] = len(plan)
    out["ratio_fixed"] = round(out["fixed_plain"]["step_s_baseline"] / out["fixed_plain"]["step_s_vlmbed"], 3)
    out["ratio_mixed"] = round(out["mixed_plain"]["step_s_baseline"] / out["mixed_plain"]["step_s_vlmbed"], 3)
    for arm in ("vlmbed", "baseline"):
        key = "gradcache_over_plain" + ("" if arm == "vlmbed" else "_baseline")
        out[key] = round(out["fixed_gradcache"][f"step_s_{arm}"] / out["fixed_plain"][f"step_s_{arm}"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="16m", choices=list(SIZES))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--text-tokens", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-5)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
