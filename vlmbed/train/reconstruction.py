"""Reconstruction stages (MoCa stage 1): masked-token prediction + masked image-unit reconstruction
from one forward on the doubly-masked input, through the Embedder's own heads.

The batch comes from :class:`vlmbed.data.pretrain.PretrainCollator`; losses are the pure objectives
``vlmbed.objectives.mlm`` / ``mae``; the stage's weights sum them (L = L_MLM + w * L_MAE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmbed import dist
from vlmbed.data.pretrain import PretrainCollator
from vlmbed.objectives import OBJECTIVES
from vlmbed.objectives.mlm import prediction_positions
from vlmbed.train.chunks import concat_rows, has_media
from vlmbed.train.gradcache import StepOutput, finite_everywhere


def objective(stage, name: str):
    return next((o for o in stage.objectives if o.name == name), None)


def patch_dim(processor) -> int:
    ip = processor.image_processor
    return 3 * int(ip.temporal_patch_size) * int(ip.patch_size) ** 2


def prepare_heads(embedder, stage) -> None:
    """Attach the training-only heads the stage's objectives need (before the optimizer is built)."""
    if objective(stage, "mae") is not None:
        merge = int(getattr(embedder.processor.image_processor, "merge_size", 2))
        embedder.add_patch_decoder(patch_dim(embedder.processor), merge=merge)


def token_roles(stage) -> tuple[str, ...]:
    """vlmbed's own tokens a stage needs in the vocabulary: ``mask`` for MLM (added when missing)."""
    return ("mask",) if objective(stage, "mlm") is not None else ()


def pretrain_collator(embedder, stage) -> PretrainCollator:
    mlm, mae = objective(stage, "mlm"), objective(stage, "mae")
    a = embedder.adapter
    if mlm is not None:
        embedder.token_id("mask")  # a clear error naming the token, never a None id in masked_fill
    return PretrainCollator(
        embedder.encoder, mask_token=embedder.tokens["mask"],
        extra_special_tokens=[*a.special_tokens, *embedder.tokens.values()],
        image_token_id=a.image_token_id(embedder.model),
        merge=int(getattr(embedder.processor.image_processor, "merge_size", 2)),
        mlm_ratio=mlm.ratio if mlm else 0.0, mae_ratio=mae.ratio if mae else 0.0,
        noise=mae.noise if mae else "per_patch", seed=stage.data.seed,
        max_length=getattr(stage.model, "max_length", None), on_bad_image=stage.data.on_bad_image,
    )


@dataclass
class DocumentCollator:
    """Positioned documents -> masked batch + plan position; masks seeded by (seed, epoch, batch)."""

    collator: PretrainCollator
    seed: int = 0

    def __call__(self, items: list) -> dict:
        epoch, batch = int(items[0][0]), int(items[0][1])
        out = self.collator([doc for _, _, doc in items], seed=hash((self.seed, epoch, batch)) & 0x7FFFFFFF)
        out["position"] = (epoch, batch)
        return out


def add_image_stand_in(batch: dict, stand_in: dict | None) -> int:
    """Sharded engines (FSDP, ZeRO-3) gather the vision tower's weights whenever it runs, so every process
    must run it: a text-only batch gets a stand-in image row wherever another process's batch has images
    (MoCa appends a black image for the same reason). Returns the stand-in rows appended (0 or 1); the
    losses ignore them except for a zero-weighted term that carries (zero) gradients through the tower."""
    if stand_in is None or not dist.is_distributed():
        return 0
    inputs = batch["inputs"]
    needed = dist.max_across([int(has_media(inputs))])[0]
    if not needed or has_media(inputs):
        return 0
    batch["inputs"] = concat_rows(inputs, stand_in)
    width = batch["inputs"]["input_ids"].shape[1]
    mask = batch["image_token_mask"]  # (B, T) -> (B + 1, T'): the stand-in's image tokens are never targets
    grown = mask.new_zeros((mask.shape[0] + 1, width))
    grown[: mask.shape[0], : mask.shape[1]] = mask
    batch["image_token_mask"] = grown
    return 1


def reconstruction_losses(out, batch: dict, stage, stand_in_rows: int = 0) -> dict[str, torch.Tensor]:
    parts: dict[str, torch.Tensor] = {}
    total = out.hidden.new_zeros((), dtype=torch.float32)
    if stand_in_rows:
        total = total + 0.0 * out.hidden[-stand_in_rows:].float().sum()
    for obj in stage.objectives:
        if obj.name == "mlm":
            _, _, targets = prediction_positions(batch["mlm_labels"], obj.shift)
            part = OBJECTIVES["mlm"](out.token_logits, targets.to(out.hidden.device))
        else:
            if out.patch_predictions is None:  # no image in this batch
                part = {"mae": out.hidden.sum() * 0.0}
            else:
                part = OBJECTIVES["mae"](out.patch_predictions, batch["mae_targets"].to(out.hidden.device))
        for name, value in part.items():
            parts[name] = value
            total = total + obj.weight * value
    parts["loss"] = total
    return parts


def reconstruction_step(model, batch: dict, stage, backward, image_stand_in: dict | None = None) -> StepOutput:
    """One forward on the doubly-masked batch, the weighted losses, one backward."""
    extra = add_image_stand_in(batch, image_stand_in)
    mlm = objective(stage, "mlm")
    token_positions = None
    if mlm is not None:
        rows, cols, _ = prediction_positions(batch["mlm_labels"], mlm.shift)
        token_positions = (rows, cols)
    masked_units = None
    if objective(stage, "mae") is not None and batch["unit_mask"].numel():
        masked_units = (batch["image_token_mask"], batch["unit_mask"])
    out = model(batch["inputs"], attention=stage.model.attention, token_positions=token_positions,
                masked_units=masked_units)
    parts = reconstruction_losses(out, batch, stage, extra)
    if not finite_everywhere(parts["loss"]):
        return StepOutput({k: v.detach() for k, v in parts.items()}, finite=False)
    backward(parts["loss"], True)
    return StepOutput({k: v.detach() for k, v in parts.items()}, finite=True)
