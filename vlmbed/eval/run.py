"""Entry point: evaluate a model on a suite and write results.json (+ a printed table)."""

from __future__ import annotations

import json
from pathlib import Path

from vlmbed.eval.digits import digits_tasks
from vlmbed.eval.suite import evaluate_tasks


def load_suite(suite: str, tasks: list[str] | None = None, max_queries: int | None = None, data_dir=None):
    if suite == "digits":
        return digits_tasks(tasks, max_queries)
    raise ValueError(f"unknown suite {suite!r}; available: digits")


def evaluate(
    model,
    suite: str = "digits",
    tasks: list[str] | None = None,
    out_dir: str | Path | None = None,
    max_queries: int | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
    data_dir=None,
) -> dict:
    """Evaluate an :class:`~vlmbed.models.embedder.Embedder` (or a model folder) on ``suite``."""
    if isinstance(model, (str, Path)):
        from vlmbed.models.embedder import Embedder

        model = Embedder.from_pretrained(model)
    task_list = load_suite(suite, tasks, max_queries, data_dir)
    results = {"suite": suite, **evaluate_tasks(model, task_list, batch_size, show_progress)}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    return results
