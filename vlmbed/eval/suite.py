"""Evaluation tasks and the encode -> score step for each kind.

Two kinds of task cover the benchmarks:

- :class:`EvalTask` (MMEB, digits): every query has its own candidate row, the positive first.
  Scored locally per row; the MMEB headline ``precision@1`` uses first-index argmax (V1 semantics).
- :class:`RetrievalTask` (ViDoRe, M-BEIR): every query is ranked against a whole corpus
  (:class:`Corpus`, shared between tasks that use the same pool) and judged by qrels.

Aggregation: per meta-task = mean over its tasks; overall = mean over all tasks (MMEB: overall is
NOT the mean of the meta-task means); see :mod:`vlmbed.eval.aggregate` for the benchmark rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vlmbed.eval.aggregate import group_means
from vlmbed.eval.metrics import check_ties, metric_depth, query_metrics
from vlmbed.eval.ranking import tie_ranks, topk_blocked
from vlmbed.types import Example, Item

LOCAL_METRICS = ("precision@1", "hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10", "mrr@10")


@dataclass(frozen=True)
class SuiteSpec:
    """A benchmark: how to load and check its data, its headline metric and how tasks aggregate.

    ``load(data_dir, tasks, max_queries, options) -> list[task]``; ``check(data_dir, tasks, options,
    images) -> CheckReport``; ``summarize({task: headline score}) -> dict`` (meta-tasks, splits, overall).
    Scores print as ``scale * value`` with ``decimals`` (MMEB x100 1 d.p.; ViDoRe 5 d.p.; UniIR 4 d.p.).
    """

    name: str
    metric: str
    metric_definition: str
    ties: str
    load: Callable
    summarize: Callable
    check: Callable | None = None
    scale: float = 100.0
    decimals: int = 1
    published: str | None = None


@dataclass
class EvalTask:
    """One dataset: queries, each with its candidate row (positive first)."""

    name: str
    meta_task: str
    examples: list[Example]
    split: str = ""  # IND / OOD where the benchmark defines it
    extra: dict = field(default_factory=dict)
    ties: str = "first_index"
    headline: str = "precision@1"
    multi_positive: bool = False  # rows are [*positives, *negatives] (MMEB-V2 MomentSeeker); else one positive

    def rows(self) -> list[list[Item]]:
        if self.multi_positive:
            return [[*ex.positives, *ex.negatives] for ex in self.examples]
        return [[ex.positive, *ex.negatives] for ex in self.examples]

    def positive_counts(self) -> list[int] | None:
        return [len(ex.positives) for ex in self.examples] if self.multi_positive else None


@dataclass
class Corpus:
    """Documents to rank: ids (strings, as in the qrels) and items. Tasks may share one corpus."""

    name: str
    ids: list[str]
    items: list[Item]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.items):
            raise ValueError(f"corpus {self.name}: {len(self.ids)} ids but {len(self.items)} items")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"corpus {self.name}: document ids are not unique")


@dataclass
class RetrievalTask:
    """Queries ranked against a corpus and judged by qrels ``{qid: {docid: grade}}``.

    ``subsets`` (e.g. languages) maps a subset name to its query ids: the task score is then the mean
    over subsets (mteb). ``unjudged``: ``"skip"`` queries without qrels (trec_eval) or ``"zero"``
    (they count as misses, UniIR). ``transform`` may edit a block of scores before ranking.
    """

    name: str
    meta_task: str
    query_ids: list[str]
    queries: list[Item]
    corpus: Corpus
    qrels: dict[str, dict[str, int]]
    metrics: tuple[str, ...] = ("ndcg@5",)
    headline: str = "ndcg@5"
    ties: str = "trec"
    split: str = ""
    subsets: dict[str, list[str]] | None = None
    unjudged: str = "skip"
    transform: object = None
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- local rows (MMEB)
def positive_ranks(q_emb: np.ndarray, q_where, c_emb: np.ndarray, c_where, lengths: list[int], ties: str,
                   positives: list[int] | None = None) -> np.ndarray:
    """0-based rank of candidate 0 (the positive) in each row, under the tie policy.

    first_index: the number of candidates scoring strictly higher (index 0 wins every tie, as numpy
    argmax). trec: candidates named by position ("0", "1", ...) and ordered by id descending on ties.
    ``positives``: per row, how many leading candidates are positive; the rank is then that of the
    best-ranked positive (hit@k = any positive in the top k).
    """
    check_ties(ties)
    out = np.zeros(len(lengths), dtype=np.int64)
    start = 0
    for r, (qi, n) in enumerate(zip(q_where, lengths, strict=True)):
        s = row_scores(q_emb[qi], c_emb, c_where[start : start + n])  # (n,)
        start += n
        if positives is not None and positives[r] > 1:
            tie = tie_ranks([str(j) for j in range(n)], ties)
            order = np.lexsort((tie, -s))  # best first
            out[r] = int(np.flatnonzero(order < positives[r])[0])
            continue
        higher = int(np.sum(s > s[0]))
        if ties == "trec":
            tie = tie_ranks([str(j) for j in range(n)], "trec")
            higher += int(np.sum((s == s[0]) & (tie < tie[0])))
        out[r] = higher
    return out


def row_scores(q: np.ndarray, c_emb: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Scores of one candidate row; duplicate candidates share one product, so they tie exactly."""
    rows, inverse = np.unique(where, return_inverse=True)
    return (c_emb[rows] @ q)[inverse.reshape(-1)]


