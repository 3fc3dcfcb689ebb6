"""One process of the two-process equivalence test (run by tests/test_dist.py, not collected by pytest).

    python dist_worker.py MODEL_DIR OUT_FILE   (with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)

Builds the same examples on every process, takes this process's share, runs one training step's
forward and backward through the real loop pieces (accelerate + DDP, GradCache, gathered negatives)
and, on rank 0, saves the loss and the DDP-averaged gradients of every configuration.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

CASES = {  # name: (rows on rank 0, objective kwargs, GradCache chunk)
    "even_full": (6, {}, None),
    "even_gradcache": (6, {}, 2),
    "uneven_gradcache": (4, {}, 3),
    "symmetric_gradcache": (6, {"symmetric": True}, 4),
}


def examples():
    from vlmbed.data.digits import build_digits

    exs = build_digits("train", tasks=["digits_cls", "digits_t2i", "digits_i2t"], max_per_task=4)
    return [ex for t in ("digits_cls", "digits_t2i", "digits_i2t") for ex in exs[t]]  # 12 examples


def batch_of(embedder, exs):
    from vlmbed.data.collate import ContrastiveCollator
    from vlmbed.train.data import TrainCollator

    return TrainCollator(ContrastiveCollator(embedder.encoder, 2))([(0, 0, ex) for ex in exs])


def step(model, embedder, accelerator, batch, objective, chunk):
    from vlmbed.config import InfoNCEConfig
    from vlmbed.train.gradcache import GradCache, full_batch_step
    from vlmbed.train.loop import _sync_context, encoder_fn
    from vlmbed.train.losses import CONTRASTIVE_ROLES, contrastive_loss, global_mean_parts

    objectives = [InfoNCEConfig(temperature=0.05, **objective)]
    roles = {r: batch.get(r) for r in CONTRASTIVE_ROLES}

    def loss_fn(reps):
        return contrastive_loss(reps, batch, objectives, gather=True)

    def backward(loss, last):
        accelerator.backward(loss)

    embedder.zero_grad(set_to_none=True)
    sync = _sync_context(accelerator, model)
    run = GradCache(chunk).step if chunk else full_batch_step
    out = run(encoder_fn(model), roles, loss_fn, backward, sync)
    grads = {n: p.grad.detach().clone() for n, p in embedder.named_parameters() if p.grad is not None}
    return global_mean_parts(out.parts)["loss"], grads


def main() -> None:
    from vlmbed.models.embedder import Embedder
    from vlmbed.train.loop import make_accelerator

    model_dir, out_file = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    embedder = Embedder.from_pretrained(model_dir, dtype=torch.float32, pooling="mean", attention="bidirectional",
                                        append_eos=False)

    class Cfg:
        mixed_precision = "no"

    accelerator = make_accelerator(Cfg)
    assert accelerator.num_processes == 2, accelerator.state
    model = accelerator.prepare(embedder)
    exs, rank = examples(), accelerator.process_index
    results = {}
    for name, (rows0, objective, chunk) in CASES.items():
        mine = exs[:rows0] if rank == 0 else exs[rows0:]
        results[name] = step(model, embedder, accelerator, batch_of(embedder, mine), objective, chunk)
    if rank == 0:
        torch.save(results, out_file)
    accelerator.wait_for_everyone()
    print(f"rank {rank} done ({os.getpid()})")


if __name__ == "__main__":
    main()
