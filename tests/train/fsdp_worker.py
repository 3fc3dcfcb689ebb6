"""One process of the FSDP2 + GradCache equivalence test (run by tests/train/test_sharded.py).

    python fsdp_worker.py MODEL_DIR OUT_FILE   (with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)

Shards the tiny model with FSDP2 (``fully_shard`` per decoder layer and vision block, then the
root) over CPU processes on gloo, runs GradCache steps with gathered negatives (every chunk but the
last without gradient reduction, as the loop does through ``accelerator.no_sync``) and saves the
loss and the full (unsharded) gradients on rank 0.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as tdist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = {"even_gradcache": (6, 2), "uneven_gradcache": (4, 3), "even_full": (6, None)}


def main() -> None:
    from dist_worker import batch_of, examples
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from vlmbed.config import InfoNCEConfig
    from vlmbed.models.embedder import Embedder
    from vlmbed.train.gradcache import GradCache, full_batch_step, image_stand_in
    from vlmbed.train.loop import encoder_fn
    from vlmbed.train.losses import CONTRASTIVE_ROLES, contrastive_loss, global_mean_parts

    model_dir, out_file = sys.argv[1], sys.argv[2]
    tdist.init_process_group("gloo")
    rank = tdist.get_rank()
    torch.manual_seed(0)
    embedder = Embedder.from_pretrained(model_dir, dtype=torch.float32, pooling="mean", attention="bidirectional",
                                        append_eos=False)
    names = [n for n, p in embedder.named_parameters()]
    mesh = init_device_mesh("cpu", (tdist.get_world_size(),))
    for layer in embedder.adapter.language_model(embedder.model).layers:
        fully_shard(layer, mesh=mesh)
    for block in embedder.adapter.vision_tower(embedder.model).blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(embedder, mesh=mesh)
    embedder.train()

    @contextmanager
    def sync(last):
        embedder.set_requires_gradient_sync(last)
        try:
            yield
        finally:
            embedder.set_requires_gradient_sync(True)

    exs = examples()
    results = {}
    for name, (rows0, chunk) in CASES.items():
        mine = exs[:rows0] if rank == 0 else exs[rows0:]
        batch = batch_of(embedder, mine)
        embedder.zero_grad(set_to_none=True)

        def loss_fn(reps, batch=batch):
            return contrastive_loss(reps, batch, [InfoNCEConfig(temperature=0.05)], gather=True)

        roles = {r: batch.get(r) for r in CONTRASTIVE_ROLES}
        stand_in = image_stand_in(embedder.encoder)
        encode, bwd = encoder_fn(embedder), (lambda loss, last: loss.backward())
        if chunk:
            out = GradCache(chunk, image_stand_in=stand_in).step(encode, roles, loss_fn, bwd, sync)
        else:
            out = full_batch_step(encode, roles, loss_fn, bwd, sync, image_stand_in=stand_in)
        grads = {}
        for n, p in zip(names, embedder.parameters(), strict=True):
            if p.grad is not None:
                g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                grads[n] = g.detach().clone()
        results[name] = (global_mean_parts(out.parts)["loss"], grads)
    if rank == 0:
        torch.save(results, out_file)
    tdist.barrier()
    tdist.destroy_process_group()
    print(f"rank {rank} done ({os.getpid()})", flush=True)
    # the work is done and saved: skip interpreter teardown, where a torch/gloo thread destructor has been seen
    # to abort ("terminate called without an active exception") after a complete run
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
