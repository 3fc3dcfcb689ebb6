"""The recipe runner: stages in order, stage N+1 starting from stage N's output. Deliberately dumb."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vlmbed.config import RecipeConfig, StageConfig
from vlmbed.dist import partial_state
from vlmbed.models.build import build_embedder, resolve_model_path
from vlmbed.train.loop import StageResult, train_stage


@dataclass
class StageRun:
    stage: str
    result: StageResult
    results_before: dict | None
    results_after: dict | None
    stage_dir: Path


def run_recipe(recipe: RecipeConfig, only_stage: str | None = None) -> list[StageRun]:
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[StageRun] = []
    previous: Path | None = None
    for i, stage in enumerate(recipe.stages):
        stage_dir = out / f"{i:02d}-{stage.name}"
        if only_stage and stage.name != only_stage:
            done = stage_dir / "model"
            previous = done if (done / "config.json").exists() else previous
            continue
        with partial_state().main_process_first():  # one process builds the tiny model; the others wait
            model_path = resolve_model_path(stage.model, out, previous)
        runs.append(run_stage(stage, stage_dir, model_path))
        previous = runs[-1].result.model_dir
    return runs


def run_stage(stage: StageConfig, stage_dir: Path, model_path: Path) -> StageRun:
    state = partial_state()
    before = None
    if stage.eval.suite != "none" and stage.eval.before and state.is_main_process:
        before = _evaluate(stage, model_path)
    result = train_stage(stage, stage_dir, model_path)
    after = None
    if stage.eval.suite != "none" and state.is_main_process:
        after = _evaluate(stage, result.model_dir)
        payload = {"stage": stage.name, "after": after, "before": before}
        (stage_dir / "results.json").write_text(json.dumps(payload, indent=2))
        from vlmbed.train.report import write_report

        write_report(stage_dir, stage.name, after, before)
    state.wait_for_everyone()
    return StageRun(stage.name, result, before, after, stage_dir)


def _evaluate(stage: StageConfig, model_path: Path) -> dict:
    from vlmbed.eval import evaluate

    embedder = build_embedder(stage.model, model_path)
    return evaluate(embedder, suite=stage.eval.suite, tasks=stage.eval.tasks, max_queries=stage.eval.max_queries,
                    batch_size=stage.eval.batch_size)


def train(recipe, overrides: list[str] | None = None, stage: str | None = None) -> list[StageRun]:
    """Public API: run a recipe (path, shipped name, or RecipeConfig) and return the stage runs."""
    from vlmbed.config import load_recipe

    cfg = recipe if isinstance(recipe, RecipeConfig) else load_recipe(recipe, overrides)
    return run_recipe(cfg, only_stage=stage)
