"""Retrieval metrics as pure functions. Names carry their definition; tie rules are explicit.

Definitions (BENCHMARKS.md section 6; trec_eval 9.0.8 semantics unless the name says otherwise):

==================  =====================================================================================
name                per query
==================  =====================================================================================
``ndcg@k``          linear (Jarvelin) nDCG: sum_{i<k} g_i / log2(i+2) over ranked docs, ideal from the
                    query's positive grades sorted descending; 0 when the ideal is 0 (trec ``ndcg_cut.k``)
``ndcg_exp@k``      exponential (Burges) gain 2^g - 1, same discount (equal to ``ndcg@k`` for binary grades)
``hit@k``           1 if a relevant doc (grade >= 1) is in the top k (trec ``success.k``; MMEB
                    "precision@1" for k=1 with one positive)
``uniir_recall@k``  UniIR's "Recall@k": the same as ``hit@k`` (kept as its own name so tables say what they
                    report)
``recall@k``        relevant in top k / number of relevant (trec ``recall.k``; 0 without relevant docs)
``precision@k``     relevant in top k / k (trec ``P.k``; the denominator stays k for short rankings)
``map@k``           sum over relevant ranks r <= k of precision@r, divided by the number of relevant docs
                    (trec ``map_cut.k``)
``vlm2vec_map@k``   the same sum divided by min(number of relevant, k) (VLM2Vec V2 ``RankingMetrics``)
``mrr@k``           1 / rank of the first relevant doc within the top k, else 0
``recip_rank``      1 / rank of the first relevant doc in the whole ranking (trec ``recip_rank``)
==================  =====================================================================================

Tie policies (order among exactly equal scores):

- ``trec``: document id **descending**, byte-wise (trec_eval / pytrec_eval: "b" before "a", "99" before "100");
- ``first_index``: the order the candidates were given in (numpy ``argmax``; MMEB V1: the positive at index 0
  wins ties).

Every function here takes plain Python / numpy values; nothing needs a model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

TIE_POLICIES = ("trec", "first_index")
RELEVANCE_LEVEL = 1  # a document counts as relevant when its grade >= 1 (trec_eval's default)

_METRIC_RE = re.compile(r"^(ndcg|ndcg_exp|hit|uniir_recall|recall|precision|map|vlm2vec_map|mrr)@(\d+)$")


# ----------------------------------------------------------------------------- MMEB row metric
def precision_at_1(scores: list[np.ndarray] | np.ndarray, positive_index: int = 0) -> float:
    """MMEB precision@1 (= hit@1 with one positive): the positive sits at ``positive_index`` (0 in MMEB).

    ``scores`` holds one 1-D array of candidate scores per query (rows may differ in length).
    The prediction is the **first** maximal index (numpy argmax), so exact ties resolve in favour
    of index 0, the positive, as in VLM2Vec's V1 ``eval.py``.
    """
    rows = list(scores)
    if not rows:
        return float("nan")
    correct = sum(int(np.argmax(row)) == positive_index for row in rows)
    return correct / len(rows)


# ----------------------------------------------------------------------------- ranking
def check_ties(ties: str) -> str:
    if ties not in TIE_POLICIES:
        raise ValueError(f"unknown tie policy {ties!r}; choose one of {', '.join(TIE_POLICIES)}")
    return ties


def rank_run(run: Mapping[str, float], ties: str = "trec") -> list[str]:
    """Document ids of one query's run, best first, under the tie policy ``ties``."""
    check_ties(ties)
    items = list(run.items())
    if ties == "first_index":
        return [d for d, _ in sorted(items, key=lambda kv: -float(kv[1]))]  # stable: insertion order
    return [d for d, _ in sorted(items, key=lambda kv: (float(kv[1]), kv[0].encode()), reverse=True)]


# ----------------------------------------------------------------------------- per-query metrics
def parse_metric(name: str) -> tuple[str, int | None]:
    """``"ndcg@5"`` -> ("ndcg", 5); ``"recip_rank"`` -> ("recip_rank", None). Unknown names raise."""
    if name == "recip_rank":
        return name, None
    m = _METRIC_RE.match(name)
    if not m:
        raise ValueError(
            f"unknown metric {name!r}; use ndcg@k, ndcg_exp@k, hit@k, uniir_recall@k, recall@k, precision@k, "
            "map@k, vlm2vec_map@k, mrr@k or recip_rank"
        )
    return m.group(1), int(m.group(2))


def metric_depth(names: Iterable[str]) -> int | None:
    """Ranking depth the metrics need (None: the whole ranking, for ``recip_rank``)."""
    depth = 0
    for name in names:
        kind, k = parse_metric(name)
        if k is None:
            return None
        depth = max(depth, k)
    return depth


def _dcg(gains: np.ndarray) -> float:
    if gains.size == 0:
        return 0.0
    discounts = np.log2(np.arange(gains.size, dtype=np.float64) + 2.0)
    return float(np.sum(gains / discounts))


