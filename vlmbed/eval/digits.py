"""The built-in digits suite as evaluation tasks (held-out test split)."""

from __future__ import annotations

from vlmbed.data.digits import DIGITS_TASKS, build_digits
from vlmbed.eval.aggregate import summarize
from vlmbed.eval.suite import EvalTask, SuiteSpec


def digits_tasks(tasks: list[str] | None = None, max_queries: int | None = None, split: str = "test") -> list[EvalTask]:
    data = build_digits(split=split, tasks=tasks, max_per_task=max_queries)
    return [EvalTask(name=name, meta_task=DIGITS_TASKS[name], examples=exs) for name, exs in data.items()]


def _load(data_dir=None, tasks=None, max_queries=None, options: dict | None = None) -> list[EvalTask]:
    return digits_tasks(tasks, max_queries)


def builtin_suite(name: str, load, meta_tasks: dict[str, str]) -> SuiteSpec:
    """A built-in suite (digits, scenes): MMEB precision@1 over candidate rows, overall = mean over tasks."""

    def _summarize(scores: dict[str, float]) -> dict:
        return summarize(scores, {t: meta_tasks[t] for t in scores if t in meta_tasks})

    return SuiteSpec(
        name=name,
        metric="precision@1",
        metric_definition="precision@1 = hit@1 over each query's candidate row (positive first, first-index argmax), "
                          "as MMEB. Overall = mean over tasks.",
        ties="first_index",
        load=load,
        summarize=_summarize,
    )


SUITE = builtin_suite("digits", _load, DIGITS_TASKS)
