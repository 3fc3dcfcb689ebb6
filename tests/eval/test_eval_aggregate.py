"""Aggregation reproduces published overall scores from their published parts (BENCHMARKS.md 2.7, 3.1)."""

from __future__ import annotations

import pytest

from vlmbed.eval.aggregate import overall_from_parts, summarize
from vlmbed.eval.mbeir import MBEIR_TASKS
from vlmbed.eval.mmeb import MMEB_TASKS, summarize_mmeb
from vlmbed.eval.published import comparison, load_published


def _model(table: str, name: str, size: str) -> dict:
    return next(m for m in load_published()[table]["models"] if m["model"] == name and m["size"] == size)


def test_vlm2vec_overall_62_9_from_meta_tasks_and_task_counts():
    s = _model("mmeb", "VLM2Vec (LLaVA-1.6)", "7B")["scores"]
    counts = {"CLS": 10, "VQA": 10, "RET": 12, "VG": 4}
    overall = overall_from_parts({m: s[m] for m in counts}, counts)
    assert round(overall, 1) == s["overall"] == 62.9
    assert round(overall_from_parts({"IND": s["IND"], "OOD": s["OOD"]}, {"IND": 20, "OOD": 16}), 1) == 62.9
    # the mean of the four meta-task means is a different (wrong) number
    assert round(sum(s[m] for m in counts) / 4, 1) != 62.9


@pytest.mark.parametrize("name,size", [("MoCa (Qwen2.5-VL)", "3B"), ("MoCa (Qwen2.5-VL)", "7B"),
                                       ("VLM2Vec (Phi-3.5-V)", "4.2B"), ("mmE5", "11B")])
def test_more_mmeb_rows_reproduce_their_overall(name, size):
    s = _model("mmeb", name, size)["scores"]
    counts = {"CLS": 10, "VQA": 10, "RET": 12, "VG": 4}
    assert round(overall_from_parts({m: s[m] for m in counts}, counts), 1) == s["overall"]


def test_mmeb_v2_overall_and_visdoc_group_means():
    s = _model("mmeb_v2", "Qwen3-VL-Embedding", "8B")["scores"]
    overall = overall_from_parts({k: s[k] for k in ("image", "video", "visdoc")}, {"image": 36, "video": 18, "visdoc": 24})
    assert round(overall, 2) == 77.82 and round(overall, 1) == s["overall"]
    visdoc = overall_from_parts({"VDRv1": 75.52, "VDRv2": 44.86, "VR": 79.38, "OOD": 39.43},
                                {"VDRv1": 10, "VDRv2": 4, "VR": 6, "OOD": 4})
    assert round(visdoc, 2) == 65.36


@pytest.mark.parametrize("name,size", [("UniIR", "0.4B"), ("LamRA-Ret", "2B"), ("MuCo", "2B"), ("MuCo", "7B")])
def test_mbeir_overall_is_the_plain_mean_of_16_rows(name, size):
    s = _model("mbeir", name, size)["scores"]
    counts = {g: sum(1 for t in MBEIR_TASKS.values() if t[4] == g) for g in ("S->S", "S->M", "M->S", "M->M")}
    assert counts == {"S->S": 8, "S->M": 2, "M->S": 4, "M->M": 2}
    assert {**counts, "overall": 16} == load_published()["mbeir"]["task_counts"]
    assert round(overall_from_parts({g: s[g] for g in counts}, counts), 1) == s["overall"]


def test_mmeb_summary_groups_splits_and_overall_over_datasets():
    scores = {name: (1.0 if meta == "VG" else 0.5) for name, (meta, _, _) in MMEB_TASKS.items()}
    out = summarize_mmeb(scores)
    assert out["task_counts"] == {"CLS": 10, "VQA": 10, "RET": 12, "VG": 4}
    assert out["split_counts"] == {"IND": 20, "OOD": 16}
    assert out["meta_tasks"]["VG"] == 1.0 and out["meta_tasks"]["CLS"] == 0.5
    assert out["overall"] == pytest.approx((32 * 0.5 + 4 * 1.0) / 36)
    assert out["splits"]["OOD"] == pytest.approx((13 * 0.5 + 3 * 1.0) / 16)
    assert out["complete"] is True
    partial = summarize_mmeb({"OK-VQA": 1.0})
    assert partial["complete"] is False and len(partial["missing_tasks"]) == 35


def test_summary_without_splits_and_published_comparison_columns():
    out = summarize({"a": 1.0, "b": 0.0}, {"a": "X", "b": "Y"})
    assert "splits" not in out and out["overall"] == 0.5
    results = {"metric": "precision@1", "meta_tasks": {"CLS": 0.5, "VQA": 0.25, "RET": 0.75, "VG": 1.0},
               "splits": {"IND": 0.6}, "overall": 0.55, "complete": True, "tasks": {}}
    comp = comparison("mmeb", results)
    assert comp["ours"] == pytest.approx({"CLS": 50.0, "VQA": 25.0, "RET": 75.0, "VG": 100.0, "IND": 60.0,
                                          "OOD": None, "overall": 55.0})
    results["complete"] = False  # an overall over a subset of datasets is not comparable
    assert comparison("mmeb", results)["ours"]["overall"] is None
    names = {m["model"] for m in load_published()["mmeb"]["models"]}
    for family in ("VLM2Vec", "MoCa", "UniME", "MuCo", "CoCoA", "GME"):
        assert any(n.startswith(family) for n in names), family
