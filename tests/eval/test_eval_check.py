"""`vlmbed data check`: exactly which files, images or datasets are missing or have the wrong row counts."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from vlmbed.eval import check_suite, evaluate
from vlmbed.eval.synthetic import write_mbeir, write_mmeb, write_vidore_beir


@pytest.fixture()
def app():
    import vlmbed.cli.bench  # noqa: F401  (registers `data`; the lead adds it to cli._register)
    from vlmbed.cli import app

    return app


def test_mmeb_check_names_missing_datasets_images_and_row_counts(tmp_path):
    write_mmeb(tmp_path, ["OK-VQA", "MSCOCO_t2i"], rows=3, candidates=3)
    victim = sorted((tmp_path / "eval_images" / "MSCOCO_t2i").glob("*.png"))[0]
    victim.unlink()
    report = check_suite("mmeb", tmp_path, ["OK-VQA", "MSCOCO_t2i", "GQA"])
    kinds = {(p.task, p.kind) for p in report.problems}
    assert ("GQA", "missing_dataset") in kinds
    assert ("MSCOCO_t2i", "missing_images") in kinds and ("OK-VQA", "missing_images") not in kinds
    assert ("OK-VQA", "row_count") in kinds
    msg = next(p.message for p in report.problems if p.kind == "missing_images")
    assert f"MSCOCO_t2i/{victim.name}" in msg
    assert "has 3 rows, expected 1000" in next(p.message for p in report.problems if p.kind == "row_count")
    assert report.tasks["OK-VQA"]["rows"] == 3


def test_vidore_and_mbeir_checks(tmp_path):
    write_vidore_beir(tmp_path / "vidore" / "tatdqa_test_beir", queries=4, docs=5)
    shutil.rmtree(tmp_path / "vidore" / "tatdqa_test_beir" / "qrels")
    report = check_suite("vidore", tmp_path / "vidore", ["TAT-DQA", "ShiftProject"])
    assert {(p.task, p.kind) for p in report.problems} == {("TAT-DQA", "missing_dataset"),
                                                          ("ShiftProject", "missing_dataset")}
    write_mbeir(tmp_path / "mbeir", ["cirr_task7"], queries=3, pool=4)
    (tmp_path / "mbeir" / "qrels" / "test" / "mbeir_cirr_task7_test_qrels.txt").unlink()
    report = check_suite("mbeir", tmp_path / "mbeir", ["cirr_task7", "nights_task4"])
    missing = [p for p in report.problems if p.kind == "missing_file"]
    assert {p.task for p in missing} == {"cirr_task7", "nights_task4"}
    assert "mbeir_cirr_task7_test_qrels.txt" in missing[0].message


def test_cli_data_check_exit_codes_and_json(app, tmp_path):
    write_mmeb(tmp_path, ["OK-VQA"], rows=2, candidates=2)
    runner = CliRunner()
    res = runner.invoke(app, ["data", "check", "mmeb", str(tmp_path), "--tasks", "OK-VQA", "--tasks", "GQA"])
    assert res.exit_code == 1, res.output
    assert "[missing_dataset] GQA" in res.output and "[row_count] OK-VQA" in res.output
    res = runner.invoke(app, ["data", "check", "mmeb", str(tmp_path), "--tasks", "OK-VQA", "--json"])
    report = json.loads(res.output)
    assert report["ok"] is False and report["problems"][0]["kind"] == "row_count"
    res = runner.invoke(app, ["data", "check", "nope", str(tmp_path)])
    assert res.exit_code == 2 and "unknown suite" in res.output


def test_evaluate_refuses_missing_data_before_loading_any_model(tmp_path):
    write_mmeb(tmp_path, ["OK-VQA"], rows=2, candidates=2)
    with pytest.raises(FileNotFoundError, match="GQA") as err:
        evaluate(tmp_path / "no-such-model", suite="mmeb", tasks=["OK-VQA", "GQA"], data_dir=tmp_path)
    assert "vlmbed data check mmeb" in str(err.value) and "config.json" not in str(err.value)
