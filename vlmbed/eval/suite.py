"""Evaluation = encode -> score -> metrics, for MMEB-style tasks (a query + its candidate list).

Every unique item of a task (by content key) is encoded once, queries with role ``query`` and
candidates with role ``document``; each query is scored against its own candidate row; the
positive is candidate 0; precision@1 uses first-index argmax (MMEB V1 semantics).
Aggregation: per meta-task = mean over its tasks; overall = mean over all tasks (MMEB).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlmbed.eval.metrics import precision_at_1
from vlmbed.types import Example, Item


@dataclass
class EvalTask:
    """One dataset: queries, each with its candidate row (positive first)."""

    name: str
    meta_task: str
    examples: list[Example]
    split: str = ""  # IND / OOD where the benchmark defines it
    extra: dict = field(default_factory=dict)

    def rows(self) -> list[list[Item]]:
        return [[ex.positive, *ex.negatives] for ex in self.examples]


def unique_items(items: list[Item]) -> tuple[list[Item], list[int]]:
    """De-duplicate by content key; returns the unique items and, per input, its unique index."""
    index: dict[str, int] = {}
    uniq: list[Item] = []
    where = []
    for item in items:
        k = item.key()
        if k not in index:
            index[k] = len(uniq)
            uniq.append(item)
        where.append(index[k])
    return uniq, where


def score_task(embedder, task: EvalTask, batch_size: int = 64, show_progress: bool = False) -> dict:
    """Encode a task's unique items once and return its metrics."""
    q_items, q_where = unique_items([ex.query for ex in task.examples])
    rows = task.rows()
    c_items, c_where = unique_items([c for row in rows for c in row])
    q_emb = embedder.encode(q_items, role="query", batch_size=batch_size, show_progress=show_progress)
    c_emb = embedder.encode(c_items, role="document", batch_size=batch_size, show_progress=show_progress)
    scores, start = [], 0
    for qi, row in zip(q_where, rows, strict=True):
        cand = c_emb[c_where[start : start + len(row)]]  # (len(row), d)
        scores.append(cand @ q_emb[qi])  # (len(row),)
        start += len(row)
    return {
        "precision@1": precision_at_1(scores),
        "num_queries": len(rows),
        "num_unique_queries": len(q_items),
        "num_unique_candidates": len(c_items),
    }


def aggregate(per_task: dict[str, dict], meta: dict[str, str], metric: str = "precision@1") -> dict:
    """Per meta-task means and the overall mean over tasks (MMEB: overall is NOT the mean of means)."""
    by_meta: dict[str, list[float]] = {}
    for name, res in per_task.items():
        by_meta.setdefault(meta[name], []).append(res[metric])
    all_scores = [res[metric] for res in per_task.values()]
    return {
        "metric": metric,
        "meta_tasks": {m: float(np.mean(v)) for m, v in by_meta.items()},
        "task_counts": {m: len(v) for m, v in by_meta.items()},
        "overall": float(np.mean(all_scores)) if all_scores else float("nan"),
    }


def evaluate_tasks(embedder, tasks: list[EvalTask], batch_size: int = 64, show_progress: bool = False) -> dict:
    """Score every task; return ``{"tasks": {...}, "meta_tasks": {...}, "overall": ...}``."""
    per_task = {t.name: score_task(embedder, t, batch_size, show_progress) for t in tasks}
    summary = aggregate(per_task, {t.name: t.meta_task for t in tasks})
    for t in tasks:
        per_task[t.name]["meta_task"] = t.meta_task
    return {"tasks": per_task, **summary}
