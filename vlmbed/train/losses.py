"""Contrastive objectives on embeddings by role, with cross-device negatives.

:func:`contrastive_loss` is the function GradCache and the plain path both call: it takes the
embeddings of this process's share of the batch, gathers documents (and, for the reverse
direction, queries) from every process with gradient, sets the label offset of this process's
queries, and sums the stage's weighted objectives. On one process it is the objective itself.

Equivalence with one process on the concatenated batch: the positives and negatives gathered in
rank order are exactly the concatenated batch's; group ids are content hashes, so false-negative
masking agrees across processes; negative owners are shifted to global query indices; and each
process's loss is rescaled by ``W * n_local / n_total`` so that DDP's gradient average equals the
gradient of the global mean even when processes hold different numbers of queries.
"""

from __future__ import annotations

import torch

from vlmbed import dist
from vlmbed.objectives import OBJECTIVES

CONTRASTIVE_ROLES = ("query", "positive", "negatives")


def contrastive_loss(reps: dict, meta: dict, objectives, gather: bool = True) -> dict[str, torch.Tensor]:
    """Weighted sum of the objectives and their named parts; ``loss`` is what to backpropagate.

    ``reps``: query (B, d), positive (B, d), negatives (N, d) or absent. ``meta``: ``group_ids`` (B,)
    int64 content hashes, ``negative_owner`` (N,) local query index of each negative.
    """
    q, p = reps["query"], reps["positive"]  # (B, d), (B, d)
    n = reps.get("negatives")
    if n is None:
        n = q.new_zeros((0, q.shape[-1]))  # (0, d): every process takes part in the same gathers
    groups = meta["group_ids"].to(q.device)  # (B,)
    owner = meta["negative_owner"].to(q.device)  # (N,)
    # content keys of positives (B,) and hard negatives (N,): a hard negative repeating a positive of the
    # query's group is masked like an in-batch false negative (objectives/infonce.py)
    pkeys, nkeys = (meta[k].to(q.device) if meta.get(k) is not None else None
                    for k in ("positive_keys", "negative_keys"))
    gathered = gather and dist.is_distributed()
    if gathered:
        sizes = dist.gather_sizes(q.shape[0])
        offset = dist.rank_offset(sizes)
        nsizes = dist.gather_sizes(n.shape[0])
        p_all = dist.all_gather_with_grad(p, sizes)  # (sum B, d)
        q_all = dist.all_gather_with_grad(q, sizes) if _any_symmetric(objectives) else q
        groups_all = dist.all_gather_no_grad(groups, sizes)  # (sum B,)
        n_all = dist.all_gather_with_grad(n, nsizes) if max(nsizes) > 0 else n  # (sum N, d)
        owner_all = dist.all_gather_no_grad(owner + offset, nsizes) if max(nsizes) > 0 else owner
        scale = len(sizes) * q.shape[0] / max(1, sum(sizes))
        pkeys = dist.all_gather_no_grad(pkeys, sizes) if pkeys is not None else None  # (sum B,)
        nkeys = dist.all_gather_no_grad(nkeys, nsizes) if nkeys is not None and max(nsizes) > 0 else nkeys
    else:
        offset, p_all, q_all, groups_all, n_all, owner_all, scale = 0, p, q, groups, n, owner, 1.0
    parts: dict[str, torch.Tensor] = {}
    total = q.new_zeros((), dtype=torch.float32)
    for obj in objectives:
        params = obj.model_dump(exclude={"name", "weight"})
        symmetric = params.pop("symmetric", False)
        masked = params.pop("mask_same_group", True)
        fn = OBJECTIVES[obj.name]
        out = fn(q, p_all, negatives=n_all if n_all.shape[0] else None, negative_owner=owner_all,
                 group_ids=groups if masked else None, positive_group_ids=groups_all if masked else None,
                 offset=offset, positive_keys=pkeys, negative_keys=nkeys, **params)
        if symmetric:  # documents -> queries of the whole (gathered) batch, no hard negatives
            rev = fn(p, q_all, group_ids=groups if masked else None,
                     positive_group_ids=groups_all if masked else None, offset=offset,
                     **{k: v for k, v in params.items() if k != "share_negatives"})
            out.update({f"{k}_rev": v for k, v in rev.items()})
        for name, value in out.items():
            parts[name] = value
            total = total + obj.weight * value
    parts = {k: v * scale for k, v in parts.items()} if gathered and scale != 1.0 else parts
    parts["loss"] = total * scale
    return parts


def _any_symmetric(objectives) -> bool:
    return any(getattr(o, "symmetric", False) for o in objectives)


def global_mean_parts(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss parts averaged over processes (the concatenated batch's values), as floats for logging."""
    return {k: float(dist.mean_across(v)) for k, v in parts.items()}
