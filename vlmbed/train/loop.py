"""The one training loop, on accelerate: setup, step, log, save. Readable top to bottom.

The same code runs on one CPU, one GPU, or many devices through ``accelerate launch`` (DDP, FSDP,
DeepSpeed ZeRO-2/3; presets in ``vlmbed/recipes/accelerate``). A step is:

1. the next batch of this process's share of the plan (``vlmbed.data.batching``);
2. embeddings of every role, whole (one forward per role) or in GradCache chunks
   (``train.gradcache_chunk``), the loss on the embeddings with documents gathered from every
   process (``train.gather_across_devices``), and the backward;
3. a non-finite loss or gradient skips the update (counted; ``train.max_nonfinite`` in a row stop
   the run with an error); otherwise clip, optimizer and scheduler step.

Checkpoints (``train.save_every``) hold model, optimizer, scheduler and RNG states (accelerate)
plus the plan position of the last trained batch; resume continues with the next batch.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed

from vlmbed import dist
from vlmbed.config import StageConfig, dump_yaml
from vlmbed.data.sources import load_sources
from vlmbed.models.build import build_embedder
from vlmbed.train import tracking
from vlmbed.train.checkpoint import (
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    read_state,
    save_checkpoint,
)
from vlmbed.train.data import build_loader, build_plan
from vlmbed.train.gradcache import GradCache, StepOutput, embed_chunk_size, full_batch_step, image_stand_in
from vlmbed.train.losses import contrastive_loss, global_mean_parts
from vlmbed.train.optim import build_optimizer, build_scheduler
from vlmbed.train.presets import set_deepspeed_grad_clip
from vlmbed.train.reconstruction import prepare_heads, reconstruction_step, token_roles
from vlmbed.types import CONTRASTIVE_ROLES


class NonFiniteLossError(ValueError):
    """Too many non-finite losses in a row: the run diverged."""


@dataclass
class StageResult:
    model_dir: Path
    steps: int
    final_loss: float
    seconds: float
    skipped_records: int
    nonfinite_steps: int = 0


@dataclass
class Progress:
    """What resume needs beside the accelerate state; saved as JSON in every checkpoint."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # plan position of the next batch
    batch: int = 0
    batches_seen: int = 0  # batches drawn, skipped ones included
    nonfinite_total: int = 0
    nonfinite_in_row: int = 0
    overflow_steps: int = 0  # fp16 steps the grad scaler skipped (not counted as non-finite)
    gradcache_chunk: int | None = None

    def advance(self, position: tuple[int, int]) -> None:
        self.epoch, self.batch = position[0], position[1] + 1
        self.batches_seen += 1


def mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def make_accelerator(cfg, stage_dir: Path | None = None) -> Accelerator:
    # Unused parameters are normal (a text-only chunk never touches the vision tower); buffers are
    # constants (rotary tables), and broadcasting them would add a collective to every forward.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
    # With no accelerator device, several processes (torchrun / accelerate launch) run as MULTI_CPU on gloo.
    # The plan already counts steps per process, so the scheduler steps once per step (accelerate would
    # otherwise step it once per process, assuming a loader it sharded itself).
    trackers = tracking.check_trackers(getattr(cfg, "report_to", []))
    return Accelerator(mixed_precision=mixed_precision(cfg.mixed_precision), kwargs_handlers=[ddp],
                       cpu=dist.use_cpu(), step_scheduler_with_optimizer=False, log_with=trackers or None,
                       project_dir=str(tracking.tracking_dir(stage_dir)) if trackers and stage_dir else None)


def encoder_fn(model):
    """(role, processor inputs) -> embeddings; ``positions`` in the inputs selects several per row."""

    def encode(role: str, inputs: dict) -> torch.Tensor:
        inputs = dict(inputs)
        positions = inputs.pop("positions", None)
        return model(inputs, positions=positions).embeddings

    encode.role_free = True  # every role is encoded alike: a step may join the roles' rows into one batch
    inner = getattr(model, "module", model)  # under DDP, the Embedder
    encode.packs = getattr(inner, "will_pack", None)  # inputs -> whether the model packs their rows (no padding)
    encode.positions = getattr(inner, "with_position_ids", None)  # inputs -> inputs with their rows' position ids
    return encode


