"""Each benchmark end to end on fixtures in its published schema, scored with the tiny model.

Scores are checked against independent computations: MMEB by encoding and argmax directly; ViDoRe and
M-BEIR by re-scoring the written TREC run files with pytrec_eval against the written qrels.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from vlmbed.eval import evaluate
from vlmbed.eval.table import markdown_report, print_table, table_rows

MMEB_SETS = ["ImageNet-1K", "OK-VQA", "MSCOCO_t2i", "RefCOCO"]  # as written by the mmeb_dir fixture
MBEIR_SETS = ["mscoco_task0", "webqa_task1", "cirr_task7"]  # as written by the mbeir_dir fixture
TOL = 1e-5  # scores of the same items encoded in different batches agree within this

pytrec_eval = pytest.importorskip("pytrec_eval")


def _read_trec(path):
    run = defaultdict(dict)
    for line in path.read_text().splitlines():
        qid, _, did, _, score, _ = line.split()
        run[qid][did] = float(score)
    return dict(run)


def _read_qrels(path):
    qrels = defaultdict(dict)
    for line in path.read_text().splitlines():
        qid, _, did, grade = line.split()
        qrels[qid][did] = int(grade)
    return dict(qrels)


def _rescore(out, task, measures):
    run, qrels = _read_trec(out / "runs" / f"{task}.trec"), _read_qrels(out / "runs" / f"{task}.qrels")
    return pytrec_eval.RelevanceEvaluator(qrels, set(measures)).evaluate(run)


def _outputs_present(out):
    for name in ("results.json", "run.json", "results.md", "report.html"):
        assert (out / name).exists(), name
    assert "data:image/png;base64," in (out / "report.html").read_text()
    saved = json.loads((out / "results.json").read_text())
    assert "run" not in saved and saved["metric_definition"]
    return saved


@pytest.fixture(scope="module")
def mmeb_results(eval_embedder, mmeb_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mmeb-out")
    return out, evaluate(eval_embedder, suite="mmeb", tasks=MMEB_SETS, data_dir=mmeb_dir, out_dir=out, batch_size=8)


def test_mmeb_end_to_end_matches_direct_argmax(mmeb_results, eval_embedder, mmeb_dir):
    from vlmbed.data.mmeb import read_mmeb_dataset

    out, res = mmeb_results
    saved = _outputs_present(out)
    assert saved["tasks"] == json.loads(json.dumps(res["tasks"]))
    assert set(res["tasks"]) == set(MMEB_SETS) and res["metric"] == "precision@1"
    for name in MMEB_SETS:
        examples = read_mmeb_dataset(mmeb_dir, name)
        # encoded here in other batches than evaluate used: a row whose positive ties with its best
        # negative within TOL may go either way, every other row must agree
        surely, maybe = 0, 0
        for ex in examples:
            q = eval_embedder.encode([ex.query], role="query")[0]
            s = eval_embedder.encode([ex.positive, *ex.negatives], role="document") @ q
            surely += int(s[0] > s[1:].max() + TOL)
            maybe += int(s[0] >= s[1:].max() - TOL)
        got = res["tasks"][name]["precision@1"] * len(examples)
        assert surely - 1e-9 <= got <= maybe + 1e-9, (name, surely, got, maybe)
        assert res["tasks"][name]["hit@1"] == res["tasks"][name]["precision@1"]
        # the run file re-scores to the same hit@1 with trec_eval (no exact ties among these scores)
        ref = _rescore(out, name, {"success.1"})
        assert np.mean([v["success_1"] for v in ref.values()]) == pytest.approx(res["tasks"][name]["precision@1"])
    assert res["overall"] == pytest.approx(np.mean([res["tasks"][t]["precision@1"] for t in MMEB_SETS]))
    assert set(res["meta_tasks"]) == {"CLS", "VQA", "RET", "VG"} and set(res["splits"]) == {"IND", "OOD"}
    assert res["complete"] is False and res["published"]["ours"]["overall"] is None
    assert len(res["data"]["warnings"]) == len(MMEB_SETS)  # tiny files: wrong row counts warn, not fail
    enc = res["run"]["encoding"]
    assert enc["encoded"] == enc["unique_items"] < enc["items"]


def test_vidore_end_to_end_rescored_with_pytrec(eval_embedder, vidore_dir, tmp_path):
    tasks = ["ArxivQA", "TAT-DQA", "ESG-Reports-v2"]
    res = evaluate(eval_embedder, suite="vidore", tasks=tasks, data_dir=vidore_dir, out_dir=tmp_path, batch_size=8)
    _outputs_present(tmp_path)
    assert res["tasks"]["ArxivQA"]["num_queries"] == 6
    measures = {"ndcg_cut.5", "recall.5", "P.1", "recip_rank"}
    for name in tasks:
        ref = _rescore(tmp_path, name, measures)
        task = res["tasks"][name]
        pooled = task.get("pooled", task)
        assert pooled["ndcg@5"] == pytest.approx(np.mean([v["ndcg_cut_5"] for v in ref.values()]), abs=1e-9)
        assert pooled["recall@5"] == pytest.approx(np.mean([v["recall_5"] for v in ref.values()]), abs=1e-9)
        assert pooled["precision@1"] == pytest.approx(np.mean([v["P_1"] for v in ref.values()]), abs=1e-9)
    esg = res["tasks"]["ESG-Reports-v2"]
    assert set(esg["subsets"]) == {"english", "french"}
    assert esg["ndcg@5"] == pytest.approx(np.mean([s["ndcg@5"] for s in esg["subsets"].values()]))
    assert res["meta_tasks"] == pytest.approx({"ViDoRe-v1": np.mean([res["tasks"][t]["ndcg@5"] for t in tasks[:2]]),
                                               "ViDoRe-v2": esg["ndcg@5"]})
    # TAT-DQA fixture repeats two page images under new ids: exact ties, ordered by id descending
    run = _read_trec(tmp_path / "runs" / "TAT-DQA.trec")
    lines = (tmp_path / "runs" / "TAT-DQA.trec").read_text().splitlines()
    q0 = [ln.split() for ln in lines if ln.split()[0] == next(iter(run))]
    scores = run[q0[0][0]]
    assert scores["10"] == scores["17"] and scores["11"] == scores["18"]  # pages 17, 18 duplicate 10, 11
    order = [r[2] for r in q0]
    assert order.index("17") < order.index("10") and order.index("18") < order.index("11")
    assert res["published"]["ours"]["ESG_Syn"] == pytest.approx(100 * esg["subsets"]["english"]["ndcg@5"])


@pytest.mark.parametrize("pool", ["local", "global"])
def test_mbeir_end_to_end_rescored_with_pytrec(eval_embedder, mbeir_dir, tmp_path, pool):
    res = evaluate(eval_embedder, suite="mbeir", tasks=MBEIR_SETS, data_dir=mbeir_dir, out_dir=tmp_path,
                   options={"pool": pool}, batch_size=8)
    _outputs_present(tmp_path)
    assert res["metric"] == "uniir_recall@k"
    for name in MBEIR_SETS:
        task = res["tasks"][name]
        assert task["metric"] == "uniir_recall@5" and task["uniir_recall@k"] == task["uniir_recall@5"]
        ref = _rescore(tmp_path, name, {"success.1,5,10", "recall.5"})
        assert task["uniir_recall@5"] == pytest.approx(np.mean([v["success_5"] for v in ref.values()]))
        assert task["uniir_recall@1"] == pytest.approx(np.mean([v["success_1"] for v in ref.values()]))
        assert task["recall@5"] == pytest.approx(np.mean([v["recall_5"] for v in ref.values()]))
        assert task["corpus_size"] == (21 if pool == "global" else 7)
    assert res["run"]["encoding"]["unique_items"] == (15 + 21)  # the union pool is encoded once for 3 tasks
    assert set(res["meta_tasks"]) == {"S->S", "M->S"}
    if pool == "local":
        assert "union" in res["published"]["note"]


def test_tables_and_reports_render_for_every_suite(mmeb_results, capsys):
    _, res = mmeb_results
    rows = table_rows(res, res)
    assert rows[-1][0] == "overall" and any(r[1] == "split mean" for r in rows)
    print_table(res, title="mmeb")
    text = capsys.readouterr().out
    assert "published" in text and "this run" in text and "MoCa" in text
    md = markdown_report(res)
    assert "| **this run** |" in md and "VLM2Vec (LLaVA-1.6)" in md


def test_cli_eval_runs_a_benchmark_suite(tiny_model_dir, vidore_dir, tmp_path):
    from typer.testing import CliRunner

    import vlmbed.cli.core  # noqa: F401  (registers `eval`)
    from vlmbed.cli import app

    res = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--suite", "vidore", "--data-dir",
                                   str(vidore_dir), "--tasks", "TAT-DQA", "--out", str(tmp_path), "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert "TAT-DQA" in res.output and "ndcg@5" in res.output
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["suite"] == "vidore" and (tmp_path / "runs" / "TAT-DQA.trec").exists()
