"""The training benchmarks print one JSON line whose numbers meet the documented bars (opt-in: -m slow)."""

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
def test_token_budget_pads_like_sorted_fixed_batches_and_bounds_the_largest():
    """Against the fair baseline (task-homogeneous fixed batches sorted by length) the token budget wastes
    no more padding (measured: 0.108 vs 0.115) while its largest batch stays within the budget, less
    than half of the baseline's largest (16k vs 42k tokens); random fixed batches waste far more (0.72)."""
    r = _run(str(BENCH / "token_budget.py"), "--examples", "2000")
    assert r["padding_waste_budget"] <= 1.05 * r["padding_waste_fixed_sorted"]
    assert r["max_batch_tokens_budget"] <= r["max_tokens"] < r["max_batch_tokens_fixed_sorted"] / 2
    assert r["padding_waste_fixed_sorted"] < r["padding_waste_fixed_random"] / 3
    assert r["examples_used_budget"] >= 0.95 * r["examples"]
