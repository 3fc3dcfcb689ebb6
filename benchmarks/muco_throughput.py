"""MuCo's efficiency claim in miniature: pairs per second of training, multi-turn (k pairs per image in one
query row and one target row) against single-turn (one pair per row), both arms in one run.

What is timed: one training step's forward AND backward (full batch, no GradCache) of the muco objective on
pre-collated batches of the tiny world (``tiny_pretrained``, ``scenes_turns`` records: scene image + 7
question/answer pairs). Both arms have the same number of rows (``--batch-size`` images); the multi-turn arm
reads k = 7 embeddings per row, the single-turn arm 1 (one pair sampled per image, MuCo's single-turn
baseline). Steps alternate between the arms (``--repeats`` rounds after ``--warmup``) so machine load hits
both alike; the median step time of each arm is used. Collation and the optimizer update are not timed.

Prints ONE JSON line: ``pairs_per_s_multiturn``, ``pairs_per_s_single``, ``ratio`` (the paper: 7x effective
batch for +2.9% compute, so the ratio approaches 7 when the image dominates a row's cost), the tokens per
row of each arm and the settings.

    python benchmarks/muco_throughput.py
    python benchmarks/muco_throughput.py --min-pixels 4096   # scenes upscaled to 64 image tokens
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build(args):
    import torch

    from vlmbed.config import load_recipe
    from vlmbed.data.formats import scenes_turns
    from vlmbed.data.jsonl import ReadStats
    from vlmbed.models.build import build_embedder
    from vlmbed.train.pretrain_tiny import resolve_input_model
    from vlmbed.train.turns_data import turns_collator

    torch.manual_seed(0)
    overrides = [f"model.path={args.model}"] + ([f"model.min_pixels={args.min_pixels}"] if args.min_pixels else [])
    stage = load_recipe("muco_tiny", overrides).stages[0]
    embedder = build_embedder(stage.model, resolve_input_model(stage.model, Path(tempfile.mkdtemp())), token_roles=("mark", "mask"))
    embedder.train()
    examples = scenes_turns.read(stage.data.sources[0], stage.data, ReadStats())
    batches = {}
    for arm, turns in (("multiturn", args.turns), ("single", 1)):
        arm_stage = stage.model_copy(deep=True)
        arm_stage.objectives[0].turns = turns
        collate = turns_collator(arm_stage, embedder)
        n = args.batch_size
        batches[arm] = ([collate([(0, b, ex) for ex in examples[b * n : (b + 1) * n]]) for b in range(args.batches)],
                        arm_stage.objectives, turns)
    return embedder, batches


def step_seconds(embedder, batch, objectives) -> float:
    from vlmbed.train.loop import encoder_fn
    from vlmbed.train.losses import contrastive_loss

    encode = encoder_fn(embedder)
    start = time.perf_counter()
    reps = {r: encode(r, batch[r]) for r in ("query", "positive")}
    contrastive_loss(reps, batch, objectives)["loss"].backward()
    elapsed = time.perf_counter() - start
    embedder.zero_grad(set_to_none=True)
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny_pretrained")
    p.add_argument("--batch-size", type=int, default=16, help="images (rows) per step, both arms")
    p.add_argument("--turns", type=int, default=7)
    p.add_argument("--batches", type=int, default=4, help="distinct pre-collated batches per arm")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--min-pixels", type=int, default=None, help="model.min_pixels (scenes are 32x32 = 16 tokens)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("VLMBED_THREADS", "2")))
    embedder, batches = build(args)
    times = {arm: [] for arm in batches}
    for r in range(args.warmup + args.repeats):
        for arm, (bs, objectives, _) in batches.items():
            t = step_seconds(embedder, bs[r % len(bs)], objectives)
            if r >= args.warmup:
                times[arm].append(t)
    out = {}
    for arm, (bs, _, turns) in batches.items():
        med = statistics.median(times[arm])
        out[f"pairs_per_s_{arm}"] = round(args.batch_size * turns / med, 2)
        out[f"step_seconds_{arm}"] = round(med, 4)
        out[f"tokens_per_row_{arm}"] = round(sum(int(b[role]["attention_mask"].sum()) for b in bs
                                                 for role in ("query", "positive")) / (2 * len(bs) * args.batch_size), 1)
    out["ratio"] = round(out["pairs_per_s_multiturn"] / out["pairs_per_s_single"], 3)
    out.update({"timed": "forward + backward of one training step (no collation, no optimizer update)",
                "batch_size_images": args.batch_size, "turns": args.turns, "repeats": args.repeats,
                "min_pixels": args.min_pixels, "model": args.model, "threads": torch.get_num_threads()})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
