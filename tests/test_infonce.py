"""InfoNCE: in-batch + hard negatives, false-negative masking, against a direct computation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vlmbed.objectives import OBJECTIVES
from vlmbed.objectives.infonce import infonce_logits, loss


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def _reference(q, p, n, owner, groups, tau, share, offset=0):
    """Loop-by-loop definition from the docstring formula; query i's positive is p[offset + i]."""
    total = 0.0
    for i in range(q.shape[0]):
        mine = offset + i
        pos = math.exp(float(q[i] @ p[mine]) / tau)
        denom = pos
        for k in range(p.shape[0]):
            if k != mine and not (groups is not None and groups[k] == groups[mine]):
                denom += math.exp(float(q[i] @ p[k]) / tau)
        for j in range(n.shape[0] if n is not None else 0):
            if share or owner[j] == i:
                denom += math.exp(float(q[i] @ n[j]) / tau)
        total += -math.log(pos / denom)
    return total / q.shape[0]


def test_matches_direct_computation_with_masks_and_hard_negatives():
    q, p, n = _unit(6, 8, seed=1), _unit(6, 8, seed=2), _unit(9, 8, seed=3)
    owner = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5, 5])
    groups = torch.tensor([0, 1, 0, 2, 3, 1])
    for share in (True, False):
        got = loss(q, p, n, owner, groups, temperature=0.1, share_negatives=share)["infonce"].item()
        assert abs(got - _reference(q, p, n, owner, groups, 0.1, share)) < 1e-5


def test_same_group_items_are_not_negatives():
    q = _unit(4, 8)
    q[1] = q[0]  # two identical queries ...
    p = q.clone()  # ... sharing the same positive
    groups = torch.tensor([0, 0, 1, 2])
    logits = infonce_logits(q, p, group_ids=groups, temperature=0.05)
    assert torch.isinf(logits[0, 1]) and torch.isinf(logits[1, 0])
    assert torch.isfinite(logits[0, 0]) and torch.isfinite(logits[1, 1])
    # without the mask, a shared positive caps the loss away from zero; with it, perfect retrieval -> ~0
    masked = loss(q, p, group_ids=groups, temperature=0.01)["infonce"]
    unmasked = loss(q, p, temperature=0.01)["infonce"]
    assert masked < 1e-3 < unmasked


def test_offset_selects_the_local_slice_of_gathered_positives():
    q, p = _unit(2, 8, seed=4), _unit(6, 8, seed=5)
    gathered = loss(q, p, temperature=0.1, offset=2)["infonce"].item()  # this rank's positives are p[2:4]
    assert abs(gathered - _reference(q, p, None, None, None, 0.1, True, offset=2)) < 1e-5
    assert infonce_logits(q, p, temperature=0.1, offset=2).shape == (2, 6)
    local = loss(q, p[2:4], temperature=0.1)["infonce"].item()
    assert abs(local - _reference(q, p[2:4], None, None, None, 0.1, True)) < 1e-5
    assert gathered > local + 1e-3  # four more negatives in the denominator


def test_symmetric_adds_reverse_direction_and_registry():
    from vlmbed.config import InfoNCEConfig
    from vlmbed.train.losses import contrastive_loss

    q, p = _unit(4, 8, seed=6), _unit(4, 8, seed=7)
    meta = {"group_ids": torch.arange(4), "negative_owner": torch.zeros(0, dtype=torch.long)}
    out = contrastive_loss({"query": q, "positive": p}, meta, [InfoNCEConfig(temperature=0.1, symmetric=True)])
    assert set(out) == {"infonce", "infonce_rev", "loss"}
    assert torch.allclose(out["infonce"], loss(q, p, temperature=0.1)["infonce"])
    assert OBJECTIVES["infonce"].config is InfoNCEConfig and OBJECTIVES["infonce"].kind == "contrastive"
    assert torch.allclose(out["infonce_rev"], loss(p, q, temperature=0.1)["infonce"])


def test_gradients_flow_to_query_positive_and_negatives():
    q, p, n = (_unit(3, 8, seed=s).requires_grad_() for s in (8, 9, 10))
    loss(q, p, n, torch.tensor([0, 1, 2]))["infonce"].backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, p, n))
