r"""Hard-negative InfoNCE with an online false-negative filter (UniME stage 2).

For query :math:`q_i` with positive :math:`c_i^+` and the candidates :math:`c_j` of the gathered global
batch (every process's positives, then its explicit hard negatives when ``pool: documents``), all
L2-normalised so that dot products are cosines:

.. math::

    \alpha_i = \cos(q_i, c_i^+) + \beta \qquad
    C^*_i = \{\, j \neq i^+ : \cos(q_i, c_j) > \alpha_i \,\} \quad\text{(filtered false negatives)}

    H_i = \mathrm{top}_k\{\cos(q_i, c_j) : j \notin \{i^+\} \cup C^*_i \cup G_i\}

    \mathcal{L} = -\frac{1}{B}\sum_i \log\frac{e^{\cos(q_i, c_i^+)/\tau}}
        {e^{\cos(q_i, c_i^+)/\tau} + \sum_{h \in H_i} e^{\cos(q_i, c_h)/\tau}}

:math:`G_i`: candidates known to be the same as the positive (equal group / content key; ``mask_same_group``,
a vlmbed addition the paper does not have). When fewer than :math:`k` valid candidates remain, the valid ones
are repeated in rank order until there are :math:`k` (the paper's rule); the positive and the filtered
candidates are never taken. A query with no valid candidate at all has a loss of zero.
Other in-batch candidates are *not* in the denominator (pure hard-negative InfoNCE).

Mining is online with the current model: the selection uses the similarities without gradient, the loss
the same similarities with gradient. The released example loss gathered without putting the local tensor
back (no gradient reached the local embeddings across GPUs) and let ``topk`` pick ``-inf`` entries (the
positive or filtered candidates) when fewer than :math:`k` remained; here the view's gather carries the
gradient and the duplication rule holds.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vlmbed.objectives.base import ContrastiveView, Objective, ObjectiveSettings
from vlmbed.objectives.infonce import false_hard_negatives


class HardNegativeConfig(ObjectiveSettings):
    name: Literal["hardneg_infonce"] = "hardneg_infonce"
    weight: float = 1.0
    temperature: float = Field(0.02, gt=0)  # released example loss (the paper gives none)
    k: int = Field(8, gt=0)  # hard negatives per query
    beta: float | None = 0.1  # false-negative margin over cos(q, pos); None: no filter
    pool: Literal["documents", "positives"] = "documents"  # documents: positives + explicit hard negatives
    mask_same_group: bool = True  # candidates with the positive's group / content are never negatives


def hard_negative_indices(sims: torch.Tensor, positive_col: torch.Tensor, k: int, beta: float | None,
                          excluded: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which candidates each query takes as its ``k`` hard negatives.

    ``sims`` (B, M) similarities (gradient ignored), ``positive_col`` (B,) column of each query's positive,
    ``excluded`` (B, M) bool: candidates known not to be negatives. Returns ``index`` (B, k) columns (valid
    ones in rank order, repeated cyclically when fewer than ``k`` are valid), ``has_negative`` (B,) bool (at
    least one valid candidate) and ``filtered`` (B, M) bool (the false negatives the filter removed).
    """
    b, m = sims.shape
    s = sims.detach()
    rows = torch.arange(b, device=s.device)
    invalid = torch.zeros_like(s, dtype=torch.bool)
    invalid[rows, positive_col] = True  # the positive is never its own negative
    filtered = torch.zeros_like(invalid)
    if beta is not None:
        pos = s[rows, positive_col]  # (B,)
        filtered = (s > (pos + beta).unsqueeze(1)) & ~invalid  # (B, M)
    invalid = invalid | filtered
    if excluded is not None:
        invalid = invalid | excluded
    n_valid = (~invalid).sum(dim=1)  # (B,)
    width = min(k, m)
    top = s.masked_fill(invalid, float("-inf")).topk(width, dim=1).indices  # (B, width): valid first
    j = torch.arange(k, device=s.device).unsqueeze(0)  # (1, k)
    v = n_valid.clamp(max=width).unsqueeze(1)  # (B, 1)
    src = torch.where(j < v, j, j % v.clamp(min=1))  # (B, k): repeat the valid ones cyclically
    return top.gather(1, src), n_valid > 0, filtered


def loss(query: torch.Tensor, candidates: torch.Tensor, positive_col: torch.Tensor, k: int = 8,
         beta: float | None = 0.1, temperature: float = 0.02,
         excluded: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``hardneg_infonce``: query (B, d), candidates (M, d) with query i's positive at ``positive_col[i]``."""
    sims = query.float() @ candidates.float().T  # (B, M)
    rows = torch.arange(query.shape[0], device=query.device)
    index, has_negative, _ = hard_negative_indices(sims, positive_col, k, beta, excluded)
    neg = sims.gather(1, index).masked_fill(~has_negative.unsqueeze(1), float("-inf"))  # (B, k)
    logits = torch.cat([sims[rows, positive_col].unsqueeze(1), neg], dim=1) / temperature  # (B, 1 + k)
    target = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return {"hardneg_infonce": F.cross_entropy(logits, target)}


def _excluded(cfg: HardNegativeConfig, view: ContrastiveView, n_neg: int) -> torch.Tensor | None:
    """(B, P + N) candidates of the query's group: equal group ids among the positives, hard negatives whose
    content equals a positive of the group."""
    groups, groups_all = view.local.get("group_ids"), view.fields.get("group_ids")
    if not cfg.mask_same_group or groups is None or groups_all is None:
        return None
    same = groups.unsqueeze(1) == groups_all.unsqueeze(0)  # (B, P)
    neg = torch.zeros((same.shape[0], n_neg), dtype=torch.bool, device=same.device)
    keys, neg_keys = view.fields.get("positive_keys"), view.fields.get("negative_keys")
    if n_neg and keys is not None and neg_keys is not None:
        neg = false_hard_negatives(same, keys, neg_keys)
    return torch.cat([same, neg], dim=1)


def objective(cfg: HardNegativeConfig, view: ContrastiveView, batch: dict | None = None) -> dict[str, torch.Tensor]:
    """The table's entry: hard negatives mined from every process's documents, per local query."""
    candidates = view.positive  # (P, d)
    n_neg = 0
    if cfg.pool == "documents" and view.negatives is not None:
        candidates = torch.cat([candidates, view.negatives])  # (P + N, d)
        n_neg = view.negatives.shape[0]
    positive_col = torch.arange(view.query.shape[0], device=view.query.device) + view.offset  # (B,)
    excluded = _excluded(cfg, view, n_neg)
    if excluded is not None:
        excluded = excluded.to(view.query.device)
    return loss(view.query, candidates, positive_col, cfg.k, cfg.beta, cfg.temperature, excluded)


OBJECTIVE = Objective(
    config=HardNegativeConfig, fn=objective, kind="contrastive",
    fields={"group_ids": "query", "positive_keys": "query", "negative_keys": "negatives"},
)
