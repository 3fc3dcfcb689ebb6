"""The recipe runner: stages in order, stage N+1 starting from stage N's output. Deliberately dumb.

Before any work every stage folder is checked against its record (``vlmbed.train.runs``): a changed
config or input model is an error naming the keys, a finished stage is reused, an interrupted one resumes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from vlmbed.config import RecipeConfig, StageConfig
from vlmbed.dist import partial_state
from vlmbed.models.build import build_embedder, planned_model_path
from vlmbed.train.checkpoint import latest_checkpoint, read_state
from vlmbed.train.loop import StageResult, train_stage
from vlmbed.train.pretrain_tiny import resolve_input_model
from vlmbed.train.runs import Decision, clear_outputs, input_identity, plan_stage, write_record


@dataclass
class StageRun:
    stage: str
    result: StageResult
    results_before: dict | None
    results_after: dict | None
    stage_dir: Path
    reused: bool = False  # a finished stage with the same config: not retrained


def plan_recipe(recipe: RecipeConfig, only_stage: str | None = None) -> list[tuple[StageConfig, Path, Decision]]:
    """(stage, folder, decision) for every stage to run, decided before anything is built or written.

    Raises ``RunMismatchError`` when a folder holds a run with another config or input model, including a
    later stage whose input (the previous stage's model) this run trains again."""
    out = Path(recipe.output_dir)
    if only_stage is not None:
        recipe.stage(only_stage)  # KeyError naming the stages when there is no such stage
    planned = []
    previous: Path | None = None
    retrained: str | None = None  # the stage this run (re)trains whose output the next stage starts from
    for i, stage in enumerate(recipe.stages):
        stage_dir = out / f"{i:02d}-{stage.name}"
        if only_stage and stage.name != only_stage:
            done = stage_dir / "model"
            previous = done if (done / "config.json").exists() else previous
            retrained = None
            continue
        uses_previous = stage.model.path == "previous"
        model_path = previous if uses_previous else planned_model_path(stage.model)
        decision = plan_stage(stage, stage_dir, model_path, input_changes=retrained if uses_previous else None)
        planned.append((stage, stage_dir, decision))
        previous = stage_dir / "model"
        retrained = None if decision.action == "reuse" else stage.name
    return planned


def run_recipe(recipe: RecipeConfig, only_stage: str | None = None) -> list[StageRun]:
    planned = plan_recipe(recipe, only_stage)
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
        decision = next(d for s, _, d in planned if s.name == stage.name)
        with partial_state().main_process_first():  # one process builds the tiny model; the others wait
            model_path = resolve_input_model(stage.model, out, previous)
        runs.append(run_stage(stage, stage_dir, model_path, decision))
        previous = runs[-1].result.model_dir
    return runs


def run_stage(stage: StageConfig, stage_dir: Path, model_path: Path, decision: Decision | None = None) -> StageRun:
    """Train (fresh or resumed) and evaluate one stage, or reuse it when it is finished with this config."""
    state = partial_state()
    stage_dir = Path(stage_dir)
    if decision is None:
        decision = plan_stage(stage, stage_dir, model_path)
    if decision.action == "reuse":
        return _reuse(stage, stage_dir, model_path, decision.record)
    identity = input_identity(stage, model_path)
    if state.is_main_process:
        if decision.action == "fresh":
            clear_outputs(stage_dir)
        write_record(stage_dir, stage, identity)
    state.wait_for_everyone()
    before = None
    if stage.eval.suite != "none" and stage.eval.before and state.is_main_process:
        before = _evaluate(stage, model_path)
    result = train_stage(stage, stage_dir, model_path)
    if state.is_main_process:
        summary = {k: v for k, v in asdict(result).items() if k != "model_dir"}
        write_record(stage_dir, stage, identity, status="finished", result=summary)
    after = _evaluate_and_write(stage, stage_dir, result.model_dir, before) if state.is_main_process else None
    state.wait_for_everyone()
    return StageRun(stage.name, result, before, after, stage_dir)


def _reuse(stage: StageConfig, stage_dir: Path, model_path: Path, record: dict) -> StageRun:
    """A finished stage re-run with the same config: keep its model; keep its results unless eval changed."""
    state = partial_state()
    model_dir = stage_dir / "model"
    summary = record.get("result") or _legacy_summary(stage_dir)
    result = StageResult(model_dir, **summary)
    state.print(f"stage {stage.name}: already trained with this config, reusing {model_dir} (not retrained; "
                "train.resume=false trains it again)")
    before = after = None
    saved = stage_dir / "results.json"
    if state.is_main_process:
        payload = json.loads(saved.read_text()) if saved.exists() else None
        same_eval = payload is not None and payload.get("eval", stage.eval.model_dump(mode="json")) == \
            stage.eval.model_dump(mode="json")
        if same_eval:
            before, after = payload.get("before"), payload.get("after")
        elif stage.eval.suite != "none":
            print(f"stage {stage.name}: evaluation settings changed; evaluating the saved model again")
            before = _evaluate(stage, model_path) if stage.eval.before else None
            after = _evaluate_and_write(stage, stage_dir, model_dir, before)
    state.wait_for_everyone()
    return StageRun(stage.name, result, before, after, stage_dir, reused=True)


def _legacy_summary(stage_dir: Path) -> dict:
    ckpt = latest_checkpoint(stage_dir)
    steps = read_state(ckpt)["step"] if ckpt else 0
    return {"steps": steps, "final_loss": math.nan, "seconds": 0.0, "skipped_records": 0}


def _evaluate_and_write(stage: StageConfig, stage_dir: Path, model_dir: Path, before: dict | None) -> dict | None:
    if stage.eval.suite == "none":
        return None
    after = _evaluate(stage, model_dir)
    payload = {"stage": stage.name, "after": after, "before": before, "eval": stage.eval.model_dump(mode="json")}
    (stage_dir / "results.json").write_text(json.dumps(payload, indent=2))
    from vlmbed.train.report import write_report

    write_report(stage_dir, stage.name, after, before)
    return after


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
