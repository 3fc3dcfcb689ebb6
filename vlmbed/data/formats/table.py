"""table: a parquet / csv / jsonl table with named columns, read by :mod:`vlmbed.data.tables`."""

from __future__ import annotations

from vlmbed.data.jsonl import ReadStats
from vlmbed.data.tables import read_table


def read(src, data_cfg, stats: ReadStats) -> list:
    return read_table(src.path, columns=src.columns, image_root=src.image_root, task=src.task,
                      on_bad_image=data_cfg.on_bad_image, image_check=data_cfg.image_check, stats=stats)
