r"""MuCo: multi-turn contrastive learning, several embeddings per sequence (METHODS.md section 4).

**Pre-training form** (``form: turns``). Row :math:`i` holds image :math:`T_i` and k query/target pairs as
k turns; the query embedding of turn j, :math:`f(\bar q_i^j)`, reads the ``<|emb|>`` after the j-th query
(it has seen the image and queries :math:`\le j`), the target embedding :math:`f(\bar p_i^j)` the
``<|emb|>`` after the j-th target. With the flattened index :math:`a = (i, j)`:

.. math::

    \mathcal{L} = -\frac{1}{|B|}\sum_{a}\log\frac{\exp(q_a\cdot p_a/\tau)}
        {\sum_{b} m_{ab}\exp(q_a\cdot p_b/\tau) + \sum_n \exp(q_a\cdot n_n/\tau)}

where :math:`m_{ab}=0` for :math:`b\ne a` of the same image (``group_ids``: same-image logit masking,
MuCo's ``create_asymmetric_intra_class_mask``), for padded turns of rows with fewer than k turns, and (with
``mask_duplicate_targets``) for targets whose token content equals :math:`a`'s own target (an identical
input is not a negative), else 1. One direction (query -> target), as in the code.

**Fine-tuning form** (``form: reconstruct``). Each query and positive carries two embeddings: turn 1
(:math:`q`, :math:`p`; the one used at inference) and the reconstruction turn (:math:`q'`, :math:`p'`),
written after the masked counterpart. ``loss: code`` sums four InfoNCE terms, each over one form
(:math:`q\cdot P`, :math:`q\cdot P'`, :math:`q'\cdot P`, :math:`q'\cdot P'`, each row extended by the hard
negatives); ``loss: paper`` is one softmax over both forms of every target, minus the own counterpart
:math:`p_i^-`, averaged over the :math:`4B` pairs (Eq. 6-8).

Pure functions of embeddings: GradCache and cross-device gathering reuse them with no model.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vlmbed.objectives.base import ContrastiveView, Objective, ObjectiveSettings
from vlmbed.objectives.infonce import infonce_logits

NEG_INF = float("-inf")


class MuCoConfig(ObjectiveSettings):
    name: Literal["muco"] = "muco"
    weight: float = 1.0
    temperature: float = Field(0.02, gt=0)
    form: Literal["turns", "reconstruct"] = "turns"  # turns: k pairs per image (pre-training); reconstruct: FT
    turns: int | None = Field(7, gt=0)  # pairs sampled per image and step (None: all the record has)
    shuffle_turns: bool = True  # the sampled pairs in random order (queries and targets alike)
    compounded: bool = True  # false: per-turn block mask (needs model.attention=block, model.block_causal=true)
    mask_same_image: bool = True  # same-image pairs are not each other's negatives
    mask_duplicate_targets: bool = True  # a target identical (as input) to the query's own is not a negative
    loss: Literal["code", "paper"] = "code"  # reconstruct form: four softmaxes (code) or one (paper)
    masking: Literal["code", "paper"] = "code"  # code: whole span w.p. 0.5, else Bernoulli words; paper: 50% words
    mask_ratio: float = Field(0.5, ge=0, le=1)
    prompt: Literal["code", "paper"] = "code"  # wording of the reconstruction instruction (pi_2)


def turn_logits(query: torch.Tensor, positive: torch.Tensor, group_ids: torch.Tensor | None,
                positive_group_ids: torch.Tensor | None, counts_all: torch.Tensor | None,
                keys: torch.Tensor | None = None, keys_all: torch.Tensor | None = None,
                negatives: torch.Tensor | None = None, temperature: float = 0.02, offset: int = 0) -> torch.Tensor:
    """Masked logits (B*k, P*k + N) of flattened turns; row ``i*k + j``'s target is column ``(offset+i)*k + j``.

    ``query`` (B, k, d), ``positive`` (P, k, d) gathered; ``group_ids`` (B,) / ``positive_group_ids`` (P,)
    images (None: no same-image mask); ``counts_all`` (P,) real turns per gathered row; ``keys`` (B, k) /
    ``keys_all`` (P, k) target content keys (None: no duplicate mask); ``negatives`` (N, d).
    """
    b, k, d = query.shape
    p = positive.shape[0]
    groups = groups_all = None
    if group_ids is not None:
        groups = group_ids.repeat_interleave(k)  # (B*k,)
        groups_all = (positive_group_ids if positive_group_ids is not None else group_ids).repeat_interleave(k)
    logits = infonce_logits(query.reshape(b * k, d), positive.reshape(p * k, d), negatives, group_ids=groups,
                            positive_group_ids=groups_all, temperature=temperature, offset=offset * k)
    targets = torch.arange(b * k, device=query.device) + offset * k  # (B*k,)
    off = torch.zeros((b * k, p * k), dtype=torch.bool, device=query.device)  # (B*k, P*k) columns to drop
    if counts_all is not None:
        valid = torch.arange(k, device=query.device).unsqueeze(0) < counts_all.unsqueeze(1)  # (P, k)
        off |= ~valid.reshape(1, p * k)
    if keys is not None and keys_all is not None:
        dup = keys.reshape(b * k, 1) == keys_all.reshape(1, p * k)  # (B*k, P*k)
        dup[torch.arange(b * k, device=query.device), targets] = False
        off |= dup
    off = F.pad(off, (0, logits.shape[1] - p * k))  # (B*k, P*k + N): hard negatives stay
    return logits.masked_fill(off, NEG_INF)


def turns_loss(query, positive, counts, counts_all, group_ids=None, positive_group_ids=None, keys=None,
               keys_all=None, negatives=None, temperature: float = 0.02, offset: int = 0) -> dict[str, torch.Tensor]:
    """``muco``: mean over the real turns of this process's rows (``counts`` (B,) turns per local row)."""
    b, k, _ = query.shape
    logits = turn_logits(query, positive, group_ids, positive_group_ids, counts_all, keys, keys_all, negatives,
                         temperature, offset)
    targets = torch.arange(b * k, device=query.device) + offset * k  # (B*k,)
    real = (torch.arange(k, device=query.device).unsqueeze(0) < counts.unsqueeze(1)).reshape(-1)  # (B*k,)
    return {"muco": F.cross_entropy(logits[real].float(), targets[real])}