def local_metrics(ranks: np.ndarray) -> dict[str, float]:
    """MMEB metrics from positive ranks (one positive per row, at index 0)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {m: float("nan") for m in LOCAL_METRICS}
    out = {"precision@1": float(np.mean(ranks == 0))}
    for k in (1, 5, 10):
        out[f"hit@{k}"] = float(np.mean(ranks < k))
    for k in (5, 10):
        out[f"ndcg@{k}"] = float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))
    out["mrr@10"] = float(np.mean(np.where(ranks < 10, 1.0 / (ranks + 1.0), 0.0)))
    return out


def score_local_task(encode, task: EvalTask) -> tuple[dict, dict | None]:
    """Encode a local task's unique items once and score it. Returns (metrics, ranks for outputs)."""
    rows = task.rows()
    q_emb, q_where = encode([ex.query for ex in task.examples], "query", f"{task.name} queries")
    c_emb, c_where = encode([c for row in rows for c in row], "document", f"{task.name} candidates")
    if q_emb is None:  # not the main process
        return {}, None
    lengths = [len(row) for row in rows]
    ranks = positive_ranks(q_emb, q_where, c_emb, c_where, lengths, task.ties, task.positive_counts())
    res = local_metrics(ranks)
    res.update({"num_queries": len(rows), "num_candidates_per_query": float(np.mean(lengths)) if rows else 0.0,
                "num_unique_queries": int(q_emb.shape[0]), "num_unique_candidates": int(c_emb.shape[0])})
    return res, {"ranks": ranks, "q_emb": q_emb, "q_where": q_where, "c_emb": c_emb, "c_where": c_where,
                 "lengths": lengths}


