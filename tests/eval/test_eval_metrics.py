"""Metrics: the worked examples of BENCHMARKS.md 7.2 and randomized agreement with pytrec_eval (1e-9)."""

from __future__ import annotations

import numpy as np
import pytest

from vlmbed.eval.metrics import evaluate_run, mean_metrics, precision_at_1, query_metrics, rank_run
from vlmbed.eval.ranking import tie_ranks, topk, topk_blocked

pytrec_eval = pytest.importorskip("pytrec_eval")

# our name -> pytrec_eval measure
PAIRS = {
    "ndcg@1": "ndcg_cut_1", "ndcg@3": "ndcg_cut_3", "ndcg@5": "ndcg_cut_5", "ndcg@10": "ndcg_cut_10",
    "precision@1": "P_1", "precision@5": "P_5", "precision@10": "P_10", "recall@5": "recall_5",
    "recall@10": "recall_10", "hit@1": "success_1", "hit@5": "success_5", "hit@10": "success_10",
    "uniir_recall@5": "success_5", "map@5": "map_cut_5", "map@10": "map_cut_10", "recip_rank": "recip_rank",
}


def _pytrec(qrels, run):
    measures = {"ndcg_cut.1,3,5,10", "P.1,5,10", "recall.5,10", "success.1,5,10", "map_cut.5,10", "recip_rank"}
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)


# ----------------------------------------------------------------------------- worked examples (7.2)
def test_golden_1_tie_at_the_top_goes_to_the_larger_doc_id():
    qrels, run = {"q1": {"a": 1}}, {"q1": {"a": 0.5, "b": 0.5, "c": 0.1}}
    m = evaluate_run(qrels, run, ["precision@1", "hit@1", "recip_rank", "ndcg@5", "map@5"])["q1"]
    assert m["precision@1"] == 0 and m["hit@1"] == 0
    assert m["recip_rank"] == 0.5
    assert m["ndcg@5"] == pytest.approx(0.6309297535714575, abs=1e-15)
    assert m["map@5"] == 0.5
    # insertion order does not matter under the trec rule (ranx's insertion-order rule would flip P@1)
    swapped = evaluate_run(qrels, {"q1": {"b": 0.5, "a": 0.5, "c": 0.1}}, ["precision@1"])["q1"]
    assert swapped["precision@1"] == 0


def test_golden_2_graded_linear_and_exponential_ndcg():
    qrels, run = {"q1": {"a": 2, "b": 1}}, {"q1": {"b": 0.9, "a": 0.8, "x": 0.7}}
    m = evaluate_run(qrels, run, ["ndcg@5", "ndcg_exp@5"])["q1"]
    assert m["ndcg@5"] == pytest.approx(0.8597186998521972, abs=1e-15)
    assert m["ndcg_exp@5"] == pytest.approx(0.7967075809905066, abs=1e-15)


def test_golden_3_query_with_only_grade_zero_is_kept_with_zero():
    per_q = evaluate_run({"q1": {"a": 1}, "q2": {"z": 0}}, {"q1": {"a": 1.0}, "q2": {"z": 1.0}}, ["ndcg@5"])
    assert per_q == {"q1": {"ndcg@5": 1.0}, "q2": {"ndcg@5": 0.0}}
    assert mean_metrics(per_q)["ndcg@5"] == 0.5


def test_golden_4_doc_ids_compare_as_bytes_not_numbers():
    m = evaluate_run({"q1": {"100": 1}}, {"q1": {"100": 0.5, "99": 0.5}}, ["precision@1"])["q1"]
    assert m["precision@1"] == 0  # "99" > "100" byte-wise, so "99" ranks first


def test_golden_5_mmeb_first_index_argmax():
    assert precision_at_1([np.array([0.7, 0.7, 0.2])]) == 1.0
    assert rank_run({"0": 0.7, "1": 0.7, "2": 0.2}, ties="first_index")[0] == "0"
    assert rank_run({"0": 0.7, "1": 0.7, "2": 0.2}, ties="trec")[0] == "1"


def test_golden_vectors_agree_with_pytrec_eval():
    cases = [({"q1": {"a": 1}}, {"q1": {"a": 0.5, "b": 0.5, "c": 0.1}}),
             ({"q1": {"a": 2, "b": 1}}, {"q1": {"b": 0.9, "a": 0.8, "x": 0.7}}),
             ({"q1": {"a": 1}, "q2": {"z": 0}}, {"q1": {"a": 1.0}, "q2": {"z": 1.0}}),
             ({"q1": {"100": 1}}, {"q1": {"100": 0.5, "99": 0.5}})]
    for qrels, run in cases:
        ours, ref = evaluate_run(qrels, run, PAIRS), _pytrec(qrels, run)
        assert set(ours) == set(ref)
        for qid in ref:
            for name, measure in PAIRS.items():
                assert ours[qid][name] == pytest.approx(ref[qid][measure], abs=1e-12), (qid, name)


