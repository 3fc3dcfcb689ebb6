"""`vlmbed quickstart`: tiny VLM -> contrastive training on digits -> evaluation -> report."""

from __future__ import annotations

import time
from pathlib import Path


def run_quickstart(out: str | Path = "runs/quickstart", overrides: list[str] | None = None) -> dict:
    """Run the shipped quickstart recipe into ``out``; print and return the before/after scores."""
    from vlmbed.config import load_recipe
    from vlmbed.eval.table import print_table
    from vlmbed.train.stages import run_recipe

    start = time.time()
    recipe = load_recipe("quickstart", [f"output_dir={out}", *(overrides or [])])
    runs = run_recipe(recipe)
    last = runs[-1]
    seconds = time.time() - start
    if last.results_after is not None:  # None with eval.suite=none
        print_table(last.results_after, last.results_before, title="quickstart: digits suite, held-out test split")
        before = f"untrained overall precision@1: {100 * last.results_before['overall']:.1f}   " \
            if last.results_before else ""
        reused = ", reused: already trained with this config" if last.reused else ""
        print(f"{before}trained: {100 * last.results_after['overall']:.1f}   ({seconds:.0f} s{reused})")
    print(f"model:   {last.result.model_dir}\nresults: {last.stage_dir / 'results.json'}\n"
          f"report:  {last.stage_dir / 'report.html'}")
    return {"before": last.results_before, "after": last.results_after, "seconds": seconds,
            "stage_dir": str(last.stage_dir)}
