r"""InfoNCE with in-batch and explicit hard negatives.

For query :math:`q_i`, positive :math:`p_i` and a pool of hard negatives :math:`n_j`:

.. math::

    \mathcal{L} = -\frac{1}{B}\sum_i \log
        \frac{\exp(q_i\cdot p_i/\tau)}
             {\sum_{k} m_{ik}\exp(q_i\cdot p_k/\tau) + \sum_j h_{ij}\exp(q_i\cdot n_j/\tau)}

where :math:`m_{ik}=0` when :math:`k\neq i` and examples :math:`i, k` share a group (same positive
or same label: a false negative), else 1. :math:`h_{ij}=1` for every negative when negatives are
shared, or only for the query's own negatives otherwise, and :math:`h_{ij}=0` when hard negative
:math:`n_j` is a false negative of query :math:`i`: its content equals the content of a positive
:math:`p_k` of some example :math:`k` in query :math:`i`'s group (:math:`k=i` included), i.e.
:math:`\exists k: g_k = g_i \wedge c(p_k) = c(n_j)` with content keys :math:`c`. Embeddings are
expected L2-normalised, so the dot product is the cosine similarity.

Pure function of embeddings: GradCache, cross-device gathering and tests call it with no model.
``offset`` is the index of this rank's first query among the (gathered) positives.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vlmbed.objectives.base import ContrastiveView, Objective, ObjectiveSettings


class InfoNCEConfig(ObjectiveSettings):
    name: Literal["infonce"] = "infonce"
    weight: float = 1.0
    temperature: float = Field(0.05, gt=0)
    share_negatives: bool = True  # hard negatives of every query are negatives for all queries
    mask_same_group: bool = True  # in-batch items sharing the positive/label, and hard negatives repeating
    # a positive of the query's group, are not negatives
    symmetric: bool = False  # add the document -> query direction


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
    positive_keys: torch.Tensor | None = None,
    negative_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked logits (B, P + N); the target of row i is column ``offset + i``.

    ``group_ids`` (B,) and ``positive_group_ids`` (P,) are the groups of the queries and of the
    (gathered) positives; ``positive_keys`` (P,) and ``negative_keys`` (N,) are content keys of the
    positives and hard negatives. Hard-negative masking needs the groups and both key tensors.
    """
    b = query.shape[0]
    logits = query @ positive.T / temperature  # (B, P)
    targets = torch.arange(b, device=query.device) + offset  # (B,)
    same = None
    if group_ids is not None:
        pos_groups = positive_group_ids if positive_group_ids is not None else group_ids
        same = group_ids.unsqueeze(1) == pos_groups.unsqueeze(0)  # (B, P)
        in_batch_false = same.clone()
        in_batch_false[torch.arange(b, device=query.device), targets] = False  # keep the true positive
        logits = logits.masked_fill(in_batch_false, float("-inf"))
    if negatives is not None and negatives.shape[0] > 0:
        neg_logits = query @ negatives.T / temperature  # (B, N)
        if not share_negatives:
            if negative_owner is None:
                raise ValueError("share_negatives=False needs negative_owner")
            own = negative_owner.unsqueeze(0) == targets.unsqueeze(1)  # (B, N)
            neg_logits = neg_logits.masked_fill(~own, float("-inf"))
        if same is not None and positive_keys is not None and negative_keys is not None:
            neg_logits = neg_logits.masked_fill(false_hard_negatives(same, positive_keys, negative_keys),
                                                float("-inf"))
        logits = torch.cat([logits, neg_logits], dim=1)  # (B, P + N)
    return logits


def false_hard_negatives(same_group: torch.Tensor, positive_keys: torch.Tensor,
                         negative_keys: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: hard negative j repeats a positive of query i's group.

    ``mask[i, j] = any_k same_group[i, k] and positive_keys[k] == negative_keys[j]``, computed as a
    (B, P) @ (P, N) product of 0/1 matrices (exact: counts stay far below float32's 2**24).
    """
    if positive_keys.shape[0] != same_group.shape[1]:
        raise ValueError(f"positive_keys has {positive_keys.shape[0]} entries for {same_group.shape[1]} "
                         "positives: pass one content key per (gathered) positive")
    equal = (positive_keys.unsqueeze(1) == negative_keys.unsqueeze(0)).float()  # (P, N)
    return (same_group.float() @ equal) > 0  # (B, N)


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
    positive_keys: torch.Tensor | None = None,
    negative_keys: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Named loss part ``infonce`` (query -> document). The reverse direction (``symmetric`` in the
    config) is this same function with the roles swapped (:func:`objective`)."""
    logits = infonce_logits(
        query, positive, negatives, negative_owner, group_ids, positive_group_ids, temperature,
        share_negatives, offset, positive_keys, negative_keys,
    )
    targets = torch.arange(query.shape[0], device=query.device) + offset  # (B,)
    return {"infonce": F.cross_entropy(logits.float(), targets)}


def objective(cfg: InfoNCEConfig, view: ContrastiveView, batch: dict | None = None) -> dict[str, torch.Tensor]:
    """The table's entry: ``infonce`` (query -> documents), and ``infonce_rev`` (document -> every query,
    no hard negatives) when ``symmetric``."""
    groups = view.local.get("group_ids") if cfg.mask_same_group else None
    groups_all = view.fields.get("group_ids") if cfg.mask_same_group else None
    out = loss(view.query, view.positive, view.negatives, view.fields.get("negative_owner"), groups, groups_all,
               cfg.temperature, cfg.share_negatives, view.offset, view.fields.get("positive_keys"),
               view.fields.get("negative_keys"))
    if cfg.symmetric:
        rev = loss(view.local_positive, view.queries, group_ids=groups, positive_group_ids=groups_all,
                   temperature=cfg.temperature, offset=view.offset)
        out["infonce_rev"] = rev["infonce"]
    return out


OBJECTIVE = Objective(
    config=InfoNCEConfig, fn=objective, kind="contrastive",
    fields={"group_ids": "query", "positive_keys": "query", "negative_keys": "negatives",
            "negative_owner": "query_index"},
    all_queries=lambda cfg: cfg.symmetric,
)
