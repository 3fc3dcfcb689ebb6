r"""Masked language modelling on a bidirectional backbone (MoCa stage 1, CoCoA MNTP).

.. math:: \mathcal{L}_{MLM} = \frac{1}{|M|}\sum_{i\in M} \mathrm{CE}\big(g(h_{i-s}), x_i\big)

with :math:`s` the label shift: 0 predicts the masked token at its own position (BERT style, MoCa's
released code), 1 predicts it from the previous position (LLM2Vec style, the MoCa paper).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vlmbed.objectives.base import Objective, ObjectiveSettings


class MLMConfig(ObjectiveSettings):
    """Masked-token prediction on the (bidirectional) backbone; MoCa stage 1, CoCoA MNTP."""

    name: Literal["mlm"] = "mlm"
    weight: float = 1.0
    ratio: float = Field(0.4, gt=0, lt=1)  # share of non-special text tokens replaced by <|mask|>
    shift: Literal[0, 1] = 1  # 1: predict x_i from h_{i-1} (MoCa paper); 0: same position (MoCa code)


def prediction_positions(labels: torch.Tensor, shift: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, targets): hidden-state positions that predict each masked label (B, T) -> (M,)."""
    if shift not in (0, 1):
        raise ValueError(f"mlm label shift must be 0 or 1, got {shift}")
    rows, cols = (labels != -100).nonzero(as_tuple=True)  # (M,), (M,)
    keep = cols >= shift  # a masked first token has no previous position
    rows, cols = rows[keep], cols[keep]
    return rows, cols - shift, labels[rows, cols]


def loss(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """``logits`` (M, V) at the prediction positions, ``targets`` (M,) -> {"mlm": mean CE}."""
    if targets.numel() == 0:
        return {"mlm": logits.sum() * 0.0}
    return {"mlm": F.cross_entropy(logits.float(), targets)}


def forward_args(cfg: MLMConfig, batch: dict) -> dict:
    """The forward computes LM-head logits only at the positions that predict a masked token."""
    rows, cols, _ = prediction_positions(batch["mlm_labels"], cfg.shift)
    return {"token_positions": (rows, cols)}


def objective(cfg: MLMConfig, out, batch: dict) -> dict[str, torch.Tensor]:
    _, _, targets = prediction_positions(batch["mlm_labels"], cfg.shift)
    return loss(out.token_logits, targets.to(out.hidden.device))


OBJECTIVE = Objective(config=MLMConfig, fn=objective, kind="reconstruction", forward=forward_args,
                      tokens=("mask",))