def reconstruct_loss(query, positive, group_ids, positive_group_ids, negatives=None, temperature: float = 0.02,
                     offset: int = 0, loss: str = "code") -> dict[str, torch.Tensor]:
    """The four pair combinations of the fine-tuning form; ``query`` (B, 2, d), ``positive`` (P, 2, d)."""
    q, q2, p, p2 = query[:, 0], query[:, 1], positive[:, 0], positive[:, 1]  # (B, d) x2, (P, d) x2
    n_pos = positive.shape[0]
    targets = torch.arange(q.shape[0], device=q.device) + offset  # (B,)
    out = {}
    if loss == "code":  # each softmax over one form of the targets: p_i^- is never a candidate
        for name, a, docs in (("q_p", q, p), ("q_p2", q, p2), ("q2_p", q2, p), ("q2_p2", q2, p2)):
            logits = infonce_logits(a, docs, negatives, group_ids=group_ids, positive_group_ids=positive_group_ids,
                                    temperature=temperature, offset=offset)
            out[f"muco_{name}"] = F.cross_entropy(logits.float(), targets)
        return out
    both = torch.cat([p, p2])  # (2P, d): both forms of every target
    groups_both = torch.cat([positive_group_ids, positive_group_ids])  # the own counterpart shares the group
    parts = []
    for a in (q, q2):
        for shift in (0, n_pos):  # target p_i (column offset+i) or p'_i (column P+offset+i)
            logits = infonce_logits(a, both, negatives, group_ids=group_ids, positive_group_ids=groups_both,
                                    temperature=temperature, offset=offset + shift)
            parts.append(F.cross_entropy(logits.float(), targets + shift))
    out["muco"] = torch.stack(parts).mean()
    return out


def objective(cfg: MuCoConfig, view: ContrastiveView, batch: dict | None = None) -> dict[str, torch.Tensor]:
    """The table's entry: ``muco`` (turns; paper loss) or ``muco_q_p`` ... ``muco_q2_p2`` (code loss)."""
    if view.query.dim() != 3:
        raise ValueError("the muco objective needs several embeddings per row (B, k, d): use the `turns` collator "
                         "(it sets the <|emb|> positions)")
    groups, groups_all = view.local.get("group_ids"), view.fields.get("group_ids")
    if cfg.form == "reconstruct":
        if groups is None:  # only the own counterpart is masked in the paper form
            groups = torch.arange(view.query.shape[0], device=view.query.device) + view.offset
            groups_all = torch.arange(view.positive.shape[0], device=view.query.device)
        return reconstruct_loss(view.query, view.positive, groups, groups_all, view.negatives, cfg.temperature,
                                view.offset, cfg.loss)
    if not cfg.mask_same_image:
        groups = groups_all = None
    keys = (view.local.get("target_keys"), view.fields.get("target_keys")) if cfg.mask_duplicate_targets else (None,
                                                                                                               None)
    return turns_loss(view.query, view.positive, view.local["turn_counts"], view.fields["turn_counts"], groups,
                      groups_all, keys[0], keys[1], view.negatives, cfg.temperature, view.offset)


OBJECTIVE = Objective(
    config=MuCoConfig, fn=objective, kind="contrastive",
    fields={"group_ids": "query", "turn_counts": "query", "target_keys": "query"},
    tokens=("mark", "mask"), collator="turns",
)
