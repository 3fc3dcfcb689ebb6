"""Contrastive objectives on embeddings by role, with cross-device negatives, objective-blind.

:func:`contrastive_loss` is the function GradCache and the plain path both call: it takes the
embeddings of this process's share of the batch, builds the :class:`ContrastiveView` (documents,
and queries when an objective asks, gathered from every process with gradient; the batch fields the
objectives declare gathered beside them; the label offset of this process's queries) and sums the
stage's weighted objectives, looked up in the ``OBJECTIVES`` table. On one process the view is the
batch itself.

Equivalence with one process on the concatenated batch: the positives and negatives gathered in
rank order are exactly the concatenated batch's; group ids are content hashes, so false-negative
masking agrees across processes; negative owners are shifted to global query indices; and each
process's loss is rescaled by ``W * n_local / n_total`` so that DDP's gradient average equals the
gradient of the global mean even when processes hold different numbers of queries.
"""

from __future__ import annotations

import torch

from vlmbed import dist
from vlmbed.objectives import ContrastiveView, lookup
from vlmbed.types import CONTRASTIVE_ROLES

__all__ = ["CONTRASTIVE_ROLES", "contrastive_loss", "contrastive_view", "global_mean_parts", "weighted_parts"]


def contrastive_view(reps: dict, batch: dict, objectives, gather: bool = True) -> tuple[ContrastiveView, float]:
    """The view every contrastive objective takes, and this process's loss scale.

    ``reps``: query (B, d) or (B, k, d), positive (B, d), negatives (N, d) or absent. ``batch``: the
    fields the objectives declare (``Objective.fields``), e.g. ``group_ids`` (B,) int64 content hashes,
    ``negative_owner`` (N,) local query index of each negative. Every process takes part in the same
    gathers whatever its batch holds.
    """
    specs = [lookup(o.name) for o in objectives]
    q, p = reps["query"], reps["positive"]  # (B, d), (B, d)
    n = reps.get("negatives")
    if n is None:
        n = q.new_zeros((0, q.shape[-1]))  # (0, d): every process takes part in the same gathers
    rows = {}
    for spec in specs:
        rows.update(spec.fields)
    local = {k: batch[k].to(q.device) for k in rows if batch.get(k) is not None}
    all_queries = any(s.all_queries is not None and s.all_queries(o) for s, o in zip(specs, objectives, strict=True))
    if not (gather and dist.is_distributed()):
        view = ContrastiveView(q, p, n if n.shape[0] else None, p, q, 0, dict(local),
                               {k: v for k, v in local.items() if rows[k] == "query"})
        return view, 1.0
    sizes = dist.gather_sizes(q.shape[0])
    nsizes = dist.gather_sizes(n.shape[0])
    offset = dist.rank_offset(sizes)
    n_all = dist.all_gather_with_grad(n, nsizes) if max(nsizes) > 0 else n  # (sum N, d)
    fields = {}
    for name, kind in sorted(rows.items()):  # the same order on every process
        value = local.get(name)
        if kind == "query":
            fields[name] = dist.all_gather_no_grad(value, sizes) if value is not None else None
        elif max(nsizes) > 0:
            shifted = value + offset if kind == "query_index" and value is not None else value
            fields[name] = dist.all_gather_no_grad(shifted, nsizes) if shifted is not None else None
        else:
            fields[name] = value + offset if kind == "query_index" and value is not None else value
    view = ContrastiveView(
        query=q, positive=dist.all_gather_with_grad(p, sizes),  # (sum B, d)
        negatives=n_all if n_all.shape[0] else None, local_positive=p,
        queries=dist.all_gather_with_grad(q, sizes) if all_queries else q, offset=offset,
        fields={k: v for k, v in fields.items() if v is not None},
        local={k: v for k, v in local.items() if rows[k] == "query"},
    )
    # DDP averages gradients over processes: rescale so the average is the gradient of the global mean
    return view, len(sizes) * q.shape[0] / max(1, sum(sizes))


def weighted_parts(objectives, outputs, batch: dict, zero: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Call every objective of the stage through the table; named parts plus ``loss`` = sum of weight * part.

    ``zero``: the float32 scalar the sum starts from (it may carry a zero-weighted term). Two objectives with
    the same part name would collide: a clear error rather than a silent overwrite."""
    parts: dict[str, torch.Tensor] = {}
    total = zero
    for obj in objectives:
        for name, value in lookup(obj.name).fn(obj, outputs, batch).items():
            if name in parts:
                raise ValueError(f"objective {obj.name!r} returns a part {name!r} that another objective of the "
                                 "stage returns too; give the parts distinct names")
            parts[name] = value
            total = total + obj.weight * value
    if scale != 1.0:
        parts = {k: v * scale for k, v in parts.items()}
    parts["loss"] = total * scale
    return parts


def contrastive_loss(reps: dict, batch: dict, objectives, gather: bool = True) -> dict[str, torch.Tensor]:
    """Weighted sum of the stage's contrastive objectives and their named parts; ``loss`` is what to
    backpropagate. The function GradCache and the plain path both call."""
    view, scale = contrastive_view(reps, batch, objectives, gather)
    zero = reps["query"].new_zeros((), dtype=torch.float32)
    return weighted_parts(objectives, view, batch, zero, scale)


def global_mean_parts(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss parts averaged over processes (the concatenated batch's values), as floats for logging."""
    return {k: float(dist.mean_across(v)) for k, v in parts.items()}
