r"""Masked image-patch reconstruction (MoCa stage 1).

.. math:: \mathcal{L}_{MAE} = \frac{1}{|M| \cdot D}\sum_{u\in M}\lVert h_\psi(H)_u - x_u \rVert^2

``predictions`` (M, merge**2 * D) are the decoder outputs at the masked units' ``<|image_pad|>``
positions; each row is unfolded into its merge**2 patches and compared with the original
(processor-normalised) patch vectors ``targets`` (M * merge**2, D). Mean over all elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def loss(predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    if targets.numel() == 0:
        return {"mae": predictions.sum() * 0.0}
    patches = predictions.reshape(targets.shape)  # (M, p*D) -> (M*p, D), unit-major like the targets
    return {"mae": F.mse_loss(patches.float(), targets.float())}
