"""Experiment tracking: TensorBoard and offline W&B receive exactly the rows of metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from vlmbed.config import build_recipe
from vlmbed.train.stages import train
from vlmbed.train.tracking import check_trackers, flat_config


def _recipe(model_dir, out, **train_cfg):
    return build_recipe({"name": "t", "output_dir": str(out), "stages": [{
        "name": "cl",
        "model": {"path": str(model_dir), "attention": "bidirectional", "pooling": "mean", "append_eos": False,
                  "dtype": "float32"},
        "data": {"sources": [{"format": "digits", "tasks": ["digits_t2i"], "max_examples": 48}], "batch_size": 8},
        "train": {"lr": 1e-3, "max_steps": 4, "progress": False, "log_every": 1, **train_cfg},
        "eval": {"suite": "none"},
    }]})


def _metrics(stage_dir) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_every_metrics_row_and_the_config(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = train(_recipe(tiny_model_dir, tmp_path, report_to=["tensorboard"]))
    rows = _metrics(run.stage_dir)
    events = sorted((run.stage_dir / "tracking").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under <stage>/tracking"
    scalars: dict[str, dict[int, float]] = {}
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "infonce", "lr", "examples_per_s"):
        assert sorted(scalars[key]) == [1, 2, 3, 4], key
        for r in rows:
            assert scalars[key][r["step"]] == pytest.approx(r[key], rel=1e-6, abs=1e-9), (key, r["step"])
    hparams = list((run.stage_dir / "tracking").rglob("hparams.yml"))
    assert hparams and "train.lr: 0.001" in hparams[0].read_text()


def test_wandb_runs_offline_in_the_stage_folder(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    (run,) = train(_recipe(tiny_model_dir, tmp_path, report_to=["wandb"], max_steps=2))
    offline = list((run.stage_dir / "tracking" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, "W&B must default to an offline run inside <stage>/tracking"
    files = list(offline[0].glob("*.wandb"))
    assert files and files[0].stat().st_size > 0
    assert len(_metrics(run.stage_dir)) == 2


def test_unknown_or_missing_tracker_is_a_clear_error(monkeypatch):
    from pydantic import ValidationError

    from vlmbed.config import TrainConfig

    with pytest.raises(ValidationError, match="report_to"):
        TrainConfig(report_to=["mlflow"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install wandb"):
        check_trackers(["wandb"])


def test_flat_config_is_scalar_only():
    flat = flat_config({"train": {"lr": 1e-4, "betas": [0.9, 0.99], "max_steps": None}, "name": "cl"})
    assert flat == {"train.lr": 1e-4, "train.betas": "[0.9, 0.99]", "train.max_steps": "None", "name": "cl"}