def ndcg(ranked_grades: Sequence[float], grades: Sequence[float], k: int, exponential: bool = False) -> float:
    """nDCG@k from the grades of the ranked docs (0 = unjudged) and all of the query's judged grades."""
    top = np.asarray(ranked_grades[:k], dtype=np.float64)
    ideal = np.sort(np.asarray([g for g in grades if g > 0], dtype=np.float64))[::-1][:k]
    top = np.where(top > 0, top, 0.0)
    if exponential:
        top, ideal = np.power(2.0, top) - 1.0, np.power(2.0, ideal) - 1.0
    idcg = _dcg(ideal)
    return _dcg(top) / idcg if idcg > 0 else 0.0


def _relevant_flags(ranked_grades: Sequence[float], k: int | None) -> np.ndarray:
    top = ranked_grades if k is None else ranked_grades[:k]
    return np.asarray(top, dtype=np.float64) >= RELEVANCE_LEVEL


def num_relevant(grades: Sequence[float]) -> int:
    return int(sum(1 for g in grades if g >= RELEVANCE_LEVEL))


def hit(ranked_grades: Sequence[float], k: int) -> float:
    return float(_relevant_flags(ranked_grades, k).any())


def recall(ranked_grades: Sequence[float], grades: Sequence[float], k: int) -> float:
    n = num_relevant(grades)
    return float(_relevant_flags(ranked_grades, k).sum()) / n if n else 0.0


def precision(ranked_grades: Sequence[float], k: int) -> float:
    return float(_relevant_flags(ranked_grades, k).sum()) / k


def average_precision(ranked_grades: Sequence[float], grades: Sequence[float], k: int | None,
                      vlm2vec: bool = False) -> float:
    """AP over the top k: trec ``map_cut`` divides by the number relevant; VLM2Vec by min(that, k)."""
    flags = _relevant_flags(ranked_grades, k)
    n = num_relevant(grades)
    if n == 0 or not flags.any():
        return 0.0
    ranks = np.flatnonzero(flags) + 1.0  # (hits,)
    precisions = np.arange(1, ranks.size + 1) / ranks
    denom = min(n, k) if (vlm2vec and k is not None) else n
    return float(precisions.sum() / denom)


def reciprocal_rank(ranked_grades: Sequence[float], k: int | None = None) -> float:
    flags = _relevant_flags(ranked_grades, k)
    first = np.flatnonzero(flags)
    return 1.0 / (first[0] + 1.0) if first.size else 0.0


def query_metrics(ranked_grades: Sequence[float], grades: Sequence[float], names: Iterable[str]) -> dict[str, float]:
    """Every metric in ``names`` for one query.

    ``ranked_grades``: the grade of each ranked document, best first (0 when not judged), at least as
    deep as the largest k; ``grades``: the grades of all the query's judged documents (qrels).
    """
    out = {}
    for name in names:
        kind, k = parse_metric(name)
        if kind == "ndcg":
            out[name] = ndcg(ranked_grades, grades, k)
        elif kind == "ndcg_exp":
            out[name] = ndcg(ranked_grades, grades, k, exponential=True)
        elif kind in ("hit", "uniir_recall"):
            out[name] = hit(ranked_grades, k)
        elif kind == "recall":
            out[name] = recall(ranked_grades, grades, k)
        elif kind == "precision":
            out[name] = precision(ranked_grades, k)
        elif kind == "map":
            out[name] = average_precision(ranked_grades, grades, k)
        elif kind == "vlm2vec_map":
            out[name] = average_precision(ranked_grades, grades, k, vlm2vec=True)
        elif kind == "mrr":
            out[name] = reciprocal_rank(ranked_grades, k)
        else:  # recip_rank
            out[name] = reciprocal_rank(ranked_grades)
    return out


# ----------------------------------------------------------------------------- whole runs
def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Iterable[str],
    ties: str = "trec",
) -> dict[str, dict[str, float]]:
    """Per-query metrics for a run dict, pytrec_eval style.

    Queries evaluated are those present in both ``qrels`` and ``run`` (a query whose judgments are all
    grade 0 is kept and scores 0). Returns ``{qid: {metric: value}}``.
    """
    names = list(metrics)
    out = {}
    for qid, docs in run.items():
        if qid not in qrels:
            continue
        judged = qrels[qid]
        ranked = rank_run(docs, ties)
        out[qid] = query_metrics([judged.get(d, 0) for d in ranked], list(judged.values()), names)
    return out


def mean_metrics(per_query: Mapping[str, Mapping[str, float]], names: Iterable[str] | None = None) -> dict[str, float]:
    """Mean of each metric over queries (NaN when there are none)."""
    rows = list(per_query.values())
    names = list(names) if names is not None else (list(rows[0]) if rows else [])
    return {n: (math.fsum(r[n] for r in rows) / len(rows) if rows else float("nan")) for n in names}
