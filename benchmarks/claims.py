"""One harness for a paper's claim in miniature: arms over seeds, scored on held-out suites, one JSON line.

An :class:`Arm` is a name and a function ``(seed, workdir) -> RecipeConfig``: the recipe that arm trains
for that seed (everything an arm does differently is in its recipe; the fine-tuning data, steps and seeds
of a comparison are the same in every arm by construction of those functions). :func:`compare` trains
every arm for every seed (seed-major, so load drifts on a shared machine hit the arms alike), evaluates
the final model of each run on every held-out suite (MMEB semantics: precision@1, macro over meta-tasks;
see docs/evaluation.md), and returns one dict:

- ``<arm>``: per-seed scores (the mean over the suites of each suite's ``overall``);
- ``<arm>_mean``, ``<arm>_std`` (sample standard deviation over seeds; 0 for one seed);
- ``<arm>_<suite>``: per-seed ``overall`` of each suite;
- ``<arm>_seconds``: training + evaluation time of each run; ``seconds``: the whole comparison.

Used by ``benchmarks/moca_ablation.py`` and every recipe's ablation; :func:`main_args` gives them the
same command-line options (``--seeds``, ``--max-queries``, ``--suites``, ``--keep``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Arm:
    name: str
    recipe: Callable  # (seed: int, workdir: Path) -> vlmbed.config.RecipeConfig


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def score_model(model_dir: Path, suites: Sequence[str], max_queries: int | None) -> dict[str, float]:
    """``overall`` of every suite for a saved model (in-memory embeddings, nothing written)."""
    import torch

    from vlmbed.eval import evaluate
    from vlmbed.models.embedder import Embedder

    embedder = Embedder.from_pretrained(model_dir, dtype=torch.float32)
    out = {}
    for spec in suites:  # "suite" or "suite:task,task" (a subset of the suite's tasks)
        suite, _, tasks = spec.partition(":")
        out[spec] = float(evaluate(embedder, suite=suite, tasks=tasks.split(",") if tasks else None,
                                   max_queries=max_queries, cache_dir=False)["overall"])
    return out


def run_arm(arm: Arm, seed: int, workdir: Path, suites: Sequence[str], max_queries: int | None) -> dict:
    from vlmbed.train.stages import run_recipe

    started = time.time()
    recipe = arm.recipe(seed, workdir)
    with redirect_stdout(sys.stderr):  # the one JSON line is the only thing on stdout
        runs = run_recipe(recipe)
    scores = score_model(runs[-1].result.model_dir, suites, max_queries)
    gc.collect()
    return {"scores": scores, "seconds": time.time() - started}


def compare(arms: Sequence[Arm], seeds: Sequence[int], suites: Sequence[str], max_queries: int | None = None,
            workdir: Path | None = None) -> dict:
    """Every arm for every seed; the per-seed and summary numbers (see the module docstring)."""
    start = time.time()
    out: dict = {a.name: [] for a in arms}
    out.update({f"{a.name}_{s}": [] for a in arms for s in suites})
    out.update({f"{a.name}_seconds": [] for a in arms})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(workdir) if workdir else Path(tmp)
        for seed in seeds:
            for arm in arms:
                r = run_arm(arm, seed, root / f"{arm.name}-seed{seed}", suites, max_queries)
                overall = statistics.mean(r["scores"].values())
                out[arm.name].append(round(overall, 4))
                for s, v in r["scores"].items():
                    out[f"{arm.name}_{s}"].append(round(v, 4))
                out[f"{arm.name}_seconds"].append(round(r["seconds"], 1))
                print(f"seed {seed} {arm.name}: {overall:.4f} {r['scores']} ({r['seconds']:.0f} s)", file=sys.stderr)
    for arm in arms:
        out[f"{arm.name}_mean"] = round(statistics.mean(out[arm.name]), 4)
        out[f"{arm.name}_std"] = round(_std(out[arm.name]), 4)
    out.update({"seeds": list(seeds), "suites": list(suites), "max_queries": max_queries,
                "metric": "held-out precision@1 (MMEB semantics), mean over suites",
                "seconds": round(time.time() - start, 1)})
    return out


def main_args(description: str, suites: Sequence[str], seeds: Sequence[int] = (0, 1, 2)) -> argparse.ArgumentParser:
    """The options every ablation takes; add the claim's own before parsing."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    p.add_argument("--suites", nargs="+", default=list(suites),
                   help="held-out suites to score on; suite:task,task scores a subset of a suite's tasks")
    p.add_argument("--max-queries", type=int, default=None, help="at most this many queries per task")
    p.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder (default: a temp folder)")
    return p


def emit(result: dict) -> None:
    """The one JSON line on stdout."""
    print(json.dumps(result))
