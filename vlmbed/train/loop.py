"""The one training loop, on accelerate: setup, step, log, save. Readable top to bottom.

The same code runs on one CPU, one GPU, or many devices through ``accelerate launch``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from vlmbed.config import StageConfig, dump_yaml
from vlmbed.data.collate import ContrastiveCollator
from vlmbed.data.sources import load_sources
from vlmbed.models.build import build_embedder
from vlmbed.objectives import OBJECTIVES
from vlmbed.train.checkpoint import latest_checkpoint, read_state, save_checkpoint
from vlmbed.train.optim import build_optimizer, build_scheduler
from vlmbed.train.sampler import EpochShuffleSampler


@dataclass
class StageResult:
    model_dir: Path
    steps: int
    final_loss: float
    seconds: float
    skipped_records: int


def mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def contrastive_losses(model, batch: dict, objectives) -> dict[str, torch.Tensor]:
    """Forward every role, then sum the weighted objectives; returns named parts and ``loss``."""
    q = model(batch["query"]).embeddings  # (B, d)
    p = model(batch["positive"]).embeddings  # (B, d)
    n = model(batch["negatives"]).embeddings if batch.get("negatives") is not None else None  # (N, d)
    parts: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=q.device)
    for obj in objectives:
        params = obj.model_dump(exclude={"name", "weight"})
        if not params.pop("mask_same_group", True):
            group_ids = None
        else:
            group_ids = batch["group_ids"].to(q.device)
        out = OBJECTIVES[obj.name](
            q, p, negatives=n, negative_owner=batch["negative_owner"].to(q.device), group_ids=group_ids, **params
        )
        for name, value in out.items():
            parts[name] = value
            total = total + obj.weight * value
    parts["loss"] = total
    return parts


def train_stage(stage: StageConfig, stage_dir: Path, model_path: Path) -> StageResult:
    """Train one stage from ``model_path``; write checkpoints, metrics and the final model to ``stage_dir``."""
    cfg = stage.train
    stage_dir = Path(stage_dir)
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg.mixed_precision))
    set_seed(cfg.seed)
    embedder = build_embedder(stage.model, model_path)
    examples, stats = load_sources(stage.data)
    if stats.skipped and accelerator.is_main_process:
        print(f"skipped {stats.skipped} record(s) with unreadable images (data.on_bad_image=skip); first: "
              f"{stats.reasons[0]}")
    sampler = EpochShuffleSampler(len(examples), seed=stage.data.seed)
    loader = DataLoader(
        examples, batch_size=stage.data.batch_size, sampler=sampler, drop_last=True,
        collate_fn=ContrastiveCollator(embedder.encoder, stage.data.num_negatives),
        num_workers=stage.data.num_workers,
    )
    if len(loader) == 0:
        raise ValueError(f"stage {stage.name}: {len(examples)} examples is fewer than one batch "
                         f"(data.batch_size={stage.data.batch_size})")
    steps_per_epoch = len(loader)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    optimizer = build_optimizer(embedder, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(embedder, optimizer, loader, scheduler)
    steps_per_epoch = len(loader)

    # ---- resume
    step = 0
    ckpt = latest_checkpoint(stage_dir) if cfg.resume else None
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        step = read_state(ckpt)["step"]
        accelerator.print(f"resumed from {ckpt} at step {step}")
    config_yaml = dump_yaml(stage)
    if accelerator.is_main_process:
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "config.yaml").write_text(config_yaml)
    metrics_path = stage_dir / "metrics.jsonl"

    # ---- train
    model.train()
    progress = _progress(accelerator, cfg, total_steps, step)
    start, seen, last_loss = time.time(), 0, float("nan")
    batches = _batches(loader, sampler, accelerator, step, steps_per_epoch)
    while step < total_steps:
        batch = next(batches)
        parts = contrastive_losses(model, batch, stage.objectives)
        accelerator.backward(parts["loss"])
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        seen += stage.data.batch_size * accelerator.num_processes
        last_loss = parts["loss"].item()
        if step % cfg.log_every == 0 or step == total_steps:
            row = {"step": step, "epoch": step / steps_per_epoch, "lr": scheduler.get_last_lr()[0],
                   "examples_per_s": seen / max(1e-9, time.time() - start)}
            row.update({k: v.item() for k, v in parts.items()})
            if accelerator.is_main_process:
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            if progress is not None:
                progress.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                                     ex_s=f"{row['examples_per_s']:.0f}")
        if progress is not None:
            progress.update(1)
        if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
            save_checkpoint(accelerator, stage_dir, step, {"epoch": step / steps_per_epoch}, config_yaml)
    if progress is not None:
        progress.close()

    # ---- save
    save_checkpoint(accelerator, stage_dir, step, {"epoch": step / steps_per_epoch}, config_yaml)
    model_dir = stage_dir / "model"
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(model_dir)
    accelerator.wait_for_everyone()
    return StageResult(model_dir, step, last_loss, time.time() - start, stats.skipped)


def _batches(loader, sampler, accelerator, step: int, steps_per_epoch: int):
    """Endless batches, starting at global ``step`` without replaying the batches before it."""
    epoch, skip = divmod(step, steps_per_epoch)
    while True:
        sampler.set_epoch(epoch)
        it = accelerator.skip_first_batches(loader, skip) if skip else loader
        yield from it
        epoch, skip = epoch + 1, 0


def _progress(accelerator, cfg, total: int, initial: int):
    if not (cfg.progress and accelerator.is_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
