"""Read a stage's data sources into one list of Examples (weighted mixture)."""

from __future__ import annotations

import numpy as np

from vlmbed.data.digits import build_digits
from vlmbed.data.jsonl import ReadStats, read_jsonl
from vlmbed.types import Example


def load_sources(data_cfg) -> tuple[list[Example], ReadStats]:
    """Examples of every source; ``weight`` w repeats (w > 1) or subsamples (w < 1) a source."""
    stats = ReadStats()
    rng = np.random.default_rng(data_cfg.seed)
    out: list[Example] = []
    for src in data_cfg.sources:
        if src.format == "digits":
            examples = [ex for exs in build_digits(src.split, src.tasks).values() for ex in exs]
        else:
            examples = read_jsonl(src.path, on_bad_image=data_cfg.on_bad_image, stats=stats)
        if src.max_examples is not None:
            examples = examples[: src.max_examples]
        out.extend(_weighted(examples, src.weight, rng))
    if not out:
        raise ValueError("the stage's data sources produced no examples")
    return out, stats


def _weighted(examples: list[Example], weight: float, rng) -> list[Example]:
    whole, frac = int(weight), weight - int(weight)
    extra = rng.choice(len(examples), size=int(round(frac * len(examples))), replace=False) if frac else []
    return examples * whole + [examples[i] for i in extra]