def contrastive_losses(model, batch: dict, objectives, gather: bool = True) -> dict[str, torch.Tensor]:
    """Forward every role, then sum the weighted objectives; returns named parts and ``loss``."""
    encode = encoder_fn(model)
    reps = {r: encode(r, batch[r]) for r in CONTRASTIVE_ROLES if batch.get(r) is not None}
    return contrastive_loss(reps, batch, objectives, gather=gather)


def train_stage(stage: StageConfig, stage_dir: Path, model_path: Path) -> StageResult:
    """Train one stage from ``model_path``; write checkpoints, metrics and the final model to ``stage_dir``."""
    cfg = stage.train
    stage_dir = Path(stage_dir)
    accelerator = make_accelerator(cfg, stage_dir)
    set_seed(cfg.seed)
    embedder = build_embedder(stage.model, model_path, token_roles=token_roles(stage))
    prepare_heads(embedder, stage)  # training-only heads the objectives need (patch decoder), before the optimizer
    if cfg.freeze_vision:
        for p in embedder.adapter.vision_tower(embedder.model).parameters():
            p.requires_grad_(False)
    examples, stats = load_sources(stage.data)
    if stats.skipped and accelerator.is_main_process:
        print(f"skipped {stats.skipped} record(s) with unreadable images (data.on_bad_image=skip); first: "
              f"{stats.reasons[0]}")
    with accelerator.main_process_first():
        plan = build_plan(stage, examples, embedder, accelerator.num_processes, accelerator.process_index,
                          stage_dir.parent / "cache")
    loader, sampler = build_loader(stage, examples, embedder, plan)
    steps_per_epoch = len(plan)  # batches; an optimizer step takes train.grad_accum of them
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch / cfg.grad_accum))
    optimizer = build_optimizer(embedder, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    model, optimizer, scheduler = prepare(accelerator, embedder, optimizer, scheduler, stage.data.batch_size,
                                          cfg.grad_clip)
    unwrapped = accelerator.unwrap_model(model)
    accelerator.print(f"training {stage.name}: {accelerator.distributed_type.value} x {accelerator.num_processes}, "
                      f"{steps_per_epoch} batches/epoch, {total_steps} steps of {cfg.grad_accum} batch(es), "
                      f"GradCache chunk {cfg.gradcache_chunk}")
    # sharded engines gather a module's weights on every call: a chunk without images runs a stand-in image
    # wherever another process's chunk has one, so the vision tower runs on every process
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    stand_in = image_stand_in(unwrapped.encoder) if sharded else None
    engine = GradCache(cfg.gradcache_chunk, unwrapped.adapter.image_token_id(unwrapped.model), stand_in,
                       adapter=unwrapped.adapter,
                       embed_chunk_size=embed_chunk_size(cfg.gradcache_embed_chunk, cfg.gradcache_chunk, unwrapped))

    # ---- resume
    progress = restore(accelerator, stage_dir, cfg)
    sampler.set_start(progress.epoch, progress.batch)
    config_yaml = dump_yaml(stage)
    metrics_path = stage_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / "config.yaml").write_text(config_yaml)
        _truncate_metrics(metrics_path, progress.step)
    tracked = tracking.start(accelerator, stage, stage_dir, project=stage_dir.parent.name or "vlmbed")

    def save(step_state: Progress) -> None:
        state = {k: v for k, v in step_state.__dict__.items() if k != "step"}
        save_checkpoint(accelerator, stage_dir, step_state.step, state, config_yaml, keep=cfg.keep_checkpoints)

    # ---- train
    model.train()
    bar = _progress_bar(accelerator, cfg, total_steps, progress.step)
    encode = encoder_fn(model)
    sync = _sync_context(accelerator, model)

    def backward(loss: torch.Tensor, last: bool) -> None:
        accelerator.backward(loss / cfg.grad_accum)  # micro-batch gradients sum to the step's mean

    def micro_step(batch: dict, last_micro: bool):
        """Forward + backward of one batch; gradients are reduced across processes only at the step's last."""
        roles = {r: batch.get(r) for r in CONTRASTIVE_ROLES}
        micro_sync = (lambda last: sync(last and last_micro)) if cfg.grad_accum > 1 else sync

        def loss_fn(reps: dict) -> dict:
            return contrastive_loss(reps, batch, stage.objectives, gather=cfg.gather_across_devices)

        if stage.is_reconstruction:
            with micro_sync(True):
                return reconstruction_step(model, batch, stage, backward, image_stand_in=stand_in)
        if cfg.gradcache_chunk:
            return engine.step(encode, roles, loss_fn, backward, micro_sync)
        return full_batch_step(encode, roles, loss_fn, backward, micro_sync, image_stand_in=stand_in,
                               adapter=unwrapped.adapter, image_token_id=engine.image_token_id)

    start, rows_here, last_loss = time.time(), 0, float("nan")  # rows_here: this process's examples so far
    dropped: Counter = Counter()  # this process's records/images/text dropped at collate time (bad images, bounds)
    batches = iter(loader)
    while progress.step < total_steps:
        out, rows = _accumulate(batches, micro_step, cfg.grad_accum, progress, dropped,
                                "inputs" if stage.is_reconstruction else "query")
        finite = out.finite and _finite_grad_norm(accelerator, model, cfg.grad_clip)
        if not finite and not (out.finite and accelerator.scaler is not None):
            _skip_update(accelerator, optimizer, progress, cfg.max_nonfinite, out.parts)
            continue
        optimizer.step()  # fp16: an overflow makes the grad scaler skip this step and lower its scale
        optimizer.zero_grad(set_to_none=True)
        if optimizer.step_was_skipped:
            progress.overflow_steps += 1
            continue
        progress.nonfinite_in_row = 0
        scheduler.step()
        progress.step += 1
        rows_here += rows
        if progress.step % cfg.log_every == 0 or progress.step == total_steps:
            # the only per-step collectives and host syncs left for logging are here, on logged steps
            parts = global_mean_parts(out.parts)
            last_loss, seen = parts["loss"], sum(dist.gather_sizes(rows_here))
            row = {"step": progress.step, "epoch": progress.batches_seen / steps_per_epoch,
                   "lr": scheduler.get_last_lr()[0], "examples_per_s": seen / max(1e-9, time.time() - start),
                   "nonfinite_steps": progress.nonfinite_total, **parts,
                   **{f"dropped_{k}": v for k, v in dropped.items() if v}}
            _log(accelerator, metrics_path, row, bar)
            if tracked:
                tracking.log_row(accelerator, row)
        if bar is not None:
            bar.update(1)
        if cfg.save_every and progress.step % cfg.save_every == 0 and progress.step < total_steps:
            save(progress)
    if bar is not None:
        bar.close()
    if tracked:
        accelerator.end_training()

    # ---- save
    save(progress)
    model_dir = save_final_model(accelerator, model, stage, stage_dir)
    if any(dropped.values()):
        print(f"process {accelerator.process_index}: dropped at collate time "
              f"{', '.join(f'{k}={v}' for k, v in dropped.items() if v)} (data.on_bad_image, model.max_length)")
    return StageResult(model_dir, progress.step, last_loss, time.time() - start, stats.skipped,
                       progress.nonfinite_total)


