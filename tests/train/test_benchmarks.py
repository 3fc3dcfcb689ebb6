"""The two training benchmarks print one JSON line that meets the issue's bars (opt-in: -m slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(*args: str) -> dict:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True, timeout=900).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    return json.loads(lines[0])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gradcache_memory_stays_within_1_5x_of_batch_16():
    r = _run(str(BENCH / "gradcache_memory.py"))
    assert r["peak_mb_b256_gradcache"] <= 1.5 * r["peak_mb_b16"] < r["peak_mb_b256_full"]
    assert abs(r["loss_b256_full"] - r["loss_b256_gradcache"]) < 1e-5


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_token_budget_wastes_under_a_third_of_fixed_batches():
    r = _run(str(BENCH / "token_budget.py"), "--examples", "2000")
    assert r["padding_waste_budget"] < r["padding_waste_fixed"] / 3
