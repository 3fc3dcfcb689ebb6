r"""EOS-bridged reconstruction (CoCoA stage 2): masked next-token prediction over Block B only.

Each row is ``x = [A ; e ; B]``: A = the query (image + text, formatted as the query role), e = the bridge
token (the same token stage 3 appends and pools, ``model.tokens.eos``), B = the positive's text. Under the
collaborative block mask (:func:`vlmbed.models.blocks.bridge_layout`) B never attends to A, so whatever B
needs from A must pass through e. A share ``ratio`` (p_B = 0.7) of B's tokens is replaced by ``<|mask|>``:

.. math:: \mathcal{L}_{bridge} = \frac{1}{|M|}\sum_{i\in M} \mathrm{CE}\big(g(h_{i-s}), x_i\big),
          \qquad M \subset \mathrm{positions}(B)

with :math:`s` the label shift (1: MNTP, predict x_i from h_{i-1}, so the first B token is predicted from e;
0: at its own position). The rows, blocks and labels come from the ``bridge`` collator
(:mod:`vlmbed.data.bridge`); the loss reuses :mod:`vlmbed.objectives.mlm`'s functions.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from vlmbed.objectives import mlm
from vlmbed.objectives.base import Objective, ObjectiveSettings


class BridgeConfig(ObjectiveSettings):
    """CoCoA's EOS-bridged reconstruction of the positive text (Block B) through the bridge token."""

    name: Literal["bridge"] = "bridge"
    weight: float = 1.0
    ratio: float = Field(0.7, gt=0, le=1)  # p_B: share of Block-B tokens masked (eos_bridged.py: 0.7)
    shift: Literal[0, 1] = 1  # 1: MNTP (x_i from h_{i-1}; the first B token from EOS); 0: same position
    eos_sees_block_b: bool = True  # EOS -> B allowed (the method figure); false: EOS sees A and itself only


def forward_args(cfg: BridgeConfig, batch: dict) -> dict:
    """The forward computes LM-head logits only at the positions that predict a masked B token."""
    rows, cols, _ = mlm.prediction_positions(batch["mlm_labels"], cfg.shift)
    return {"token_positions": (rows, cols)}


def objective(cfg: BridgeConfig, out, batch: dict) -> dict[str, torch.Tensor]:
    _, _, targets = mlm.prediction_positions(batch["mlm_labels"], cfg.shift)  # (M,)
    return {"bridge": mlm.loss(out.token_logits, targets.to(out.hidden.device))["mlm"]}


OBJECTIVE = Objective(config=BridgeConfig, fn=objective, kind="reconstruction", forward=forward_args,
                      tokens=("mask",), collator="bridge", data="examples")
