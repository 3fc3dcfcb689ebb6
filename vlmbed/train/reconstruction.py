"""Reconstruction stages (MoCa stage 1, CoCoA stages 1-2): one forward on the masked input through
the Embedder's own heads, then the stage's reconstruction objectives from the ``OBJECTIVES`` table.

Objective-blind: each objective says what the forward must compute for it (``Objective.forward``,
e.g. LM-head logits at the masked positions), which heads to attach (``Objective.prepare``) and which
of vlmbed's tokens it needs (``Objective.tokens``); the stage's weights sum the named parts. The batch
comes from the stage's collator (``vlmbed.train.data.COLLATORS``; MoCa's masked documents:
:class:`vlmbed.data.pretrain.PretrainCollator`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmbed import dist
from vlmbed.data.pretrain import PretrainCollator
from vlmbed.objectives import lookup
from vlmbed.train.chunks import concat_rows, has_media
from vlmbed.train.gradcache import StepOutput, finite_everywhere
from vlmbed.train.losses import weighted_parts


def objective(stage, name: str):
    return next((o for o in stage.objectives if o.name == name), None)


def prepare_heads(embedder, stage) -> None:
    """Attach the training-only heads the stage's objectives need (before the optimizer is built)."""
    for obj in stage.objectives:
        spec = lookup(obj.name)
        if spec.prepare is not None:
            spec.prepare(embedder, obj)


def token_roles(stage) -> tuple[str, ...]:
    """vlmbed's own tokens the stage's objectives need in the vocabulary (added when missing)."""
    return tuple(dict.fromkeys(r for o in stage.objectives for r in lookup(o.name).tokens))


def pretrain_collator(embedder, stage) -> PretrainCollator:
    """MoCa's doubly-masked documents, with the ratios of the stage's ``mlm`` / ``mae`` objectives."""
    mlm, mae = objective(stage, "mlm"), objective(stage, "mae")
    a = embedder.adapter
    if mlm is not None:
        embedder.token_id("mask")  # a clear error naming the token, never a None id in masked_fill
    return PretrainCollator(
        embedder.encoder, mask_token=embedder.tokens["mask"],
        extra_special_tokens=[*a.special_tokens, *embedder.tokens.values()],
        image_token_id=a.image_token_id(embedder.model), adapter=a,
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


def forward_args(stage, batch: dict) -> dict:
    """What the forward must compute for the stage's objectives (their ``Objective.forward`` merged)."""
    kwargs: dict = {}
    for obj in stage.objectives:
        spec = lookup(obj.name)
        for key, value in (spec.forward(obj, batch) if spec.forward is not None else {}).items():
            if key in kwargs and kwargs[key] is not value:
                raise ValueError(f"objectives of stage {stage.name!r} ask the forward for {key!r} twice; one "
                                 "forward serves one request per head")
            kwargs[key] = value
    return kwargs


def reconstruction_losses(out, batch: dict, stage, stand_in_rows: int = 0) -> dict[str, torch.Tensor]:
    zero = out.hidden.new_zeros((), dtype=torch.float32)
    if stand_in_rows:  # carries (zero) gradients through the stand-in image's path
        zero = zero + 0.0 * out.hidden[-stand_in_rows:].float().sum()
    return weighted_parts(stage.objectives, out, batch, zero=zero)


def reconstruction_step(model, batch: dict, stage, backward, image_stand_in: dict | None = None) -> StepOutput:
    """One forward on the masked batch, the weighted losses, one backward."""
    extra = add_image_stand_in(batch, image_stand_in)
    out = model(batch["inputs"], attention=stage.model.attention, **forward_args(stage, batch))
    parts = reconstruction_losses(out, batch, stage, extra)
    if not finite_everywhere(parts["loss"]):
        return StepOutput({k: v.detach() for k, v in parts.items()}, finite=False)
    backward(parts["loss"], True)
    return StepOutput({k: v.detach() for k, v in parts.items()}, finite=True)
