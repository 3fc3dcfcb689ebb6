"""Read a stage's data sources into one list (weighted mixture): Examples for contrastive stages,
pre-training Documents for reconstruction stages.

One reader per on-disk format, found in the ``FORMATS`` table (:mod:`vlmbed.data`). Readers never decode
images: they check them at ``data.image_check`` and skip (with ``data.on_bad_image=skip``, counted in
:class:`ReadStats`) or reject records whose image fails; decoding happens in the data loader
(:mod:`vlmbed.data.decode`).
"""

from __future__ import annotations

import numpy as np

from vlmbed.data import FORMATS
from vlmbed.data.jsonl import ReadStats
from vlmbed.types import Example


def load_sources(data_cfg) -> tuple[list, ReadStats]:
    """Records of every source; ``max_per_task`` keeps the first N of each task, ``max_examples`` the
    first N of the source, and ``weight`` w repeats (w > 1) or subsamples (w < 1) it."""
    stats = ReadStats()
    rng = np.random.default_rng(data_cfg.seed)
    out: list[Example] = []
    for src in data_cfg.sources:
        examples = FORMATS[src.format].read(src, data_cfg, stats)
        if src.max_per_task is not None:
            examples = _first_per_task(examples, src.max_per_task)
        if src.max_examples is not None:
            examples = examples[: src.max_examples]
        out.extend(_weighted(examples, src.weight, rng))
    if not out:
        raise ValueError("the stage's data sources produced no examples")
    return out, stats


def _first_per_task(examples: list, n: int) -> list:
    seen: dict[str, int] = {}
    out = []
    for ex in examples:
        seen[ex.task] = seen.get(ex.task, 0) + 1
        if seen[ex.task] <= n:
            out.append(ex)
    return out


def _weighted(examples: list[Example], weight: float, rng) -> list[Example]:
    whole, frac = int(weight), weight - int(weight)
    extra = rng.choice(len(examples), size=int(round(frac * len(examples))), replace=False) if frac else []
    return examples * whole + [examples[i] for i in extra]
