"""The M-BEIR suite (UniIR): 16 test tasks, UniIR "Recall@k" (= hit@k), local or union pool.

Each query file is ranked against its local candidate pool (default) or the 5.6M union pool
(``pool="global"``; no modality filtering, so wrong-modality hits count as misses, as in UniIR).
Relevant = qrels lines with relevance > 0. Headline: R@5, except R@10 for Fashion200K (both tasks)
and FashionIQ; benchmark score = plain mean over the 16 rows; groups S->S / S->M / M->S / M->M as
in the MuCo and LamRA tables (single- vs multi-modal query -> candidate). Every query of the file
counts (a query without qrels scores 0). UniIR prints means rounded to 4 decimals.

Options: ``pool`` (local | global), ``instructions`` (first | random | none), ``seed``, ``ties``.
"""

from __future__ import annotations

from pathlib import Path

from vlmbed.eval.aggregate import summarize
from vlmbed.eval.check import CheckReport, check_paths, check_row_count
from vlmbed.eval.suite import Corpus, RetrievalTask, SuiteSpec

# stem: (task id, local pool stem, recall ks, headline k, group, #queries, local pool size)
MBEIR_TASKS: dict[str, tuple] = {
    "visualnews_task0": (0, "visualnews_task0", (1, 5, 10), 5, "S->S", 19995, 542246),
    "mscoco_task0": (0, "mscoco_task0_test", (1, 5, 10), 5, "S->S", 24809, 5000),
    "fashion200k_task0": (0, "fashion200k_task0", (10, 20, 50), 10, "S->S", 1719, 201824),
    "webqa_task1": (1, "webqa_task1", (1, 5, 10), 5, "S->S", 2455, 544457),
    "edis_task2": (2, "edis_task2", (1, 5, 10), 5, "S->M", 3241, 1047067),
    "webqa_task2": (2, "webqa_task2", (1, 5, 10), 5, "S->M", 2511, 403196),
    "visualnews_task3": (3, "visualnews_task3", (1, 5, 10), 5, "S->S", 20000, 537568),
    "mscoco_task3": (3, "mscoco_task3_test", (1, 5, 10), 5, "S->S", 5000, 24809),
    "fashion200k_task3": (3, "fashion200k_task3", (10, 20, 50), 10, "S->S", 4889, 61707),
    "nights_task4": (4, "nights_task4", (1, 5, 10), 5, "S->S", 2120, 40038),
    "oven_task6": (6, "oven_task6", (1, 5, 10), 5, "M->S", 50004, 676667),
    "infoseek_task6": (6, "infoseek_task6", (1, 5, 10), 5, "M->S", 11323, 611651),
    "fashioniq_task7": (7, "fashioniq_task7", (10, 20, 50), 10, "M->S", 6003, 74381),
    "cirr_task7": (7, "cirr_task7", (1, 5, 10), 5, "M->S", 4170, 21551),
    "oven_task8": (8, "oven_task8", (1, 5, 10), 5, "M->M", 14741, 335135),
    "infoseek_task8": (8, "infoseek_task8", (1, 5, 10), 5, "M->M", 17593, 481782),
}
UNION_POOL_SIZE = 5_609_079
HEADLINE = "uniir_recall@k"


def paths(root, stem: str, pool: str = "local") -> dict[str, Path]:
    root = Path(root)
    pool_file = (root / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl" if pool == "global"
                 else root / "cand_pool" / "local" / f"mbeir_{MBEIR_TASKS[stem][1]}_cand_pool.jsonl")
    return {
        "queries": root / "query" / "test" / f"mbeir_{stem}_test.jsonl",
        "pool": pool_file,
        "qrels": root / "qrels" / "test" / f"mbeir_{stem}_test_qrels.txt",
        "instructions": root / "instructions" / "query_instructions.tsv",
    }


def task_names(tasks) -> list[str]:
    names = list(tasks) if tasks else list(MBEIR_TASKS)
    unknown = [t for t in names if t not in MBEIR_TASKS]
    if unknown:
        raise ValueError(f"unknown M-BEIR task(s) {unknown}; known: {', '.join(MBEIR_TASKS)}")
    return names


def metrics_for(stem: str) -> tuple[str, ...]:
    ks = MBEIR_TASKS[stem][2]
    return tuple(f"uniir_recall@{k}" for k in ks) + tuple(f"recall@{k}" for k in ks) + ("mrr@10", "ndcg@10")


