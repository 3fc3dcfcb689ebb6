"""GradCache composes with FSDP2: two CPU processes (gloo), the model sharded per decoder layer and vision
block, mixed text and image chunks, gathered negatives, equal the full batch on one process.

accelerate runs FSDP and DeepSpeed only on GPUs, so this drives ``fully_shard`` directly with the same
GradCache, gather and no-sync pieces that the training loop hands to accelerate.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmbed.config import InfoNCEConfig
from vlmbed.train.gradcache import full_batch_step
from vlmbed.train.loop import encoder_fn
from vlmbed.train.losses import CONTRASTIVE_ROLES, contrastive_loss

from .helpers import free_port

WORKER = Path(__file__).parent / "fsdp_worker.py"


@pytest.mark.timeout(300)
def test_fsdp2_gradcache_two_processes_equal_one_process(tiny_model_dir, tmp_path, f32_embedder):
    sys.path.insert(0, str(WORKER.parent))
    import dist_worker
    import fsdp_worker

    out = tmp_path / "fsdp.pt"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tiny_model_dir), str(out)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=280)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    sharded = torch.load(out)

    batch = dist_worker.batch_of(f32_embedder, dist_worker.examples())
    f32_embedder.zero_grad(set_to_none=True)
    ref = full_batch_step(encoder_fn(f32_embedder), {r: batch.get(r) for r in CONTRASTIVE_ROLES},
                          lambda reps: contrastive_loss(reps, batch, [InfoNCEConfig(temperature=0.05)]),
                          lambda loss, last: loss.backward())
    grads = {n: p.grad for n, p in f32_embedder.named_parameters() if p.grad is not None}
    for name in fsdp_worker.CASES:
        loss, got = sharded[name]
        assert abs(loss - float(ref.parts["loss"])) < 1e-5, name
        assert set(got) == set(grads), (name, set(grads) ^ set(got))
        for key, g in grads.items():
            assert float((g - got[key]).abs().max()) <= 1e-5 * max(1.0, float(g.abs().max())), (name, key)


def _reference(embedder, batch):
    embedder.zero_grad(set_to_none=True)
    ref = full_batch_step(encoder_fn(embedder), {r: batch.get(r) for r in CONTRASTIVE_ROLES},
                          lambda reps: contrastive_loss(reps, batch, [InfoNCEConfig(temperature=0.05)]),
                          lambda loss, last: loss.backward())
    return float(ref.parts["loss"]), {n: p.grad for n, p in embedder.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.timeout(400)
def test_deepspeed_zero_gradcache_two_processes_equal_one_process(tiny_model_dir, tmp_path, f32_embedder, stage):
    """DeepSpeed on CPU (opt-in: needs the deepspeed package, and compiles a small CPU op on first use)."""
    pytest.importorskip("deepspeed")
    sys.path.insert(0, str(Path(__file__).parent))
    import dist_worker
    import ds_worker

    out = tmp_path / "ds.pt"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    worker = Path(__file__).parent / "ds_worker.py"
    procs = [subprocess.Popen([sys.executable, str(worker), str(tiny_model_dir), str(out), str(stage)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=380)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    got_all = torch.load(out)
    loss, grads = _reference(f32_embedder, dist_worker.batch_of(f32_embedder, dist_worker.examples()))
    for name in ds_worker.CASES:
        got_loss, got = got_all[name]
        assert abs(got_loss - loss) < 1e-5, name
        assert set(got) == set(grads), (name, set(grads) ^ set(got))
        for key, g in grads.items():
            assert float((g - got[key]).abs().max()) <= 1e-5 * max(1.0, float(g.abs().max())), (name, key)
