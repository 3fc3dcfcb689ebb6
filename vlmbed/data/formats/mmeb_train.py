"""mmeb_train: MMEB-train (VLM2Vec) parquet subsets, read by :mod:`vlmbed.data.mmeb_train`."""

from __future__ import annotations

from vlmbed.data.jsonl import ReadStats
from vlmbed.data.mmeb_train import read_mmeb_train


def read(src, data_cfg, stats: ReadStats) -> list:
    return read_mmeb_train(src.path, subsets=src.subsets, split=src.split, image_root=src.image_root,
                           on_bad_image=data_cfg.on_bad_image, image_check=data_cfg.image_check, stats=stats)
