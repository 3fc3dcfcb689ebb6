"""CLI end to end on the tiny model: quickstart (short), train, eval, encode, and error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlmbed.cli import _register, app

_register()
runner = CliRunner()


def test_quickstart_short_run_writes_model_results_and_report(tmp_path):
    out = tmp_path / "qs"
    res = runner.invoke(app, ["quickstart", "--out", str(out), "train.max_steps=4", "train.progress=false",
                              "eval.max_queries=12", "data.batch_size=16"])
    assert res.exit_code == 0, res.output
    stage = out / "00-contrastive"
    results = json.loads((stage / "results.json").read_text())
    assert set(results["after"]["meta_tasks"]) == {"CLS", "VQA", "RET", "VG"}
    assert set(results["before"]["tasks"]) == set(results["after"]["tasks"])  # untrained scores beside trained
    report = (stage / "report.html").read_text()
    assert "data:image/png;base64," in report and "untrained" in report
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and {"loss", "lr", "examples_per_s"} <= set(rows[-1])
    ckpts = sorted((stage / "checkpoints").glob("step-*"))
    assert ckpts and (ckpts[-1] / "trainer_state.json").exists() and (ckpts[-1] / "config.yaml").exists()
    assert (stage / "model" / "vlmbed.json").exists()

    # the trained folder evaluates and encodes through the CLI
    res = runner.invoke(app, ["eval", "--model", str(stage / "model"), "--suite", "digits", "--max-queries", "8",
                              "--tasks", "digits_cls", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["tasks"]["digits_cls"]["num_queries"] == 8

    Image.new("RGB", (16, 16), "white").save(tmp_path / "w.png")
    items = tmp_path / "items.jsonl"
    items.write_text('{"text": "seven"}\n{"image": "w.png", "text": "a white image"}\n')
    res = runner.invoke(app, ["encode", "--model", str(stage / "model"), "--input", str(items),
                              "--out", str(tmp_path / "v.npy"), "--role", "document"])
    assert res.exit_code == 0, res.output
    vecs = np.load(tmp_path / "v.npy")
    assert vecs.shape[0] == 2 and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)


def test_train_rejects_unknown_key_naming_the_override_and_stage(tmp_path):
    res = runner.invoke(app, ["train", "quickstart", f"output_dir={tmp_path}", "train.learning_rate=1"])
    assert res.exit_code == 2
    assert "override `train.learning_rate=1`, stage `contrastive`: unknown key " \
        "`stages.contrastive.train.learning_rate`" in res.output


def test_encode_names_the_bad_line(tmp_path, tiny_model_dir):
    items = tmp_path / "items.jsonl"
    items.write_text('{"text": "ok"}\n{"image": "missing.png"}\n')
    res = runner.invoke(app, ["encode", "--model", str(tiny_model_dir), "--input", str(items),
                              "--out", str(tmp_path / "v.npy")])
    assert res.exit_code == 2
    assert f"{items}:2" in res.output and "missing.png" in res.output


@pytest.mark.slow
def test_full_quickstart_reaches_target(tmp_path):
    res = runner.invoke(app, ["quickstart", "--out", str(tmp_path / "qs"), "train.progress=false"])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "qs" / "00-contrastive" / "results.json").read_text())
    assert results["after"]["overall"] >= 0.90


def test_report_plots_loss_parts_only(tmp_path):
    from vlmbed.train.report import NOT_LOSSES, write_report

    row = {"step": 1, "epoch": 0.1, "lr": 1e-3, "examples_per_s": 9.0, "nonfinite_steps": 0, "infonce": 2.0,
           "loss": 2.0}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    res = {"tasks": {"t": {"precision@1": 0.5, "meta_task": "CLS"}}, "meta_tasks": {"CLS": 0.5}, "overall": 0.5}
    page = write_report(tmp_path, "t", res).read_text()
    assert "data:image/png;base64," in page
    assert set(NOT_LOSSES) == {k for k in row if k not in ("infonce", "loss")}


# ----------------------------------------------------------------- one spelling, listed choices, real errors
def test_version_prints_the_package_version():
    from vlmbed import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"vlmbed {__version__}"


def test_unknown_stage_fails_naming_the_stages(tmp_path, monkeypatch):
    import vlmbed.train.stages

    monkeypatch.setattr(vlmbed.train.stages, "run_recipe", lambda *a, **k: pytest.fail("must not train"))
    res = runner.invoke(app, ["train", "quickstart", "--stage", "nonexist", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "--stage 'nonexist'" in res.output and "its stages: contrastive" in res.output


def test_train_out_sets_the_output_folder_resolved(tmp_path, monkeypatch):
    import vlmbed.train.stages

    seen = {}
    monkeypatch.setattr(vlmbed.train.stages, "run_recipe",
                        lambda recipe, only_stage=None: seen.update(recipe=recipe, stage=only_stage) or [])
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["train", "quickstart", "output_dir=elsewhere", "--out", "runs/mine",
                              "--stage", "contrastive"])
    assert res.exit_code == 0, res.output
    assert seen["recipe"].output_dir == str(tmp_path / "runs" / "mine") and seen["stage"] == "contrastive"


def test_choices_are_listed_and_checked():
    from vlmbed.cli.common import IndexKind, Suite
    from vlmbed.eval import SUITES
    from vlmbed.index import KINDS

    assert [s.value for s in Suite] == list(SUITES) and tuple(k.value for k in IndexKind) == KINDS
    assert "query|document" in runner.invoke(app, ["encode", "--help"], env={"COLUMNS": "200"}).output
    assert "query|document" in runner.invoke(app, ["index", "build", "--help"], env={"COLUMNS": "200"}).output
    assert "digits|scenes|mmeb|vidore|mbeir" in runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}).output
    res = runner.invoke(app, ["encode", "--model", "m", "--input", "i", "--out", "o", "--role", "passage"],
                        env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "'passage' is not one of 'query', 'document'" in res.output


def test_recipe_data_paths_resolve_against_the_recipe_and_errors_show_them(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "r.yaml").write_text(
        "name: r\nstages:\n  - name: a\n    data:\n      sources: [{format: jsonl, path: data/pairs.jsonl}]\n")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    res = runner.invoke(app, ["train", "../configs/r.yaml", "train.progress=false"])
    assert res.exit_code == 2
    assert str(tmp_path / "configs" / "data" / "pairs.jsonl") in res.output


def test_encode_reports_the_file_it_writes_and_suggests_its_own_flag(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    items = tmp_path / "items.jsonl"
    items.write_text('{"text": "ok"}\n{"image": "missing.png"}\n{"text": "also ok"}\n')
    res = runner.invoke(app, ["encode", "--model", str(tiny_model_dir), "--input", "items.jsonl", "--out", "x"])
    assert res.exit_code == 2
    assert "--skip-bad" in res.output and "data.on_bad_image" not in res.output
    assert str(items) + ":2" in res.output  # the resolved input path
    res = runner.invoke(app, ["encode", "--model", str(tiny_model_dir), "--input", "items.jsonl", "--out", "x",
                              "--skip-bad", "--role", "document", "--truncate-dim", "16"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["out"] == str(tmp_path / "x.npy") and summary["skipped"] == 1 and summary["dim"] == 16
    vecs = np.load(summary["out"])
    assert vecs.shape == (3, 16) and np.isnan(vecs[1]).all() and "items.jsonl:2" in res.stderr
    from vlmbed.models.embedder import Embedder

    expected = Embedder.from_pretrained(tiny_model_dir).encode(["ok", "also ok"], role="document", truncate_dim=16)
    np.testing.assert_allclose(vecs[[0, 2]], expected, atol=1e-5)