# ----------------------------------------------------------------------------- corpus retrieval
def score_retrieval_task(encode, task: RetrievalTask, corpus: tuple | None, run_depth: int = 100):
    """Rank every query against the corpus and compute metrics per query, per subset and per task.

    ``corpus`` = (unique embeddings (U, d), index (N,) of each corpus document into them).
    """
    q_emb, q_where = encode(task.queries, "query", f"{task.name} queries")
    if q_emb is None:
        return {}, None
    depth = metric_depth(task.metrics)
    depth = None if depth is None else max(depth, run_depth)
    tie = tie_ranks(task.corpus.ids, task.ties)
    idx, vals = topk_blocked(q_emb[q_where], corpus[0], depth, tie, transform=task.transform, doc_where=corpus[1])
    per_query, ids = {}, task.corpus.ids
    for i, qid in enumerate(task.query_ids):
        judged = task.qrels.get(qid)
        if judged is None:
            if task.unjudged == "skip":
                continue
            judged = {}
        ranked = [judged.get(ids[j], 0) for j in idx[i]]
        per_query[qid] = query_metrics(ranked, list(judged.values()), task.metrics)
    res = summarize_queries(per_query, task)
    return res, {"idx": idx, "vals": vals, "per_query": per_query}


def summarize_queries(per_query: dict[str, dict[str, float]], task: RetrievalTask) -> dict:
    """Task metrics: mean over queries, or mean over subsets of per-subset means."""
    names = list(task.metrics)
    pooled = group_means(list(per_query.values()), names)
    res: dict = {}
    if task.subsets:
        subsets = {}
        for name, qids in task.subsets.items():
            rows = [per_query[q] for q in qids if q in per_query]
            if rows:
                subsets[name] = {**group_means(rows, names), "num_queries": len(rows)}
        res.update({m: float(np.mean([s[m] for s in subsets.values()])) for m in names})
        res["subsets"] = subsets
        res["pooled"] = pooled
    else:
        res.update(pooled)
    res.update({"num_queries": len(per_query), "num_queries_in_file": len(task.query_ids),
                "corpus_size": len(task.corpus.ids),
                "num_qrels": sum(len(v) for q, v in task.qrels.items() if q in per_query)})
    return res


# ----------------------------------------------------------------------------- compatibility helpers
def unique_items(items: list[Item]) -> tuple[list[Item], list[int]]:
    """De-duplicate by content key; returns the unique items and, per input, its unique index."""
    index: dict[str, int] = {}
    uniq: list[Item] = []
    where = []
    for item in items:
        k = item.key()
        if k not in index:
            index[k] = len(uniq)
            uniq.append(item)
        where.append(index[k])
    return uniq, where


def _plain_encoder(embedder, batch_size: int, show_progress: bool):
    from vlmbed.eval.cache import MemoryCache
    from vlmbed.eval.encode import RunEncoder

    return RunEncoder(embedder, MemoryCache(), batch_size=batch_size, show_progress=show_progress)


def score_task(embedder, task: EvalTask, batch_size: int = 64, show_progress: bool = False) -> dict:
    """Encode a task's unique items once and return its metrics."""
    return score_local_task(_plain_encoder(embedder, batch_size, show_progress), task)[0]


def aggregate(per_task: dict[str, dict], meta: dict[str, str], metric: str = "precision@1") -> dict:
    """Per meta-task means and the overall mean over tasks (MMEB: overall is NOT the mean of means)."""
    by_meta: dict[str, list[float]] = {}
    for name, res in per_task.items():
        by_meta.setdefault(meta[name], []).append(res[metric])
    all_scores = [res[metric] for res in per_task.values()]
    return {
        "metric": metric,
        "meta_tasks": {m: float(np.mean(v)) for m, v in by_meta.items()},
        "task_counts": {m: len(v) for m, v in by_meta.items()},
        "overall": float(np.mean(all_scores)) if all_scores else float("nan"),
    }


def evaluate_tasks(embedder, tasks: list[EvalTask], batch_size: int = 64, show_progress: bool = False) -> dict:
    """Score every local task; return ``{"tasks": {...}, "meta_tasks": {...}, "overall": ...}``."""
    encode = _plain_encoder(embedder, batch_size, show_progress)
    per_task = {t.name: score_local_task(encode, t)[0] for t in tasks}
    summary = aggregate(per_task, {t.name: t.meta_task for t in tasks})
    for t in tasks:
        per_task[t.name]["meta_task"] = t.meta_task
    return {"tasks": per_task, **summary}
