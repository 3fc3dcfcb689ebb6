"""Aggregation exactly as the references do it (BENCHMARKS.md 2.7, 3.1, 4.3, 5.1).

- MMEB: meta-task = mean over its datasets; IND / OOD = mean over those datasets; overall = mean
  over **all datasets** (not the mean of the four meta-task means).
- MMEB v2: modality / sub-group = mean over datasets; overall = mean over all 78 datasets.
- ViDoRe (mteb): task = mean over its language subsets; benchmark = mean over tasks.
- M-BEIR: plain mean over the 16 task rows (R@5, R@10 for Fashion200K and FashionIQ).

``overall_from_parts`` recomputes a dataset-weighted overall from published group means and
group sizes, which is how the tests check the aggregation against published tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np


def group_means(rows: list[Mapping[str, float]], names: Iterable[str]) -> dict[str, float]:
    """Mean of each named metric over rows (NaN when there are no rows)."""
    names = list(names)
    if not rows:
        return {n: float("nan") for n in names}
    return {n: math.fsum(r[n] for r in rows) / len(rows) for n in names}


def mean_by(scores: Mapping[str, float], groups: Mapping[str, str]) -> dict[str, float]:
    """Mean score per group, groups in first-seen order: ``{task: score}``, ``{task: group}``."""
    out: dict[str, list[float]] = {}
    for task, score in scores.items():
        if task in groups and groups[task]:
            out.setdefault(groups[task], []).append(score)
    return {g: math.fsum(v) / len(v) for g, v in out.items()}


def count_by(scores: Mapping[str, float], groups: Mapping[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for task in scores:
        if task in groups and groups[task]:
            out[groups[task]] = out.get(groups[task], 0) + 1
    return out


def overall_from_parts(parts: Mapping[str, float], counts: Mapping[str, int]) -> float:
    """Dataset-weighted overall from group means: sum(mean_g * n_g) / sum(n_g).

    Example (VLM2Vec, MMEB v1): CLS 61.2 x 10, VQA 49.9 x 10, RET 67.4 x 12, VG 86.1 x 4 -> 62.9.
    """
    total = sum(counts[g] for g in parts)
    return math.fsum(parts[g] * counts[g] for g in parts) / total


def summarize(
    scores: Mapping[str, float],
    meta: Mapping[str, str],
    split: Mapping[str, str] | None = None,
    expected: Iterable[str] | None = None,
) -> dict:
    """Meta-task means, split means (IND/OOD), overall = mean over all tasks; completeness flag."""
    out = {
        "meta_tasks": mean_by(scores, meta),
        "task_counts": count_by(scores, meta),
        "overall": float(np.mean(list(scores.values()))) if scores else float("nan"),
    }
    if split and any(split.get(t) for t in scores):
        out["splits"] = mean_by(scores, split)
        out["split_counts"] = count_by(scores, split)
    if expected is not None:
        missing = [t for t in expected if t not in scores]
        out["complete"] = not missing
        if missing:
            out["missing_tasks"] = missing
    return out
