"""The built-in digit-scenes suite as evaluation tasks (held-out test split, MMEB semantics)."""

from __future__ import annotations

from vlmbed.data.scenes import SCENES_TASKS, build_scene_examples
from vlmbed.eval.digits import builtin_suite
from vlmbed.eval.suite import EvalTask


def scenes_tasks(tasks: list[str] | None = None, max_queries: int | None = None, split: str = "test",
                 n: int | None = None) -> list[EvalTask]:
    data = build_scene_examples(split=split, tasks=tasks, max_per_task=max_queries, n=n)
    return [EvalTask(name=name, meta_task=SCENES_TASKS[name], examples=exs) for name, exs in data.items()]


def _load(data_dir=None, tasks=None, max_queries=None, options: dict | None = None) -> list[EvalTask]:
    options = dict(options or {})
    unknown = set(options) - {"n"}
    if unknown:
        raise ValueError(f"unknown scenes suite option(s) {sorted(unknown)}; known: n (number of test scenes)")
    return scenes_tasks(tasks, max_queries, n=options.get("n"))


SUITE = builtin_suite("scenes", _load, SCENES_TASKS)
