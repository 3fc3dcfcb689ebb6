"""Peak memory of one training step: batch 16, batch 256, and batch 256 with GradCache (chunks of 16).

    python benchmarks/gradcache_memory.py [--device cpu|cuda] [--negatives 1]

Prints one JSON line with ``peak_mb_b16``, ``peak_mb_b256_full`` and ``peak_mb_b256_gradcache`` (MiB), the
ratio of the GradCache run to the batch-16 run, and the losses (the GradCache loss equals the full one).

What is measured, and how. Each configuration runs in a fresh Python process (no allocator state
carried over): it loads the same model (the tiny Qwen2-VL of the test world, built once, float32),
collates its batch of digits examples (mixed text and image queries and documents, hard negatives),
then runs one training step's forward and backward exactly as the training loop does
(``vlmbed.train.gradcache``). The number reported is the peak *increase* of memory during that step
over the memory held just before it (model, optimizer-free, batch tensors already in place), i.e. the
activations, cached representations and gradients that the step needs.

* On CUDA: ``torch.cuda.max_memory_allocated()`` minus ``torch.cuda.memory_allocated()`` before the step.
* On CPU, where PyTorch keeps no allocator statistics, a thread samples the process's resident set
  size (``/proc/self/statm`` via psutil) every 0.5 ms during the step; the peak minus the RSS before
  the step is reported. Large tensors are mmap-ed by glibc and returned on free, so RSS follows the
  live tensors; a short allocation peak between two samples can be missed, so the CPU numbers are a
  slight underestimate, equally for all three configurations. Python's ``tracemalloc`` would see none
  of PyTorch's allocations and is not used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = {"b16": (16, None), "b256_full": (256, None), "b256_gradcache": (256, 16)}


def _examples(n: int):
    from vlmbed.data.digits import build_digits

    tasks = ["digits_cls", "digits_t2i", "digits_i2t", "digits_successor"]
    exs = build_digits("train", tasks=tasks, max_per_task=n)
    mixed = [ex for group in zip(*(exs[t] for t in tasks), strict=False) for ex in group]
    return mixed[:n]


class RssSampler:
    def __init__(self, interval: float = 0.0005):
        import psutil

        self.proc, self.interval, self.peak, self._stop = psutil.Process(), interval, 0, threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def measure(model_dir: str, config: str, device: str, negatives: int) -> dict:
    """One configuration, in this (fresh) process."""
    import gc

    import torch

    from vlmbed.config import InfoNCEConfig
    from vlmbed.data.collate import ContrastiveCollator
    from vlmbed.models.embedder import Embedder
    from vlmbed.train.data import TrainCollator
    from vlmbed.train.gradcache import GradCache, full_batch_step
    from vlmbed.train.loop import encoder_fn
    from vlmbed.train.losses import CONTRASTIVE_ROLES, contrastive_loss

    torch.manual_seed(0)
    batch_size, chunk = CONFIGS[config]
    embedder = Embedder.from_pretrained(model_dir, dtype=torch.float32, pooling="mean", attention="bidirectional",
                                        append_eos=False).to(device)
    embedder.train()
    examples = _examples(batch_size)
    batch = TrainCollator(ContrastiveCollator(embedder.encoder, negatives))([(0, 0, ex) for ex in examples])
    roles = {r: {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch[r].items()}
             if batch.get(r) is not None else None for r in CONTRASTIVE_ROLES}
    objectives = [InfoNCEConfig(temperature=0.05)]

    def loss_fn(reps):
        return contrastive_loss(reps, batch, objectives)

    def backward(loss, last):
        loss.backward()

    encode = encoder_fn(embedder)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = (GradCache(chunk).step if chunk else full_batch_step)(encode, roles, loss_fn, backward)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with RssSampler() as rss:
            out = (GradCache(chunk).step if chunk else full_batch_step)(encode, roles, loss_fn, backward)
        peak = rss.peak - rss.base
    rows = {r: int(v["input_ids"].shape[0]) for r, v in roles.items() if v is not None}
    return {"peak_mb": peak / 2**20, "loss": float(out.parts["loss"]), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--negatives", type=int, default=1, help="hard negatives per query")
    ap.add_argument("--one", nargs=2, metavar=("MODEL_DIR", "CONFIG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.device, args.negatives)))
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from vlmbed.models.tiny import build_tiny_vlm

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_vlm(Path(tmp) / "tiny")
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "TOKENIZERS_PARALLELISM": "false"}
        for name in CONFIGS:
            cmd = [sys.executable, __file__, "--device", device, "--negatives", str(args.negatives),
                   "--one", str(model_dir), name]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
    b16, full, cached = (results[k]["peak_mb"] for k in CONFIGS)
    print(json.dumps({
        "peak_mb_b16": round(b16, 1),
        "peak_mb_b256_full": round(full, 1),
        "peak_mb_b256_gradcache": round(cached, 1),
        "gradcache_over_b16": round(cached / b16, 3),
        "loss_b256_full": round(results["b256_full"]["loss"], 6),
        "loss_b256_gradcache": round(results["b256_gradcache"]["loss"], 6),
        "rows_per_role_b256": results["b256_full"]["rows"],
        "chunk": 16, "device": device, "measure": "cuda max_memory_allocated" if device == "cuda"
        else "peak RSS increase during the step (psutil, 0.5 ms sampling)",
    }))


if __name__ == "__main__":
    main()
