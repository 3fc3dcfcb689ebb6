"""Results assembly and files: results.json, run.json, results.md, report.html, TREC runs + qrels."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from vlmbed.eval.published import comparison
from vlmbed.eval.ranking import tie_ranks
from vlmbed.eval.suite import EvalTask, SuiteSpec, row_scores


def versions() -> dict:
    import torch
    import transformers

    import vlmbed

    return {"vlmbed": vlmbed.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def assemble(spec: SuiteSpec, task_list, per_task: dict, options: dict, fingerprint: str, model, data_dir,
             report, max_queries) -> dict:
    """The deterministic results dict (what results.json holds)."""
    scores = {name: res[spec.metric] for name, res in per_task.items()}
    results = {
        "suite": spec.name,
        "metric": spec.metric,
        "metric_definition": spec.metric_definition,
        "tie_policy": options.get("ties", spec.ties),
        "tasks": per_task,
        **spec.summarize(scores),
        "display": {"scale": spec.scale, "decimals": spec.decimals},
        "model": {"fingerprint": fingerprint, "path": str(model) if isinstance(model, (str, Path)) else None},
        "options": {**options, "max_queries": max_queries},
        "data": {"dir": str(data_dir) if data_dir is not None else None,
                 "warnings": [f"{p.task}: {p.message}" for p in report.problems] if report else []},
        "versions": versions(),
    }
    table = comparison(spec.published, results)
    if table is not None:
        if spec.name == "mbeir" and options.get("pool", "local") != "global":
            table["note"] = "published rows use the union (global) pool; this run used the local pools"
        results["published"] = table
    return results


def write_outputs(out: Path, results: dict, run: dict, task_list, details: dict, spec: SuiteSpec,
                  run_depth: int = 100) -> None:
    from vlmbed.eval.report import write_html
    from vlmbed.eval.table import markdown_report

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown_report(results) + "\n")
    runs = out / "runs"
    runs.mkdir(exist_ok=True)
    for task in task_list:
        detail = details.get(task.name)
        if detail is None:
            continue
        if isinstance(task, EvalTask):
            write_local_run(runs, task, detail)
        else:
            write_retrieval_run(runs, task, detail, depth=run_depth)
    write_html(out / "report.html", results)


def trec_id(s: str) -> str:
    """Ids in TREC files cannot hold whitespace: such characters are percent-encoded."""
    if not any(c.isspace() or c == "%" for c in s):
        return s
    return "".join(f"%{ord(c):02X}" if (c.isspace() or c == "%") else c for c in s)


def write_retrieval_run(runs: Path, task, detail: dict, depth: int = 100, tag: str = "vlmbed") -> None:
    """``<task>.trec`` (qid Q0 docid rank score tag, best first, ``depth`` per query) and ``<task>.qrels``
    (qid 0 docid grade)."""
    ids, idx, vals = task.corpus.ids, detail["idx"][:, :depth], detail["vals"][:, :depth]
    with open(runs / f"{task.name}.trec", "w") as fh:
        for i, qid in enumerate(task.query_ids):
            q = trec_id(qid)
            for rank, (j, s) in enumerate(zip(idx[i], vals[i], strict=True), start=1):
                fh.write(f"{q} Q0 {trec_id(ids[j])} {rank} {float(s)!r} {tag}\n")
    write_qrels(runs / f"{task.name}.qrels", {q: task.qrels[q] for q in task.query_ids if q in task.qrels})


def write_qrels(path: Path, qrels: dict[str, dict[str, int]]) -> None:
    with open(path, "w") as fh:
        for qid, judged in qrels.items():
            for did, grade in judged.items():
                fh.write(f"{trec_id(qid)} 0 {trec_id(did)} {int(grade)}\n")


def write_local_run(runs: Path, task: EvalTask, detail: dict, depth: int = 10, tag: str = "vlmbed") -> None:
    """MMEB-style rows as a TREC run: qid = row number, docid = candidate position (0 = the positive; 0..k-1 when a row has k positives).

    Ranks follow the task's tie policy (MMEB: first index). trec_eval breaks exact ties by docid
    descending instead, so under first_index a re-score can differ from ours only on exactly tied scores.
    """
    q_emb, q_where, c_emb, c_where = detail["q_emb"], detail["q_where"], detail["c_emb"], detail["c_where"]
    start = 0
    with open(runs / f"{task.name}.trec", "w") as fh:
        for r, (qi, n) in enumerate(zip(q_where, detail["lengths"], strict=True)):
            s = row_scores(q_emb[qi], c_emb, c_where[start : start + n])
            start += n
            order = np.lexsort((tie_ranks([str(j) for j in range(n)], task.ties), -s))[:depth]
            for rank, j in enumerate(order, start=1):
                fh.write(f"{r} Q0 {j} {rank} {float(s[j])!r} {tag}\n")
    counts = task.positive_counts() or [1] * len(detail["lengths"])  # the first k candidates are the positives
    write_qrels(runs / f"{task.name}.qrels", {str(r): {str(j): 1 for j in range(k)} for r, k in enumerate(counts)})
