"""Padding waste of token-budget batches against the fair fixed-size baseline on a mixed-length dataset.

    python benchmarks/token_budget.py [--examples 6000] [--batch-size 16] [--world 2]

Three ways to batch the same examples, all seeing the same seed and number of devices:

- ``fixed_sorted`` (the baseline a careful user sets up): task-homogeneous fixed batches of
  ``--batch-size`` whose examples are sorted by length within each task, so that neighbours have
  similar lengths (``group_by_length``-style). Sorted by total length, by query length and by document
  length; the best of the three (least padding) is reported, with its key;
- ``budget``: vlmbed's token-budget plan, task-homogeneous (MoCa's setting), with the budget set so
  that a budget batch holds on average about as many examples as a fixed batch
  (``budget = batch_size * mean tokens per example``), so the plans are compared at equal work per step;
- ``fixed_random``: vlmbed's plain fixed plan (random batches), for context only.

Prints one JSON line: ``padding_waste_*`` (fraction of padded token positions that are padding,
summed over the query, positive and negative tensors of every device's batch in one epoch),
``ratio`` = budget waste / fixed_sorted waste, the largest padded device batch of each plan in tokens
(``max_batch_tokens_*``, what sets peak memory), examples per batch and examples used.

The dataset is MMEB-shaped and mixed: five tasks (text -> image, image -> text, image + question ->
answer, text -> document page, text -> passage) with one hard negative each, text lengths and image
sizes drawn per task. Sequence lengths are computed by vlmbed's own cost code
(:class:`vlmbed.data.batching.CostModel`) with the tiny model's tokenizer and a Qwen2-VL image
processor at Qwen2-VL's real pixel limits (patch 14, merge 2, up to 1280 image tokens per image), so
an image's token count is what the processor would produce. Images are blank files on disk of the
drawn sizes (only their headers are read).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = {  # name: (query kind, query range, positive kind, positive range); text in words, images in pixels
    "t2i": ("text", (4, 30), "image", (224, 640)),
    "i2t": ("image", (224, 1024), "text", (3, 20)),
    "vqa": ("image+text", (448, 1344), "text", (1, 5)),
    "visdoc": ("text", (5, 40), "image", (1000, 2000)),
    "passage": ("text", (5, 40), "text", (40, 400)),
}


def _encoder():
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    from vlmbed.data.collate import ItemEncoder
    from vlmbed.models.tiny import build_tokenizer

    tok = build_tokenizer()
    image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                            min_pixels=56 * 56, max_pixels=1280 * 28 * 28)
    proc = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok,
                            video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2))
    return ItemEncoder(proc, "<|vision_start|><|image_pad|><|vision_end|>", append_eos="<|im_end|>",
                       max_text_tokens=512)


def build_dataset(n: int, folder: Path, seed: int = 0):
    from PIL import Image

    from vlmbed.models.tiny import _CORPUS_WORDS
    from vlmbed.types import Example, Item

    rng = np.random.default_rng(seed)
    words = _CORPUS_WORDS.split()
    sizes = {}

    def image(lo, hi):
        w, h = (int(x) // 32 * 32 for x in rng.uniform(lo, hi, size=2))
        if (w, h) not in sizes:
            path = folder / f"{w}x{h}.png"
            Image.new("RGB", (w, h), "white").save(path)
            sizes[(w, h)] = path
        return sizes[(w, h)]

    def text(lo, hi):
        return " ".join(rng.choice(words, size=int(rng.integers(lo, hi + 1))))

    def item(kind, rng_range):
        if kind == "text":
            return Item(text=text(*rng_range))
        if kind == "image":
            return Item(image=image(*rng_range))
        return Item(text=text(5, 25), image=image(*rng_range))

    names = list(TASKS)
    out = []
    for i in range(n):
        task = names[i % len(names)]
        qk, qr, pk, pr = TASKS[task]
        out.append(Example(item(qk, qr), [item(pk, pr)], negatives=[item(pk, pr)], task=task))
    order = rng.permutation(n)
    return [out[i] for i in order]


SORT_KEYS = {  # name: per-example sort key from its (query, positive, largest negative, negatives) lengths
    "total": lambda c: c[0] + c[1] + c[2] * c[3],
    "query": lambda c: (c[0], max(c[1], c[2])),
    "document": lambda c: (max(c[1], c[2]), c[0]),
}


def sorted_fixed_batches(tasks: list[str], lengths: np.ndarray, batch_size: int, world: int, key) -> list[list[int]]:
    """Device batches of ``batch_size``, one task each, examples sorted by ``key`` within the task.

    Like a fixed plan, only whole global batches (``world`` device batches of one task) are kept.
    """
    batches: list[list[int]] = []
    for task in sorted(set(tasks)):
        members = sorted((i for i, t in enumerate(tasks) if t == task), key=lambda i: key(lengths[i]))
        per_task = [members[s : s + batch_size] for s in range(0, len(members) - batch_size + 1, batch_size)]
        batches.extend(per_task[: len(per_task) // world * world])
    return batches


def plan_batches(spec, tasks: list[str], lengths: np.ndarray, world: int, seed: int) -> list[list[int]]:
    from vlmbed.data.batching import BatchPlan

    plan = BatchPlan(len(tasks), spec, world=world, seed=seed, tasks=tasks, costs=lengths)
    return [part for gb in plan.epoch(0) for part in gb]


def summary(batches: list[list[int]], lengths: np.ndarray) -> dict:
    from vlmbed.data.batching import padded_cost, padding_waste

    return {"waste": padding_waste(batches, lengths), "max_tokens": max(padded_cost(lengths[b]) for b in batches),
            "per_batch": float(np.mean([len(b) for b in batches])), "used": sum(len(b) for b in batches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from vlmbed.data.batching import BatchingSpec, CostModel, example_costs

    with tempfile.TemporaryDirectory() as tmp:
        examples = build_dataset(args.examples, Path(tmp), args.seed)
        lengths = example_costs(examples, CostModel(_encoder(), kind="tokens"))  # (n, 4) tokens
    tasks = [ex.task for ex in examples]
    per_example = float((lengths[:, 0] + lengths[:, 1] + lengths[:, 2] * lengths[:, 3]).mean())
    budget = int(args.batch_size * per_example)
    sorted_runs = {name: summary(sorted_fixed_batches(tasks, lengths, args.batch_size, args.world, key), lengths)
                   for name, key in SORT_KEYS.items()}
    sort_key = min(sorted_runs, key=lambda name: sorted_runs[name]["waste"])
    runs = {
        "fixed_sorted": sorted_runs[sort_key],
        "budget": summary(plan_batches(BatchingSpec(mode="token_budget", max_tokens=budget, homogeneous=True),
                                       tasks, lengths, args.world, args.seed), lengths),
        "fixed_random": summary(plan_batches(BatchingSpec(batch_size=args.batch_size), tasks, lengths, args.world,
                                             args.seed), lengths),
    }
    out = {f"padding_waste_{name}": round(r["waste"], 4) for name, r in runs.items()}
    out["ratio"] = round(runs["budget"]["waste"] / runs["fixed_sorted"]["waste"], 4)
    out["fixed_sorted_by"] = sort_key
    out.update({f"max_batch_tokens_{name}": int(r["max_tokens"]) for name, r in runs.items()})
    out.update({f"examples_per_batch_{name}": round(r["per_batch"], 2) for name, r in runs.items()})
    out.update({f"examples_used_{name}": r["used"] for name, r in runs.items()})
    out.update({"examples": len(examples), "world": args.world, "batch_size": args.batch_size, "max_tokens": budget,
                "mean_tokens_per_example": round(per_example, 1)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
