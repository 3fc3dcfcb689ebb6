"""Exact top-k over score matrices under an explicit tie policy (no numpy quicksort anywhere).

The order is total: score descending, then a per-document *tie rank* ascending. ``tie_ranks`` builds
that rank for a policy (trec: document id descending byte-wise; first_index: given order), so the
top-k here equals trec_eval's ranking of the same run, exact ties included.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlmbed.eval.metrics import check_ties


def tie_ranks(doc_ids: Sequence[str], ties: str) -> np.ndarray:
    """(N,) int64: position of each document among equal scores (smaller comes first)."""
    check_ties(ties)
    n = len(doc_ids)
    if ties == "first_index":
        return np.arange(n, dtype=np.int64)
    order = sorted(range(n), key=lambda i: doc_ids[i].encode(), reverse=True)
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.asarray(order, dtype=np.int64)] = np.arange(n, dtype=np.int64)
    return ranks


def _sort_candidates(scores: np.ndarray, cand: np.ndarray, tie: np.ndarray, k: int) -> np.ndarray:
    """Sort candidate column indices ``cand`` (B, m) of ``scores`` by (score desc, tie asc); keep k."""
    vals = np.take_along_axis(scores, cand, axis=1)
    order = np.lexsort((tie[cand], -vals), axis=-1)  # last key is primary
    return np.take_along_axis(cand, order, axis=1)[:, :k]


def topk(scores: np.ndarray, k: int | None, tie: np.ndarray) -> np.ndarray:
    """Indices (B, k) of the k best columns of ``scores`` (B, N), best first, ties by ``tie`` (N,).

    ``k=None`` ranks every column. Exact: rows where the k-th score is tied beyond the cut are
    resolved by the tie rank, never by partition order.
    """
    b, n = scores.shape
    k = n if k is None else min(k, n)
    if k == 0 or b == 0:
        return np.zeros((b, 0), dtype=np.int64)
    if k * 4 >= n:  # small corpora: sort everything
        full = np.broadcast_to(np.arange(n, dtype=np.int64), (b, n))
        return _sort_candidates(scores, full, tie, k)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (B, k) the k largest, in any order
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)  # (B,)
    n_ge = (scores >= kth[:, None]).sum(axis=1)  # (B,)
    out = _sort_candidates(scores, part, tie, k)
    for r in np.flatnonzero(n_ge > k):  # the k-th score is shared by documents beyond the cut
        cand = np.flatnonzero(scores[r] >= kth[r])[None, :]
        out[r] = _sort_candidates(scores[r : r + 1], cand, tie, k)[0]
    return out


def topk_blocked(
    queries: np.ndarray,
    docs: np.ndarray,
    k: int | None,
    tie: np.ndarray,
    query_block: int = 256,
    doc_block: int = 262_144,
    transform=None,
    doc_where: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k documents for every query by dot product, in blocks (memory bounded for large pools).

    ``doc_where`` (N,) maps document positions to rows of ``docs`` (unique embeddings): each distinct
    row is multiplied once per block, so identical documents get bit-identical scores and tie exactly
    (separate products of equal vectors may differ in the last bit). Returns indices (Q, k) into the
    N positions and their float32 scores. ``transform(scores, doc_offset)`` may edit a block's scores
    in place before ranking (e.g. vidore-benchmark's clipping at 0). Merging block winners under the
    same total order is exact.
    """
    if doc_where is None:
        doc_where = np.arange(docs.shape[0])
    n = len(doc_where)
    k_eff = n if k is None else min(k, n)
    idx_out = np.zeros((queries.shape[0], k_eff), dtype=np.int64)
    val_out = np.zeros((queries.shape[0], k_eff), dtype=np.float32)
    for qs in range(0, queries.shape[0], query_block):
        q = queries[qs : qs + query_block]
        best_idx, best_val = [], []
        for ds in range(0, n, doc_block):
            rows, inverse = np.unique(doc_where[ds : ds + doc_block], return_inverse=True)
            s = (q @ docs[rows].T)[:, inverse.reshape(-1)]  # (b, block) float32
            if transform is not None:
                transform(s, ds)
            local = topk(s, k_eff, tie[ds : ds + doc_block])
            best_idx.append(local + ds)
            best_val.append(np.take_along_axis(s, local, axis=1))
        cand = np.concatenate(best_idx, axis=1)
        vals = np.concatenate(best_val, axis=1)
        if len(best_idx) > 1:
            order = np.lexsort((tie[cand], -vals), axis=-1)[:, :k_eff]
            cand = np.take_along_axis(cand, order, axis=1)
            vals = np.take_along_axis(vals, order, axis=1)
        idx_out[qs : qs + len(q)] = cand
        val_out[qs : qs + len(q)] = vals
    return idx_out, val_out
