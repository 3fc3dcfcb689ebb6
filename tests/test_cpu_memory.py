"""CPU allocator settings (vlmbed.models.cpu_memory): freed activation memory stays in the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, resource, sys, torch
applied = None
if sys.argv[1] == "keep":
    from vlmbed.models.cpu_memory import keep_freed_memory
    applied = keep_freed_memory()
    assert keep_freed_memory() == applied  # once per process, same answer
faults = []
for r in range(4):  # a training step's pattern: many blocks of 1-4 MiB live together, then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    xs = [torch.ones((1 + (i + r) % 4) * 256 * 1024) for i in range(64)]
    del xs
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")


def _run(mode: str, **env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "VLMBED_CPU_MALLOC"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                         env={**clean, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _run("default"), _run("keep")
    assert kept["applied"] is True
    # the second round: glibc by default has given the first round's 160 MiB back and faults it in again
    assert default["faults"][1] > 20_000, default
    assert kept["faults"][1] < default["faults"][1] / 5, (kept, default)


@glibc
@pytest.mark.parametrize("env", [{"VLMBED_CPU_MALLOC": "default"}, {"MALLOC_TOP_PAD_": "0"}])
def test_user_settings_win(env):
    assert _run("keep", **env)["applied"] is False


def test_preloaded_allocator_is_left_alone(monkeypatch):
    from vlmbed.models import cpu_memory

    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert cpu_memory._apply() is False
    monkeypatch.setenv("LD_PRELOAD", "")
    monkeypatch.setenv("VLMBED_CPU_MALLOC", "default")
    assert cpu_memory._apply() is False
