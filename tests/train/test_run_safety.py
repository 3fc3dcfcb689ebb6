"""Resume safety: a stage folder remembers its config and input model; a re-run with another config stops
before touching anything, a finished stage is reused, ignored keys (progress, logging) do not trip it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlmbed.config import build_recipe
from vlmbed.train.runs import RECORD_FILE, RunMismatchError, config_diff, plan_stage
from vlmbed.train.stages import run_recipe

from .helpers import tiny_recipe

EVAL = ["eval.suite=digits", "eval.tasks=[digits_t2i]", "eval.max_queries=8", "eval.batch_size=16"]


def _recipe(tmp_path: Path, model_dir: Path, out: Path, overrides=(), two_stages=False):
    raw = yaml.safe_load(tiny_recipe(tmp_path / "r.yaml", model_dir, max_steps=2, save_every=1).read_text())
    if two_stages:
        second = json.loads(json.dumps(raw["stages"][0]))
        second["name"], second["model"]["path"] = "cl2", "previous"
        raw["stages"].append(second)
    return build_recipe(raw, [f"output_dir={out}", *overrides])


def _snapshot(folder: Path) -> dict:
    """Every file's bytes and mtime: any write shows."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    """A finished one-stage run (2 steps, evaluated): its folder and the run."""
    tmp = tmp_path_factory.mktemp("finished")
    out = tmp / "runs"
    runs = run_recipe(_recipe(tmp, tiny_model_dir, out, EVAL))
    return tmp, out, runs[0]


def test_a_changed_config_stops_before_any_work_naming_the_keys(finished, tiny_model_dir):
    tmp, out, _ = finished
    stage = out / "00-cl"
    assert {"model/config.json", "results.json", "report.html", RECORD_FILE} <= set(_snapshot(stage))
    before = _snapshot(out)
    recipe = _recipe(tmp, tiny_model_dir, out, [*EVAL, "model.attention=causal", "train.lr=5e-4"])
    with pytest.raises(RunMismatchError) as err:
        run_recipe(recipe)
    msg = str(err.value)
    assert "model.attention: 'bidirectional' -> 'causal'" in msg and "train.lr: 0.001 -> 0.0005" in msg
    assert "train.resume=false" in msg and "output_dir=" in msg and str(stage) in msg
    assert "train.progress" not in msg and "eval" not in msg.split("Differences")[1].split("Nothing")[0]
    assert _snapshot(out) == before  # model/, results.json, checkpoints, metrics: not a byte or mtime changed


def test_a_finished_stage_with_the_same_config_is_reused_not_retrained(finished, tiny_model_dir, monkeypatch):
    tmp, out, first = finished
    before = _snapshot(out)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr("vlmbed.train.stages.train_stage", no_training)
    # ignored keys: progress bar, logging and checkpoint cadence, resume switch
    ignored = ["train.progress=true", "train.log_every=5", "train.save_every=7", "train.keep_checkpoints=4",
               "data.num_workers=1", "train.gradcache_chunk=4"]
    runs = run_recipe(_recipe(tmp, tiny_model_dir, out, [*EVAL, *ignored]))
    assert runs[0].reused and runs[0].result.steps == first.result.steps == 2
    assert runs[0].result.final_loss == pytest.approx(first.result.final_loss)
    assert runs[0].results_after == first.results_after  # its results stay
    assert _snapshot(out) == before


def test_a_changed_evaluation_re_evaluates_the_finished_model_only(finished, tiny_model_dir, monkeypatch):
    tmp, out, first = finished
    model_before = {k: v for k, v in _snapshot(out).items() if "/model/" in f"/{k}" or "checkpoints" in k}
    monkeypatch.setattr("vlmbed.train.stages.train_stage", lambda *a, **k: pytest.fail("retrained"))
    runs = run_recipe(_recipe(tmp, tiny_model_dir, out, [*EVAL[:-1], "eval.batch_size=4", "eval.max_queries=6"]))
    assert runs[0].reused
    saved = json.loads((out / "00-cl" / "results.json").read_text())
    assert saved["eval"]["max_queries"] == 6 and saved["after"] == runs[0].results_after
    assert {k: v for k, v in _snapshot(out).items() if k in model_before} == model_before


def test_resume_false_starts_over_with_the_new_config(tiny_model_dir, tmp_path):
    out = tmp_path / "runs"
    run_recipe(_recipe(tmp_path, tiny_model_dir, out))
    (out / "00-cl" / "results.json").write_text("{}")  # a stale result of the earlier run
    runs = run_recipe(_recipe(tmp_path, tiny_model_dir, out, ["train.lr=5e-4", "train.resume=false"]))
    assert not runs[0].reused and runs[0].result.steps == 2
    record = json.loads((out / "00-cl" / RECORD_FILE).read_text())
    assert record["status"] == "finished" and record["config"]["train"]["lr"] == 5e-4
    assert not (out / "00-cl" / "results.json").exists()  # eval.suite=none: the stale result is not kept


def test_an_interrupted_stage_with_the_same_config_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "runs"
    recipe = _recipe(tmp_path, tiny_model_dir, out)
    run_recipe(recipe)
    stage_dir = out / "00-cl"
    record = json.loads((stage_dir / RECORD_FILE).read_text())
    record["status"] = "training"  # as a killed run leaves it
    (stage_dir / RECORD_FILE).write_text(json.dumps(record))
    assert plan_stage(recipe.stages[0], stage_dir, tiny_model_dir).action == "resume"
    changed = recipe.stages[0].model_copy(update={"train": recipe.stages[0].train.model_copy(update={"seed": 3})})
    with pytest.raises(RunMismatchError, match=r"train.seed: 0 -> 3"):
        plan_stage(changed, stage_dir, tiny_model_dir)


def test_a_later_stage_whose_input_model_changed_is_an_error(tiny_model_dir, tmp_path):
    out = tmp_path / "runs"
    run_recipe(_recipe(tmp_path, tiny_model_dir, out, two_stages=True))
    before = _snapshot(out)
    # retraining stage cl (resume=false) would change cl2's input: stopped before cl is touched
    with pytest.raises(RunMismatchError, match=r"(?s)stage 'cl2'.*input model.*stage 'cl' trains again"):
        run_recipe(_recipe(tmp_path, tiny_model_dir, out, ["stages.cl.train.resume=false"], two_stages=True))
    assert _snapshot(out) == before
    # the previous stage's model changed on disk since cl2 was trained from it
    recipe = _recipe(tmp_path, tiny_model_dir, out, two_stages=True)
    weights = next((out / "00-cl" / "model").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(RunMismatchError, match=r"(?s)stage 'cl2'.*input model.*changed"):
        run_recipe(recipe)


def test_config_diff_ignores_result_neutral_keys_and_lists_nested_ones():
    raw = {"stages": [{"name": "s", "data": {"sources": [{"format": "digits"}]}}]}
    a = build_recipe(raw).stages[0].model_dump(mode="json")
    b = build_recipe(raw, ["train.progress=false", "eval.suite=none", "train.resume=false",
                           "data.sources=[{format: digits, max_examples: 5}]", "objectives=[{name: infonce, "
                           "temperature: 0.1}]"]).stages[0].model_dump(mode="json")
    keys = [k for k, _, _ in config_diff(a, b)]
    assert keys == ["data.sources.0.max_examples", "objectives.0.temperature"]
    del a["train"]["grad_accum"]  # a record from before a schema key existed: its default is no change
    assert [k for k, _, _ in config_diff(a, b)] == keys
