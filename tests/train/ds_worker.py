"""One process of the DeepSpeed ZeRO + GradCache equivalence test (run by tests/train/test_sharded.py).

    python ds_worker.py MODEL_DIR OUT_FILE ZERO_STAGE   (with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)

DeepSpeed's engine on CPU processes (gloo): GradCache chunks call ``engine.backward`` with the
gradient-accumulation boundary only at the step's last chunk (what accelerate does from
``accelerator.sync_gradients``); rank 0 saves the loss and the full gradients (``safe_get_full_grad``).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = {"even_gradcache": (6, 2), "uneven_gradcache": (4, 3)}


def main() -> None:
    import deepspeed
    from deepspeed.utils import safe_get_full_grad
    from dist_worker import batch_of, examples

    from vlmbed.config import InfoNCEConfig
    from vlmbed.models.embedder import Embedder
    from vlmbed.train.gradcache import GradCache, image_stand_in
    from vlmbed.train.loop import encoder_fn
    from vlmbed.train.losses import CONTRASTIVE_ROLES, contrastive_loss, global_mean_parts

    model_dir, out_file, stage = sys.argv[1], sys.argv[2], int(sys.argv[3])
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    torch.manual_seed(0)
    embedder = Embedder.from_pretrained(model_dir, dtype=torch.float32, pooling="mean", attention="bidirectional",
                                        append_eos=False)
    names = [n for n, _ in embedder.named_parameters()]
    optimizer = torch.optim.AdamW(embedder.parameters(), lr=0.0)
    config = {"train_micro_batch_size_per_gpu": 6, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage}}
    engine, *_ = deepspeed.initialize(model=embedder, optimizer=optimizer, config=config)

    @contextmanager
    def sync(last):
        engine.set_gradient_accumulation_boundary(last)
        yield

    exs = examples()
    results = {}
    for name, (rows0, chunk) in CASES.items():
        batch = batch_of(embedder, exs[:rows0] if rank == 0 else exs[rows0:])

        def loss_fn(reps, batch=batch):
            return contrastive_loss(reps, batch, [InfoNCEConfig(temperature=0.05)], gather=True)

        gc = GradCache(chunk, image_stand_in=image_stand_in(embedder.encoder))
        out = gc.step(encoder_fn(engine), {r: batch.get(r) for r in CONTRASTIVE_ROLES}, loss_fn,
                      lambda loss, last: engine.backward(loss), sync)
        grads = {}
        for n, p in zip(names, embedder.parameters(), strict=True):
            g = safe_get_full_grad(p)  # collective under ZeRO-3
            if g is not None:
                grads[n] = g.detach().clone().float()
        results[name] = (global_mean_parts(out.parts)["loss"], grads)
        engine.zero_grad()
        engine.optimizer.zero_grad()
    if rank == 0:
        torch.save(results, out_file)
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
