"""scenes_unlabeled: digit scenes and single digits as interleaved pre-training documents,
:func:`vlmbed.data.scenes.scene_documents`."""

from __future__ import annotations

from vlmbed.data.jsonl import ReadStats
from vlmbed.data.scenes import scene_documents


def read(src, data_cfg, stats: ReadStats) -> list:
    return scene_documents(src.split or "train")
