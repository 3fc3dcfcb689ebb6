"""Entry point: evaluate a model on a suite: check data -> encode unique items -> score -> outputs.

``evaluate`` writes, when given ``out_dir``: ``results.json`` (deterministic: the same for one or
many processes), ``run.json`` (timing, processes, encode counts), ``results.md``, ``report.html``
and ``runs/<task>.trec`` + ``runs/<task>.qrels`` (TREC run and the qrels it was scored against).
Embeddings are cached under ``out_dir/embeddings`` (or ``cache_dir``) by model fingerprint and item
content, so a rerun, or a run after an interruption, encodes only what is missing.
"""

from __future__ import annotations

import time
from pathlib import Path

from vlmbed.eval import digits, mbeir, mmeb, mmeb_v2, scenes, vidore
from vlmbed.eval.cache import EmbeddingCache, MemoryCache, model_fingerprint
from vlmbed.eval.check import CheckReport
from vlmbed.eval.distributed import device_for, eval_dist
from vlmbed.eval.encode import RunEncoder
from vlmbed.eval.suite import EvalTask, SuiteSpec, score_local_task, score_retrieval_task

SUITES: dict[str, SuiteSpec] = {"digits": digits.SUITE, "scenes": scenes.SUITE, "mmeb": mmeb.SUITE,
                                "vidore": vidore.SUITE, "mbeir": mbeir.SUITE, "mmeb-v2": mmeb_v2.SUITE}


def get_suite(suite: str) -> SuiteSpec:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; available: {', '.join(SUITES)}")
    return SUITES[suite]


def load_suite(suite: str, tasks: list[str] | None = None, max_queries: int | None = None, data_dir=None,
               options: dict | None = None):
    """The suite's tasks, read from ``data_dir`` (not needed for digits)."""
    return get_suite(suite).load(data_dir, tasks, max_queries, dict(options or {}))


def check_suite(suite: str, data_dir, tasks: list[str] | None = None, options: dict | None = None,
                images: bool = True) -> CheckReport:
    """Which files, images or datasets of ``suite`` are missing under ``data_dir`` or have the wrong row count."""
    spec = get_suite(suite)
    if spec.check is None:
        return CheckReport(suite, str(data_dir))
    return spec.check(data_dir, tasks, dict(options or {}), images)


def evaluate(
    model,
    suite: str = "digits",
    tasks: list[str] | None = None,
    out_dir: str | Path | None = None,
    max_queries: int | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
    data_dir=None,
    options: dict | None = None,
    cache_dir: str | Path | bool | None = None,
    fingerprint: str | None = None,
    distributed: bool | None = None,
    chunk_size: int = 512,
    run_depth: int = 100,
    check_data: bool = True,
) -> dict:
    """Evaluate an :class:`~vlmbed.models.embedder.Embedder` (or a model folder) on ``suite``.

    ``options`` are suite settings (MMEB: image_root, ties; ViDoRe: prompt, v1_format, qa_mode,
    clip_negative_scores, ties; M-BEIR: pool, instructions, seed, ties). ``cache_dir``: embedding cache
    folder (default ``out_dir/embeddings``; ``False`` keeps embeddings in memory only). ``distributed``:
    shard encoding over the processes of ``accelerate launch`` (None = auto, see
    :func:`~vlmbed.eval.distributed.eval_dist`). Returns the results dict (with a ``run`` entry).
    """
    started = time.time()
    spec = get_suite(suite)
    dist = eval_dist(distributed)
    options = dict(options or {})
    report = None
    if check_data and spec.check is not None and data_dir is not None:
        report = dist.broadcast(check_suite(suite, data_dir, tasks, options) if dist.is_main else None)
        report.raise_if_blocking()
    embedder = _embedder(model, dist)
    task_list = spec.load(data_dir, tasks, max_queries, options)
    fp = fingerprint or model_fingerprint(embedder)
    if cache_dir is None and out_dir is not None:
        cache_dir = Path(out_dir) / "embeddings"
    cache = EmbeddingCache(cache_dir, fp) if cache_dir else MemoryCache()
    encoder = RunEncoder(embedder, cache, dist, batch_size, chunk_size, show_progress)
    per_task, details = _score_all(encoder, task_list, spec, run_depth)
    results = None
    if dist.is_main:
        from vlmbed.eval.outputs import assemble, write_outputs

        results = assemble(spec, task_list, per_task, options, fp, model, data_dir, report, max_queries)
        run = {"seconds": round(time.time() - started, 3), "processes": dist.world,
               "encoding": encoder.stats.as_dict(), "cache_dir": str(cache_dir) if cache_dir else None}
        if out_dir is not None:
            write_outputs(Path(out_dir), results, run, task_list, details, spec, run_depth)
        results = {**results, "run": run}
    results = dist.broadcast(results)
    # the same results on every process; only the main process should print or write beside them
    return {**results, "run": {**results["run"], "is_main_process": dist.is_main}}


def _embedder(model, dist):
    if isinstance(model, (str, Path)):
        from vlmbed.models.embedder import Embedder

        embedder = Embedder.from_pretrained(model)
        return embedder.to(device_for(dist))
    return model


def _score_all(encoder: RunEncoder, task_list, spec: SuiteSpec, run_depth: int):
    per_task, details = {}, {}
    corpus_key, corpus_emb = None, None
    for task in task_list:
        if isinstance(task, EvalTask):
            res, detail = score_local_task(encoder, task)
        else:
            if corpus_key is not task.corpus:  # tasks sharing a pool encode and hold it once
                emb, where = encoder(task.corpus.items, "document", f"{task.name} corpus")
                corpus_key, corpus_emb = task.corpus, (emb, where)
            res, detail = score_retrieval_task(encoder, task, corpus_emb, run_depth)
        if res:
            res.update({"meta_task": task.meta_task, "split": task.split, "metric": task.headline,
                        "tie_policy": task.ties})
            res[spec.metric] = res[task.headline]
        per_task[task.name], details[task.name] = res, detail
    return per_task, details
