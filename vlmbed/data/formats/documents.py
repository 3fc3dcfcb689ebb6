"""documents: interleaved text-and-image documents for pre-training (jsonl), :mod:`vlmbed.data.pretrain`."""

from __future__ import annotations

from vlmbed.data.jsonl import ReadStats
from vlmbed.data.pretrain import read_documents


def read(src, data_cfg, stats: ReadStats) -> list:
    return read_documents(src.path, on_bad_image=data_cfg.on_bad_image, image_check=data_cfg.image_check,
                          stats=stats)
