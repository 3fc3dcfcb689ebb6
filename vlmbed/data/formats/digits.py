"""digits: the built-in synthetic digits tasks (contrastive pairs), :mod:`vlmbed.data.digits`."""

from __future__ import annotations

from vlmbed.data.digits import build_digits
from vlmbed.data.jsonl import ReadStats


def read(src, data_cfg, stats: ReadStats) -> list:
    suite = build_digits(src.split or "train", src.tasks, label_fraction=src.label_fraction,
                         label_seed=src.label_seed)
    return [ex for exs in suite.values() for ex in exs]
