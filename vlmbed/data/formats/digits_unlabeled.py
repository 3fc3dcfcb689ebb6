"""digits_unlabeled: the digits images as captioned pre-training documents, :mod:`vlmbed.data.digits`."""

from __future__ import annotations

from vlmbed.data.digits import unlabeled_digits
from vlmbed.data.jsonl import ReadStats


def read(src, data_cfg, stats: ReadStats) -> list:
    return unlabeled_digits(src.split or "train")
