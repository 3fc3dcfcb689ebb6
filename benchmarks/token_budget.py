"""Padding waste of fixed-size batches versus token-budget batches on a mixed-length dataset.

    python benchmarks/token_budget.py [--examples 6000] [--batch-size 16] [--world 2]

Prints one JSON line: ``padding_waste_fixed`` and ``padding_waste_budget`` (fraction of padded token
positions that are padding, summed over the query, positive and negative tensors of every device's
batch in one epoch), the mean examples per batch of each, and the settings.

The dataset is MMEB-shaped and mixed: five tasks (text -> image, image -> text, image + question ->
answer, text -> document page, text -> passage) with one hard negative each, text lengths and image
sizes drawn per task. Sequence lengths are computed by vlmbed's own cost code
(:class:`vlmbed.data.batching.CostModel`) with the tiny model's tokenizer and a Qwen2-VL image
processor at Qwen2-VL's real pixel limits (patch 14, merge 2, up to 1280 image tokens per image), so
an image's token count is what the processor would produce. Images are blank files on disk of the
drawn sizes (only their headers are read). Both plans see the same examples, seed and number of
devices; the token budget is set so that a budget batch holds on average about as many examples as
a fixed batch (``budget = batch_size * mean padded-free tokens per example``), so the two are compared
at equal work per step.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from vlmbed.data.batching import BatchingSpec, BatchPlan, CostModel, example_costs, padding_waste

    with tempfile.TemporaryDirectory() as tmp:
        examples = build_dataset(args.examples, Path(tmp), args.seed)
        lengths = example_costs(examples, CostModel(_encoder(), kind="tokens"))  # (n, 4) tokens
    tasks = [ex.task for ex in examples]
    per_example = float((lengths[:, 0] + lengths[:, 1] + lengths[:, 2] * lengths[:, 3]).mean())
    budget = int(args.batch_size * per_example)
    results = {}
    for name, spec in {
        "fixed": BatchingSpec(batch_size=args.batch_size),
        "budget": BatchingSpec(mode="token_budget", max_tokens=budget),
    }.items():
        plan = BatchPlan(len(examples), spec, world=args.world, seed=args.seed, tasks=tasks, costs=lengths)
        batches = [part for gb in plan.epoch(0) for part in gb]
        results[name] = (padding_waste(batches, lengths), float(np.mean([len(b) for b in batches])),
                         sum(len(b) for b in batches))
    print(json.dumps({
        "padding_waste_fixed": round(results["fixed"][0], 4),
        "padding_waste_budget": round(results["budget"][0], 4),
        "ratio": round(results["budget"][0] / results["fixed"][0], 4),
        "examples_per_batch_fixed": round(results["fixed"][1], 2),
        "examples_per_batch_budget": round(results["budget"][1], 2),
        "examples_used_fixed": results["fixed"][2],
        "examples_used_budget": results["budget"][2],
        "examples": len(examples), "world": args.world, "batch_size": args.batch_size, "max_tokens": budget,
        "mean_tokens_per_example": round(per_example, 1),
    }))


if __name__ == "__main__":
    main()
