"""The GPU benchmark's code path runs end to end (its smoke scale, on the CPU): it is not run elsewhere until a
GPU is lent, so this keeps it from rotting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_step_smoke_scale_runs_and_reports():
    out = subprocess.run([sys.executable, "benchmarks/gpu_step.py", "--scale", "smoke", "--cpu", "--steps", "2",
                          "--warmup", "1", "--encode-items", "8"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["scale"] == "smoke" and result["device"] == "cpu" and result["step_s"] > 0
    assert 0 < result["mfu"] < 1 and result["tokens_per_step"] > 0
    assert min(result[f"encode_items_per_s_{k}"] for k in ("text", "image", "both")) > 0