def test_vlm2vec_map_divides_by_min_relevant_k():
    grades = [1, 0, 0, 0, 0, 0]  # one hit at rank 1, 8 relevant docs
    all_grades = [1] * 8
    m = query_metrics(grades, all_grades, ["map@5", "vlm2vec_map@5", "mrr@5", "recall@5", "uniir_recall@5"])
    assert m["map@5"] == pytest.approx(1 / 8) and m["vlm2vec_map@5"] == pytest.approx(1 / 5)
    assert m["mrr@5"] == 1.0 and m["recall@5"] == pytest.approx(1 / 8) and m["uniir_recall@5"] == 1.0


def test_unknown_metric_and_tie_policy_are_errors():
    with pytest.raises(ValueError, match="unknown metric"):
        query_metrics([1], [1], ["ndcg5"])
    with pytest.raises(ValueError, match="tie policy"):
        rank_run({"a": 1.0}, ties="random")


# ----------------------------------------------------------------------------- randomized vs pytrec_eval
def _random_case(rng, n_queries=250, n_docs=60, ties=False):
    qrels, run = {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        docs = [f"d{rng.integers(0, 10**rng.integers(1, 4))}-{d}" for d in range(n_docs)]
        if ties:
            scores = rng.integers(0, 6, size=n_docs) / 5.0  # many exact ties
        else:
            scores = rng.random(n_docs)
        run[qid] = {d: float(s) for d, s in zip(docs, scores, strict=True)}
        judged = rng.choice(n_docs + 20, size=rng.integers(1, 12), replace=False)
        # some judged docs are not in the run (d-ids beyond n_docs), some are grade 0
        qrels[qid] = {(docs[j] if j < n_docs else f"missing{j}"): int(rng.integers(0, 4)) for j in judged}
    return qrels, run


@pytest.mark.parametrize("ties", [False, True])
def test_random_runs_agree_with_pytrec_eval(ties):
    rng = np.random.default_rng(7 + ties)
    qrels, run = _random_case(rng, ties=ties)
    ours, ref = evaluate_run(qrels, run, PAIRS, ties="trec"), _pytrec(qrels, run)
    assert set(ours) == set(ref) and len(ref) >= 200
    worst = max(abs(ours[q][name] - ref[q][measure]) for q in ref for name, measure in PAIRS.items())
    assert worst <= 1e-9
    # means too
    for name, measure in PAIRS.items():
        ref_mean = float(np.mean([ref[q][measure] for q in ref]))
        assert mean_metrics(ours)[name] == pytest.approx(ref_mean, abs=1e-9)


@pytest.mark.parametrize("ties", [False, True])
def test_matrix_top_k_path_agrees_with_pytrec_eval(ties):
    """The path evaluation uses (float32 dot products, blocked exact top-k) against pytrec on the same scores."""
    rng = np.random.default_rng(11 + ties)
    n_q, n_d, dim = 220, 300, 8
    if ties:
        docs = rng.integers(0, 3, size=(n_d, dim)).astype(np.float32)  # many identical documents
        queries = rng.integers(0, 3, size=(n_q, dim)).astype(np.float32)
    else:
        docs, queries = rng.standard_normal((n_d, dim), dtype=np.float32), rng.standard_normal((n_q, dim), dtype=np.float32)
    doc_ids = [str(int(x)) for x in rng.choice(10**6, size=n_d, replace=False)]
    tie = tie_ranks(doc_ids, "trec")
    idx, vals = topk_blocked(queries, docs, 10, tie, query_block=64, doc_block=70)
    full = queries @ docs.T
    run = {f"q{i}": {d: float(s) for d, s in zip(doc_ids, full[i], strict=True)} for i in range(n_q)}
    qrels = {f"q{i}": {doc_ids[j]: int(rng.integers(1, 3)) for j in rng.choice(n_d, 3, replace=False)}
             for i in range(n_q)}
    ref = _pytrec(qrels, run)
    names = [n for n in PAIRS if n != "recip_rank"]
    for i in range(n_q):
        judged = qrels[f"q{i}"]
        ours = query_metrics([judged.get(doc_ids[j], 0) for j in idx[i]], list(judged.values()), names)
        for name in names:
            assert ours[name] == pytest.approx(ref[f"q{i}"][PAIRS[name]], abs=1e-9), (i, name)
    # blocked float32 products may differ from one big product in the last bit (BLAS blocking)
    assert np.allclose(vals, np.take_along_axis(full, idx, axis=1), rtol=1e-6, atol=1e-6)


def test_topk_resolves_ties_at_the_cut_exactly():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(50, 400)).astype(np.float32)
    ids = [f"doc{i}" for i in range(400)]
    tie = tie_ranks(ids, "trec")
    for k in (1, 5, 37):
        got = topk(scores, k, tie)
        for r in range(50):
            expect = sorted(range(400), key=lambda j: (-scores[r, j], tie[j]))[:k]
            assert got[r].tolist() == expect
    first = topk(scores, 5, tie_ranks(ids, "first_index"))
    assert all(first[r].tolist() == sorted(range(400), key=lambda j: (-scores[r, j], j))[:5] for r in range(50))