def _accumulate(batches, micro_step, grad_accum: int, progress: Progress, dropped: Counter, role: str):
    """Forward + backward of ``grad_accum`` batches (one optimizer step); their mean loss parts and rows.

    Stops early at a non-finite batch (every process agrees on it, so all stop together)."""
    outs, rows = [], 0
    for micro in range(grad_accum):
        batch = next(batches)
        outs.append(micro_step(batch, micro == grad_accum - 1))
        progress.advance(batch["position"])
        rows += int(batch[role]["input_ids"].shape[0])
        dropped.update(batch.get("data_stats") or {})
        if not outs[-1].finite:
            break
    out = StepOutput({k: torch.stack([o.parts[k] for o in outs]).mean() for k in outs[-1].parts},
                     finite=all(o.finite for o in outs))
    return out, rows


def prepare(accelerator, embedder, optimizer, scheduler, batch_size: int, grad_clip: float | None = None):
    """accelerator.prepare, told what it cannot infer from a loader it does not shard."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # the loader is ours (the plan shards it), so DeepSpeed is told the micro-batch size directly
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size
        set_deepspeed_grad_clip(accelerator.state.deepspeed_plugin.deepspeed_config, grad_clip)  # the engine clips
    # FSDP wraps the backbone's own layer classes (decoder layers, vision blocks)
    embedder._no_split_modules = list(getattr(embedder.model, "_no_split_modules", None) or [])
    return accelerator.prepare(embedder, optimizer, scheduler)


def restore(accelerator, stage_dir: Path, cfg) -> Progress:
    """Load the newest checkpoint (``train.resume``) and return where to continue; a fresh start otherwise."""
    progress = Progress(gradcache_chunk=cfg.gradcache_chunk)
    ckpt = latest_checkpoint(stage_dir) if cfg.resume else None
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        saved = read_state(ckpt)
        progress = Progress(**{k: v for k, v in saved.items() if k in Progress.__dataclass_fields__})
        progress.gradcache_chunk = cfg.gradcache_chunk
        accelerator.print(f"resumed from {ckpt} at step {progress.step} (epoch {progress.epoch}, "
                          f"batch {progress.batch})")
    elif not cfg.resume and list_checkpoints(stage_dir) and accelerator.is_main_process:
        print(f"train.resume=false: removing the earlier run's checkpoints in {checkpoint_dir(stage_dir)}")
        shutil.rmtree(checkpoint_dir(stage_dir))
    accelerator.wait_for_everyone()
    return progress


def _log(accelerator, metrics_path: Path, row: dict, bar) -> None:
    if accelerator.is_main_process:
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    if bar is not None:
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", ex_s=f"{row['examples_per_s']:.0f}")


def _sync_context(accelerator, model):
    """Around every GradCache chunk: no gradient reduction except at the step's last backward."""

    @contextmanager
    def sync(last: bool):
        accelerator.sync_gradients = last  # DeepSpeed: accumulation boundary (and its step) only at the last
        try:
            with nullcontext() if last else accelerator.no_sync(model):
                yield
        finally:
            accelerator.sync_gradients = True

    return sync


