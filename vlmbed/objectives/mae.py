r"""Masked image-patch reconstruction (MoCa stage 1).

.. math:: \mathcal{L}_{MAE} = \frac{1}{|M| \cdot D}\sum_{u\in M}\lVert h_\psi(H)_u - x_u \rVert^2

``predictions`` (M, merge**2 * D) are the decoder outputs at the masked units' image tokens (the family
adapter's ``image_unit_mask``); each row is unfolded into its merge**2 patches and compared with the original
(processor-normalised) patch vectors ``targets`` (M * merge**2, D) from ``adapter.unit_patches``. Mean over
all elements.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vlmbed.objectives.base import Objective, ObjectiveSettings


class MAEConfig(ObjectiveSettings):
    """Masked image-unit reconstruction through a patch decoder; MoCa stage 1."""

    name: Literal["mae"] = "mae"
    weight: float = 0.5  # MoCa paper 0.5; released script 0.1
    ratio: float = Field(0.5, gt=0, lt=1)  # share of image units (one image token each) masked
    noise: Literal["per_patch", "shared"] = "per_patch"  # paper: fresh Gaussian per patch; code: one shared


def loss(predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    if targets.numel() == 0:
        return {"mae": predictions.sum() * 0.0}
    patches = predictions.reshape(targets.shape)  # (M, p*D) -> (M*p, D), unit-major like the targets
    return {"mae": F.mse_loss(patches.float(), targets.float())}


def prepare(embedder, cfg: MAEConfig) -> None:
    """Attach the patch decoder (training only) before the optimizer is built."""
    adapter, processor = embedder.adapter, embedder.processor
    embedder.add_patch_decoder(adapter.patch_dim(processor), merge=adapter.merge_size(processor))


def forward_args(cfg: MAEConfig, batch: dict) -> dict:
    """The forward runs the patch decoder at the masked units (none when the batch has no image)."""
    if not batch["unit_mask"].numel():
        return {}
    return {"masked_units": (batch["image_token_mask"], batch["unit_mask"])}


def objective(cfg: MAEConfig, out, batch: dict) -> dict[str, torch.Tensor]:
    if out.patch_predictions is None:  # no image in this batch
        return {"mae": out.hidden.sum() * 0.0}
    return loss(out.patch_predictions, batch["mae_targets"].to(out.hidden.device))


OBJECTIVE = Objective(config=MAEConfig, fn=objective, kind="reconstruction", forward=forward_args, prepare=prepare)
