"""Cross-device negatives: two CPU processes (gloo) equal one process on the concatenated batch.

Each case runs one forward/backward in two processes (accelerate + DDP, gradient-carrying gather,
with and without GradCache, even and uneven shares, symmetric loss) and compares the loss and the
DDP-averaged gradients with one process on all examples.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmbed import dist

WORKER = Path(__file__).parent / "train" / "dist_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_helpers_are_identity():
    x = torch.randn(3, 4, requires_grad=True)
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_main_process()
    assert dist.all_gather_with_grad(x) is x and dist.gather_sizes(3) == [3]
    assert dist.rank_offset([3, 5, 2], 2) == 8 and dist.max_across([1, 2]) == [1, 2]
    assert dist.any_true(True) and not dist.any_true(False)


@pytest.mark.timeout(300)
def test_two_processes_equal_one_process_on_the_concatenated_batch(tiny_model_dir, tmp_path):
    sys.path.insert(0, str(WORKER.parent))
    import dist_worker

    out = tmp_path / "two.pt"
    port = free_port()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tiny_model_dir), str(out)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=280)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    two = torch.load(out)

    from vlmbed.models.embedder import Embedder
    from vlmbed.train.loop import make_accelerator

    class Cfg:
        mixed_precision = "no"

    torch.manual_seed(0)
    embedder = Embedder.from_pretrained(tiny_model_dir, dtype=torch.float32, pooling="mean",
                                        attention="bidirectional", append_eos=False)
    accelerator = make_accelerator(Cfg)
    model = accelerator.prepare(embedder)
    exs = dist_worker.examples()
    for name, (_, objective, _) in dist_worker.CASES.items():
        loss, grads = dist_worker.step(model, embedder, accelerator, dist_worker.batch_of(embedder, exs),
                                       objective, None)
        loss2, grads2 = two[name]
        assert abs(loss - loss2) < 1e-5, (name, loss, loss2)
        assert set(grads) == set(grads2), name
        for key in grads:
            scale = max(1.0, float(grads[key].abs().max()))
            assert float((grads[key] - grads2[key]).abs().max()) <= 1e-5 * scale, (name, key)
