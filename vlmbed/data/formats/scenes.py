"""scenes: the built-in digit-scenes tasks (contrastive pairs), :mod:`vlmbed.data.scenes`."""

from __future__ import annotations

from vlmbed.data.jsonl import ReadStats
from vlmbed.data.scenes import build_scene_examples


def read(src, data_cfg, stats: ReadStats) -> list:
    suite = build_scene_examples(src.split or "train", src.tasks, label_fraction=src.label_fraction,
                                 label_seed=src.label_seed)
    return [ex for exs in suite.values() for ex in exs]
