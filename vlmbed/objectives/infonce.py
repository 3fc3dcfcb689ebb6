r"""InfoNCE with in-batch and explicit hard negatives.

For query :math:`q_i`, positive :math:`p_i` and a pool of hard negatives :math:`n_j`:

.. math::

    \mathcal{L} = -\frac{1}{B}\sum_i \log
        \frac{\exp(q_i\cdot p_i/\tau)}
             {\sum_{k} m_{ik}\exp(q_i\cdot p_k/\tau) + \sum_j h_{ij}\exp(q_i\cdot n_j/\tau)}

where :math:`m_{ik}=0` when :math:`k\neq i` and examples :math:`i, k` share a group (same positive
or same label: a false negative), else 1; :math:`h_{ij}=1` for every negative when negatives are
shared, or only for the query's own negatives otherwise. Embeddings are expected L2-normalised, so
the dot product is the cosine similarity.

Pure function of embeddings: GradCache, cross-device gathering and tests call it with no model.
``offset`` is the index of this rank's first query among the (gathered) positives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_logits(
    query: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor | None = None,
    negative_owner: torch.Tensor | None = None,
    group_ids: torch.Tensor | None = None,
    positive_group_ids: torch.Tensor | None = None,
    temperature: float = 0.05,
    share_negatives: bool = True,
    offset: int = 0,
) -> torch.Tensor:
    """Masked logits (B, P + N); the target of row i is column ``offset + i``."""
    b = query.shape[0]
    logits = query @ positive.T / temperature  # (B, P)
    targets = torch.arange(b, device=query.device) + offset  # (B,)
    if group_ids is not None:
        pos_groups = positive_group_ids if positive_group_ids is not None else group_ids
        same = group_ids.unsqueeze(1) == pos_groups.unsqueeze(0)  # (B, P)
        same[torch.arange(b, device=query.device), targets] = False  # keep the true positive
        logits = logits.masked_fill(same, float("-inf"))
    if negatives is not None and negatives.shape[0] > 0:
        neg_logits = query @ negatives.T / temperature  # (B, N)
        if not share_negatives:
            if negative_owner is None:
                raise ValueError("share_negatives=False needs negative_owner")
            own = negative_owner.unsqueeze(0) == targets.unsqueeze(1)  # (B, N)
            neg_logits = neg_logits.masked_fill(~own, float("-inf"))
        logits = torch.cat([logits, neg_logits], dim=1)  # (B, P + N)
    return logits


def loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor | None = None,
    negative_owner: torch.Tensor | None = None,
    group_ids: torch.Tensor | None = None,
    positive_group_ids: torch.Tensor | None = None,
    temperature: float = 0.05,
    share_negatives: bool = True,
    offset: int = 0,
) -> dict[str, torch.Tensor]:
    """Named loss part ``infonce`` (query -> document). The reverse direction (``symmetric`` in the
    config) is this same function with the roles swapped, called by ``train.losses.contrastive_loss``."""
    logits = infonce_logits(
        query, positive, negatives, negative_owner, group_ids, positive_group_ids, temperature,
        share_negatives, offset,
    )
    targets = torch.arange(query.shape[0], device=query.device) + offset  # (B,)
    return {"infonce": F.cross_entropy(logits.float(), targets)}
