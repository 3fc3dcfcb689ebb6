"""Exact resume: a run killed with SIGKILL mid-epoch continues with the same losses as an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from vlmbed.train.checkpoint import list_checkpoints, read_state

from .helpers import VLMBED, env, losses, run, tiny_recipe


@pytest.mark.timeout(400)
def test_sigkill_mid_epoch_then_resume_gives_the_same_losses(tiny_model_dir, tmp_path):
    a = tiny_recipe(tmp_path / "a.yaml", tiny_model_dir, gradcache_chunk=4)
    run([*VLMBED, "train", str(a), f"output_dir={tmp_path / 'a'}"])
    reference = losses(tmp_path / "a" / "00-cl")
    assert sorted(reference) == list(range(1, 11))

    stage = tmp_path / "b" / "00-cl"
    proc = subprocess.Popen([*VLMBED, "train", str(a), f"output_dir={tmp_path / 'b'}"], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 200
    while time.time() < deadline and proc.poll() is None:
        if (stage / "metrics.jsonl").exists() and max(losses(stage), default=0) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    ckpts = list_checkpoints(stage)
    assert ckpts, "no checkpoint was written before the kill"
    resumed_at = read_state(ckpts[-1])["step"]
    assert 2 <= resumed_at < 10 and resumed_at % 6 != 0  # mid-epoch (6 batches per epoch)
    assert not (stage / "model").exists()

    out = run([*VLMBED, "train", str(a), f"output_dir={tmp_path / 'b'}"])
    assert f"at step {resumed_at}" in out.stdout + out.stderr
    resumed = losses(stage)
    assert sorted(resumed) == list(range(1, 11))
    for step in range(resumed_at + 1, 11):
        assert abs(resumed[step] - reference[step]) <= 1e-5 * abs(reference[step]) + 1e-7, (step, resumed[step])
    state = read_state(list_checkpoints(stage)[-1])
    assert state["step"] == 10 and state["batches_seen"] == 10 and state["gradcache_chunk"] == 4
    assert len(list_checkpoints(stage)) == 2  # keep_checkpoints
