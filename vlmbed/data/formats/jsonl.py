"""jsonl: one contrastive example per line (docs/data-formats.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vlmbed.data.jsonl import ReadStats, read_jsonl


def read(src, data_cfg, stats: ReadStats) -> list:
    examples = read_jsonl(src.path, on_bad_image=data_cfg.on_bad_image, image_check=data_cfg.image_check,
                          stats=stats)
    # records without a task belong to their file (task-homogeneous batching keeps files apart)
    task = src.task or Path(src.path).stem
    return [ex if ex.task else dataclasses.replace(ex, task=task) for ex in examples]
