"""Read a stage's data sources into one list (weighted mixture): Examples for contrastive stages,
pre-training Documents for reconstruction stages.

One reader per on-disk format (``READERS``). Readers never decode images: they check them at
``data.image_check`` and skip (with ``data.on_bad_image=skip``, counted in :class:`ReadStats`) or
reject records whose image fails; decoding happens in the data loader (:mod:`vlmbed.data.decode`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from vlmbed.data.digits import build_digits, unlabeled_digits
from vlmbed.data.jsonl import ReadStats, read_jsonl
from vlmbed.data.mmeb_train import read_mmeb_train
from vlmbed.data.pretrain import read_documents
from vlmbed.data.tables import read_table
from vlmbed.types import Example


def _digits(src, data_cfg, stats: ReadStats) -> list:
    suite = build_digits(src.split or "train", src.tasks, label_fraction=src.label_fraction,
                         label_seed=src.label_seed)
    return [ex for exs in suite.values() for ex in exs]


def _digits_unlabeled(src, data_cfg, stats: ReadStats) -> list:
    return unlabeled_digits(src.split or "train")


def _jsonl(src, data_cfg, stats: ReadStats) -> list:
    examples = read_jsonl(src.path, on_bad_image=data_cfg.on_bad_image, image_check=data_cfg.image_check,
                          stats=stats)
    # records without a task belong to their file (task-homogeneous batching keeps files apart)
    task = src.task or Path(src.path).stem
    return [ex if ex.task else dataclasses.replace(ex, task=task) for ex in examples]


def _documents(src, data_cfg, stats: ReadStats) -> list:
    return read_documents(src.path, on_bad_image=data_cfg.on_bad_image, image_check=data_cfg.image_check,
                          stats=stats)


def _mmeb_train(src, data_cfg, stats: ReadStats) -> list:
    return read_mmeb_train(src.path, subsets=src.subsets, split=src.split, image_root=src.image_root,
                           on_bad_image=data_cfg.on_bad_image, image_check=data_cfg.image_check, stats=stats)


def _table(src, data_cfg, stats: ReadStats) -> list:
    return read_table(src.path, columns=src.columns, image_root=src.image_root, task=src.task,
                      on_bad_image=data_cfg.on_bad_image, image_check=data_cfg.image_check, stats=stats)


READERS = {"digits": _digits, "digits_unlabeled": _digits_unlabeled, "jsonl": _jsonl, "documents": _documents,
           "mmeb_train": _mmeb_train, "table": _table}


def load_sources(data_cfg) -> tuple[list, ReadStats]:
    """Records of every source; ``max_per_task`` keeps the first N of each task, ``max_examples`` the
    first N of the source, and ``weight`` w repeats (w > 1) or subsamples (w < 1) it."""
    stats = ReadStats()
    rng = np.random.default_rng(data_cfg.seed)
    out: list[Example] = []
    for src in data_cfg.sources:
        examples = READERS[src.format](src, data_cfg, stats)
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
