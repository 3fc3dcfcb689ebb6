r"""Soft targets from a judge's scores (UniME-V2): symmetric KL over each query's positive and hard negatives.

For query :math:`q_i` with candidates :math:`[c_i^+, n_{i1}, \dots, n_{ik}]` (its positive, then its own
``k`` hard negatives) and the judge's score of each, :math:`u_{i0}, \dots, u_{ik}` (UniME-V2's
``query_pos_scores`` and ``hard_negatives_scores``: an MLLM's probability that the candidate matches):

.. math::

    P_i = \mathrm{softmax}\big(\cos(q_i, \cdot)/\tau\big), \qquad Q_i = \mathrm{softmax}(u_i/\tau_u)

    \mathcal{L} = \frac{1}{B}\sum_i \tfrac12\big(\mathrm{KL}(Q_i\|P_i) + \mathrm{KL}(P_i\|Q_i)\big)

The released loss applies the same temperature to both (``temperature 0.02`` in its training scripts) and
adds ``1e-8`` inside the logarithms; here the logarithms are exact (log-softmax). The scores arrive as the
batch field ``judge_scores`` (B, 1 + k), made by the ``judged`` collator from ``unime_v2`` rows; each
query's own negatives are found through ``negative_owner``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vlmbed.objectives.base import ContrastiveView, Objective, ObjectiveSettings


class JudgeKLConfig(ObjectiveSettings):
    name: Literal["judge_kl"] = "judge_kl"
    weight: float = 1.0
    temperature: float = Field(0.02, gt=0)  # model's tau (UniME-V2 scripts: --temperature 0.02)
    judge_temperature: float | None = Field(None, gt=0)  # judge scores' tau (None: the model's, as released)


def symmetric_kl(model_logits: torch.Tensor, judge_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of 0.5 * (KL(Q||P) + KL(P||Q)); P = softmax(model_logits), Q = softmax(judge_logits)."""
    log_p = F.log_softmax(model_logits.float(), dim=-1)  # (B, C)
    log_q = F.log_softmax(judge_logits.float(), dim=-1)  # (B, C)
    kl_qp = (log_q.exp() * (log_q - log_p)).sum(-1)
    kl_pq = (log_p.exp() * (log_p - log_q)).sum(-1)
    return (0.5 * (kl_qp + kl_pq)).mean()


def own_candidates(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, owner: torch.Tensor,
                   offset: int, k: int) -> torch.Tensor:
    """(B, 1 + k, d): each local query's positive, then its own ``k`` hard negatives in order."""
    b = query.shape[0]
    targets = torch.arange(b, device=query.device) + offset  # (B,)
    own = owner.to(query.device).unsqueeze(0) == targets.unsqueeze(1)  # (B, N)
    counts = own.sum(dim=1)
    if bool((counts != k).any()):
        raise ValueError(f"judge_kl: every query needs exactly {k} hard negatives (one per judge score after the "
                         f"positive's), got {counts.tolist()}; set data.num_negatives={k}")
    index = own.nonzero()[:, 1].view(b, k)  # (B, k), row-major order keeps each query's negatives in order
    return torch.cat([positive[targets].unsqueeze(1), negatives[index]], dim=1)


def objective(cfg: JudgeKLConfig, view: ContrastiveView, batch: dict | None = None) -> dict[str, torch.Tensor]:
    """The table's entry: ``judge_kl`` per local query over its positive and own hard negatives."""
    scores = view.local.get("judge_scores")
    if scores is None or view.negatives is None or "negative_owner" not in view.fields:
        raise ValueError("judge_kl needs judge scores and hard negatives: read the data with the unime_v2 format "
                         "(its stage uses the `judged` collator) and keep data.num_negatives > 0")
    scores = scores.to(view.query.device)  # (B, 1 + k)
    cands = own_candidates(view.query, view.positive, view.negatives, view.fields["negative_owner"], view.offset,
                           scores.shape[1] - 1)  # (B, 1 + k, d)
    sims = torch.einsum("bd,bcd->bc", view.query.float(), cands.float())  # (B, 1 + k)
    tau_u = cfg.judge_temperature or cfg.temperature
    return {"judge_kl": symmetric_kl(sims / cfg.temperature, scores / tau_u)}


OBJECTIVE = Objective(
    config=JudgeKLConfig, fn=objective, kind="contrastive",
    fields={"judge_scores": "query", "negative_owner": "query_index"},
    collator="judged",
)
