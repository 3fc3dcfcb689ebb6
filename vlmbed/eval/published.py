"""Published scores (package data ``published_scores.json``) and our run beside them.

Each benchmark entry lists columns and, per column, where our value comes from in a results dict:
``meta:X`` (meta-task mean), ``split:X`` (IND/OOD mean), ``overall``, ``task:NAME`` (a task's headline),
``task:NAME:pooled`` / ``task:NAME:<language>`` (a v2 task over all languages pooled / one language),
``mean`` (mean of our other columns, when all are present). Values are x100 as papers print them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def load_published() -> dict:
    return json.loads(resources.files("vlmbed.eval").joinpath("published_scores.json").read_text())


def _value(results: dict, source: str) -> float | None:
    metric = results.get("metric", "precision@1")
    kind, _, rest = source.partition(":")
    if kind == "overall":
        return results.get("overall") if results.get("complete", True) else None
    if kind == "meta":
        return results.get("meta_tasks", {}).get(rest)
    if kind == "split":
        return results.get("splits", {}).get(rest)
    if kind == "task":
        name, _, subset = rest.partition(":")
        task = results.get("tasks", {}).get(name)
        if task is None:
            return None
        if not subset:
            return task.get(metric)
        if subset == "pooled":
            return task.get("pooled", task).get(metric)
        return task.get("subsets", {}).get(subset, {}).get(metric)
    return None


def our_scores(key: str, results: dict) -> dict[str, float | None]:
    """Our run in the columns of published table ``key`` (x100; None where we have no value)."""
    entry = load_published()[key]
    out: dict[str, float | None] = {}
    for col in entry["columns"]:
        source = entry.get("column_sources", {}).get(col, f"meta:{col}")
        if source == "mean":
            continue
        v = _value(results, source)
        out[col] = None if v is None else 100.0 * v
    for col in entry["columns"]:
        if entry.get("column_sources", {}).get(col) == "mean":
            vals = [v for c, v in out.items() if c != col]
            out[col] = sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None
    return {c: out[c] for c in entry["columns"]}


def comparison(key: str | None, results: dict) -> dict | None:
    """``{"benchmark", "metric", "columns", "ours": {...}, "models": [...]}`` or None without a table."""
    if not key:
        return None
    entry = load_published().get(key)
    if entry is None:
        return None
    return {"table": key, "benchmark": entry["benchmark"], "metric": entry["metric"], "columns": entry["columns"],
            "ours": our_scores(key, results), "models": entry["models"], "note": entry.get("pool", "")}
