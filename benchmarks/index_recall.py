"""Recall of vlmbed's approximate index against exact search, and query latency.

100k random unit vectors (d=128, the tiny model's width) drawn from a 1,000-component Gaussian mixture
(unit-variance centres, per-dimension noise 1.5, so clusters overlap and the nearest neighbours of a
query often lie in other clusters; mean top-1 cosine about 0.45),
because embeddings of real corpora are clustered; isotropic noise has no neighbourhood structure for
any approximate index to use. 1,000 fresh queries from the same distribution. The approximate index
is the one ``vlmbed index build`` picks for a corpus this size (``kind="auto"``: IVF-Flat) with its
default parameters; ``--kind hnsw`` measures the graph index instead.

Prints one JSON line: ``recall_at_10`` (mean overlap of the approximate top 10 with the exact top 10),
single-query latency (p50, p99) of approximate and exact search, and build time.

    python benchmarks/index_recall.py [--n 100000] [--dim 128] [--kind auto|ivf|hnsw]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from vlmbed.index.vectors import VectorIndex


def mixture(n: int, dim: int, centers: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    labels = rng.integers(0, len(centers), n)
    x = centers[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def single_query_latency_ms(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[float, float]:
    """One query per call, on one OpenMP thread (faiss's thread start-up dominates single queries)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None, :], k)
        times.append((time.perf_counter() - start) * 1000)
    faiss.omp_set_num_threads(threads)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kind", default="auto", choices=["auto", "ivf", "hnsw"])
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=1.5, help="per-dimension noise around unit-variance centres")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    k = 10
    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    corpus = mixture(args.n, args.dim, centers, args.noise, rng)
    queries = mixture(args.queries, args.dim, centers, args.noise, rng)

    exact = VectorIndex.build(corpus, kind="flat")
    exact_scores, truth = exact.search(queries, k)
    start = time.perf_counter()
    approx = VectorIndex.build(corpus, kind=args.kind)
    build_s = time.perf_counter() - start
    _, found = approx.search(queries, k)
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))
    p50, p99 = single_query_latency_ms(approx, queries, k)
    exact_p50, _ = single_query_latency_ms(exact, queries[:200], k)
    params = {"nlist": approx.params.nlist, "nprobe": approx.params.nprobe} if approx.kind == "ivf" else {
        "M": approx.params.hnsw_m, "ef_search": approx.params.ef_search}
    print(json.dumps({
        "benchmark": "index_recall", "n": args.n, "dim": args.dim, "queries": args.queries, "k": k,
        "index": approx.kind, "params": params, "recall_at_10": round(recall, 4),
        "query_p50_ms": round(p50, 3), "query_p99_ms": round(p99, 3), "exact_query_p50_ms": round(exact_p50, 3),
        "build_s": round(build_s, 2), "mean_top1_similarity": round(float(exact_scores[:, 0].mean()), 3),
    }))


if __name__ == "__main__":
    main()
