"""The built-in digits suite as evaluation tasks (held-out test split)."""

from __future__ import annotations

from vlmbed.data.digits import DIGITS_TASKS, build_digits
from vlmbed.eval.suite import EvalTask


def digits_tasks(tasks: list[str] | None = None, max_queries: int | None = None, split: str = "test") -> list[EvalTask]:
    data = build_digits(split=split, tasks=tasks, max_per_task=max_queries)
    return [EvalTask(name=name, meta_task=DIGITS_TASKS[name], examples=exs) for name, exs in data.items()]
