"""Evaluation under ``accelerate launch`` with 2 CPU processes writes the same results as one process.

Scores are float32 dot products whose last bits depend on how the work is split (BLAS blocking, thread
counts), so results and TREC runs are parsed and compared with a tolerance, never as printed text: every
number agrees within ``TOL``, and two documents may trade ranks only where their scores tie within ``TOL``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vlmbed.eval import evaluate

WORKER = textwrap.dedent("""
    import json, sys
    from vlmbed.eval import evaluate

    model, out = sys.argv[1], sys.argv[2]
    for suite, data, tasks in json.loads(sys.argv[3]):
        res = evaluate(model, suite=suite, tasks=tasks, data_dir=data, out_dir=f"{out}/{suite}", batch_size=3,
                       chunk_size=5)
        assert res["run"]["processes"] == 2, res["run"]
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TOL = 1e-5


def assert_same_json(a, b, where: str = "results") -> None:
    """Equal structure and values; floats equal within ``TOL`` (absolute and relative)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), (where, a, b)
        assert math.isclose(a, b, rel_tol=TOL, abs_tol=TOL), (where, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for key in a:
            assert_same_json(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_json(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def read_run(path: Path) -> dict[str, list[tuple[str, float]]]:
    """TREC run file -> {qid: [(docid, score), ...] in rank order}; ranks are checked to be 1..n."""
    run: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        qid, _, doc, rank, score, _ = line.split()
        ranked = run.setdefault(qid, [])
        assert int(rank) == len(ranked) + 1, (path.name, line)
        ranked.append((doc, float(score)))
    return run


def assert_same_run(one: Path, two: Path) -> None:
    """Same queries and depth; the r-th best score agrees within TOL at every rank r; a document in both
    runs has the same score within TOL and keeps its rank unless tied within TOL with the rank it moved to;
    a document in only one run (a swap across the depth cut) ties with the last score."""
    a, b = read_run(one), read_run(two)
    assert a.keys() == b.keys(), one.name
    for qid, ranked_a in a.items():
        ranked_b = b[qid]
        assert len(ranked_a) == len(ranked_b), (one.name, qid)
        scores_a, scores_b = [s for _, s in ranked_a], [s for _, s in ranked_b]
        assert all(abs(x - y) <= TOL for x, y in zip(scores_a, scores_b, strict=True)), (one.name, qid)
        rank_a = {d: r for r, (d, _) in enumerate(ranked_a)}
        rank_b = {d: r for r, (d, _) in enumerate(ranked_b)}
        for doc, ra in rank_a.items():
            if doc not in rank_b:
                assert abs(scores_a[ra] - scores_a[-1]) <= 2 * TOL, (one.name, qid, doc)
                continue
            rb = rank_b[doc]
            assert abs(scores_a[ra] - scores_b[rb]) <= TOL, (one.name, qid, doc)
            assert ra == rb or abs(scores_a[ra] - scores_a[rb]) <= 2 * TOL, (one.name, qid, doc, ra, rb)
        for doc, rb in rank_b.items():
            if doc not in rank_a:
                assert abs(scores_b[rb] - scores_b[-1]) <= 2 * TOL, (two.name, qid, doc)


def test_run_comparison_tolerates_tied_swaps_and_nothing_else(tmp_path):
    base = ["q1 Q0 d1 1 0.9 t", "q1 Q0 d2 2 0.5 t", "q1 Q0 d3 3 0.5 t", "q1 Q0 d4 4 0.1 t"]
    cases = {
        "same": (base, True),
        "last digit": ([base[0].replace("0.9", "0.90000003"), *base[1:]], True),
        "tied swap": ([base[0], "q1 Q0 d3 2 0.5000001 t", "q1 Q0 d2 3 0.5 t", base[3]], True),
        "untied swap": (["q1 Q0 d2 1 0.9 t", "q1 Q0 d1 2 0.5 t", *base[2:]], False),
        "score moved": ([base[0], "q1 Q0 d2 2 0.51 t", *base[2:]], False),
        "tie at the depth cut": ([*base[:3], "q1 Q0 d9 4 0.1 t"], True),
        "other doc": ([base[0], "q1 Q0 d9 2 0.5 t", *base[2:]], False),
        "shorter": (base[:3], False),
    }
    (tmp_path / "a.trec").write_text("\n".join(base) + "\n")
    for name, (lines, same) in cases.items():
        (tmp_path / "b.trec").write_text("\n".join(lines) + "\n")
        try:
            assert_same_run(tmp_path / "a.trec", tmp_path / "b.trec")
        except AssertionError:
            assert not same, name
        else:
            assert same, name
    assert_same_json({"x": [0.25, {"y": 1}]}, {"x": [0.25 + 1e-7, {"y": 1}]})
    for other in ({"x": [0.26, {"y": 1}]}, {"x": [0.25, {"y": 2}]}, {"x": [0.25]}, {"z": [0.25, {"y": 1}]}):
        with pytest.raises(AssertionError):
            assert_same_json({"x": [0.25, {"y": 1}]}, other)


def test_two_processes_give_the_same_results_json(tiny_model_dir, mmeb_dir, vidore_dir, tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    if not accelerate.exists() and shutil.which("accelerate") is None:
        pytest.skip("accelerate launcher not installed")
    jobs = [("mmeb", str(mmeb_dir), ["OK-VQA", "MSCOCO_t2i"]), ("vidore", str(vidore_dir), ["TAT-DQA", "ArxivQA"])]
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    cmd = [str(accelerate if accelerate.exists() else "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(script), str(tiny_model_dir), str(tmp_path / "two"),
           json.dumps(jobs)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for suite, data, tasks in jobs:
        one = tmp_path / "one" / suite
        evaluate(str(tiny_model_dir), suite=suite, tasks=tasks, data_dir=data, out_dir=one, batch_size=3,
                 distributed=False)
        two = tmp_path / "two" / suite
        assert_same_json(json.loads((two / "results.json").read_text()), json.loads((one / "results.json").read_text()),
                         suite)
        run_two = json.loads((two / "run.json").read_text())
        assert run_two["processes"] == 2
        assert run_two["encoding"]["encoded"] == json.loads((one / "run.json").read_text())["encoding"]["encoded"]
        trecs = sorted((one / "runs").glob("*.trec"))
        assert [t.name for t in trecs] == sorted(t.name for t in (two / "runs").glob("*.trec")) and trecs
        for trec in trecs:
            assert_same_run(trec, two / "runs" / trec.name)