def _pool(path: Path, root: Path, cache: dict) -> tuple[Corpus, dict[str, str]]:
    """Read a candidate pool once per run (the union pool is shared by all 16 tasks)."""
    from vlmbed.data.mbeir import candidate_item, read_jsonl

    if path not in cache:
        rows = read_jsonl(path)
        items = [candidate_item(r, root, f"{path.name}:{i + 1}") for i, r in enumerate(rows)]
        ids = [r["did"] for r in rows]
        cache[path] = (Corpus(f"mbeir:{path.name}", ids, items), {r["did"]: r.get("modality", "") for r in rows})
    return cache[path]


def load(data_dir, tasks=None, max_queries=None, options: dict | None = None) -> list[RetrievalTask]:
    from vlmbed.data.mbeir import InstructionPicker, query_item, read_instructions, read_jsonl, read_qrels

    options = options or {}
    if data_dir is None:
        raise ValueError("the mbeir suite needs --data-dir (the TIGER-Lab/M-BEIR folder with mbeir_images/)")
    root = Path(data_dir)
    image_root = Path(options.get("image_root", root))
    pool = options.get("pool", "local")
    if pool not in ("local", "global"):
        raise ValueError(f"unknown M-BEIR pool {pool!r}; choose local or global")
    mode = options.get("instructions", "first")
    table = read_instructions(paths(root, "mscoco_task0")["instructions"]) if mode != "none" else {}
    pools: dict = {}
    out = []
    for stem in task_names(tasks):
        p = paths(root, stem, pool)
        corpus, modality = _pool(p["pool"], image_root, pools)
        pick = InstructionPicker(table, mode=mode, seed=int(options.get("seed", 2023)))
        rows = read_jsonl(p["queries"], max_rows=max_queries)
        queries = [query_item(r, image_root, modality, pick, f"{p['queries'].name}:{i + 1}") for i, r in enumerate(rows)]
        qrels, task_of = read_qrels(p["qrels"])
        tid, _, ks, head, group, *_ = MBEIR_TASKS[stem]
        out.append(RetrievalTask(
            name=stem, meta_task=group, query_ids=[r["qid"] for r in rows], queries=queries, corpus=corpus,
            qrels=qrels, metrics=metrics_for(stem), headline=f"uniir_recall@{head}", ties=options.get("ties", "trec"),
            unjudged="zero", extra={"task_id": tid, "pool": pool, "instructions": mode, "pool_file": p["pool"].name},
        ))
    return out


def check(data_dir, tasks=None, options: dict | None = None, images: bool = True) -> CheckReport:
    from vlmbed.data.mbeir import read_jsonl

    options = options or {}
    root = Path(data_dir)
    image_root = Path(options.get("image_root", root))
    pool = options.get("pool", "local")
    report = CheckReport("mbeir", str(data_dir))
    names = task_names(tasks)
    if options.get("instructions", "first") != "none" and not paths(root, names[0])["instructions"].exists():
        report.add("instructions", "missing_file", f"{paths(root, names[0])['instructions']} not found")
    seen_pools: dict[Path, int] = {}
    for stem in names:
        p = paths(root, stem, pool)
        absent = [str(p[k]) for k in ("queries", "pool", "qrels") if not p[k].exists()]
        if absent:
            report.add(stem, "missing_file", ", ".join(absent))
            continue
        queries = read_jsonl(p["queries"])
        check_row_count(report, stem, p["queries"].name, len(queries), MBEIR_TASKS[stem][5])
        image_paths = [q["query_img_path"] for q in queries if q.get("query_img_path")]
        if p["pool"] not in seen_pools:
            rows = read_jsonl(p["pool"])
            seen_pools[p["pool"]] = len(rows)
            expected = UNION_POOL_SIZE if pool == "global" else MBEIR_TASKS[stem][6]
            check_row_count(report, stem, p["pool"].name, len(rows), expected)
            image_paths += [r["img_path"] for r in rows if r.get("img_path")]
        missing = check_paths(report, stem, image_root, image_paths) if images else None
        report.tasks[stem] = {"queries": len(queries), "pool": p["pool"].name, "pool_size": seen_pools[p["pool"]],
                              "missing_images": missing}
    return report


def summarize_mbeir(scores: dict[str, float]) -> dict:
    meta = {t: MBEIR_TASKS[t][4] for t in scores if t in MBEIR_TASKS}
    return summarize(scores, meta, expected=MBEIR_TASKS)


SUITE = SuiteSpec(
    name="mbeir",
    metric=HEADLINE,
    metric_definition="uniir_recall@k: UniIR's Recall@k, which is hit@k (1 if any relevant candidate is in the top k; "
                      "k = 5, or 10 for fashion200k_task0/task3 and fashioniq_task7); trec recall@k is reported "
                      "separately as recall@k. Ties by candidate id descending (trec_eval). Overall = mean over tasks.",
    ties="trec",
    load=load,
    check=check,
    summarize=summarize_mbeir,
    scale=100.0,
    decimals=2,
    published="mbeir",
)
