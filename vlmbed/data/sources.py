"""Read a stage's data sources into one list (weighted mixture): Examples for contrastive stages,
pre-training Documents for reconstruction stages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from vlmbed.data.digits import build_digits, unlabeled_digits
from vlmbed.data.jsonl import ReadStats, read_jsonl
from vlmbed.data.pretrain import read_documents
from vlmbed.types import Example


def _read(src, data_cfg, stats: ReadStats) -> list:
    if src.format == "digits":
        suite = build_digits(src.split, src.tasks, label_fraction=src.label_fraction, label_seed=src.label_seed)
        return [ex for exs in suite.values() for ex in exs]
    if src.format == "digits_unlabeled":
        return unlabeled_digits(src.split)
    if src.format == "documents":
        return read_documents(src.path)
    examples = read_jsonl(src.path, on_bad_image=data_cfg.on_bad_image, stats=stats)
    # records without a task belong to their file (task-homogeneous batching keeps files apart)
    return [ex if ex.task else dataclasses.replace(ex, task=Path(src.path).stem) for ex in examples]


def load_sources(data_cfg) -> tuple[list, ReadStats]:
    """Records of every source; ``weight`` w repeats (w > 1) or subsamples (w < 1) a source."""
    stats = ReadStats()
    rng = np.random.default_rng(data_cfg.seed)
    out: list[Example] = []
    for src in data_cfg.sources:
        examples = _read(src, data_cfg, stats)
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