def _finite_grad_norm(accelerator, model, clip: float | None) -> bool:
    """Clip (if asked) and check the gradient norm; under DeepSpeed the engine clips and checks itself."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return True
    norm = accelerator.clip_grad_norm_(model.parameters(), clip if clip else float("inf"))
    return norm is None or bool(torch.isfinite(torch.as_tensor(norm)).all())


def _skip_update(accelerator, optimizer, progress: Progress, limit: int, parts: dict) -> None:
    optimizer.zero_grad(set_to_none=True)
    progress.nonfinite_total += 1
    progress.nonfinite_in_row += 1
    shown = {k: float(v) for k, v in parts.items()}
    accelerator.print(f"step {progress.step + 1}: non-finite loss or gradient {shown}; update skipped "
                      f"({progress.nonfinite_in_row} in a row, {progress.nonfinite_total} in total)")
    if progress.nonfinite_in_row >= limit:
        raise NonFiniteLossError(
            f"training stopped: {progress.nonfinite_in_row} non-finite losses/gradients in a row at step "
            f"{progress.step} (train.max_nonfinite={limit}). Lower train.lr, raise the objective's temperature, "
            "use train.mixed_precision=bf16 instead of fp16, or check the data; the last checkpoint is kept."
        )


def save_final_model(accelerator, model, stage: StageConfig, stage_dir: Path) -> Path:
    """The stage's model: plain Hugging Face folder (LoRA merged), and the adapter alone when LoRA is on."""
    from vlmbed.models.lora import has_lora

    unwrapped = accelerator.unwrap_model(model)
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    full = accelerator.get_state_dict(model) if sharded else None  # collective: every process takes part
    state_dict = {k[len("model."):]: v for k, v in full.items() if k.startswith("model.")} if full else None
    model_dir = stage_dir / "model"
    if accelerator.is_main_process:
        lora = has_lora(unwrapped.model)
        merged = not lora or stage.model.lora.export == "merged"
        unwrapped.save_pretrained(model_dir, state_dict=state_dict, merge_lora=merged)
        if lora:
            unwrapped.save_pretrained(stage_dir / "adapter", state_dict=state_dict, merge_lora=False)
    accelerator.wait_for_everyone()
    return model_dir


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop logged rows past the resumed step (they belong to the interrupted run's lost steps)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [line for line in rows if json.loads(line).get("step", 0) <= step]
    if len(keep) != len(rows):
        path.write_text("".join(line + "\n" for line in keep))


def _progress_bar(accelerator, cfg, total: int, initial: int):
    if not (cfg.progress and accelerator.is_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
