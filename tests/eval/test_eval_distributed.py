"""Evaluation under ``accelerate launch`` with 2 CPU processes writes the same results.json as one process."""

from __future__ import annotations

import json
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
        assert (two / "results.json").read_text() == (one / "results.json").read_text(), suite
        run_two = json.loads((two / "run.json").read_text())
        assert run_two["processes"] == 2
        assert run_two["encoding"]["encoded"] == json.loads((one / "run.json").read_text())["encoding"]["encoded"]
        for trec in (one / "runs").glob("*.trec"):
            assert (two / "runs" / trec.name).read_text() == trec.read_text()
