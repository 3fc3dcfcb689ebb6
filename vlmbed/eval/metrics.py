"""Metrics as pure functions of score matrices. Tie rules are explicit parameters."""

from __future__ import annotations

import numpy as np


def precision_at_1(scores: list[np.ndarray] | np.ndarray, positive_index: int = 0) -> float:
    """MMEB precision@1 (= hit@1 with one positive): the positive sits at ``positive_index`` (0 in MMEB).

    ``scores`` holds one 1-D array of candidate scores per query (rows may differ in length).
    The prediction is the **first** maximal index (numpy argmax), so exact ties resolve in favour
    of index 0, the positive, as in VLM2Vec's V1 ``eval.py``.
    """
    rows = list(scores)
    if not rows:
        return float("nan")
    correct = sum(int(np.argmax(row)) == positive_index for row in rows)
    return correct / len(rows)
