"""Pooling: hidden states (B, T, d) + padding mask (B, T) -> embeddings (B, d) or (B, k, d)."""

from __future__ import annotations

import torch


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last non-pad token of each row (works for right and left padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    last = (mask.long() * positions).argmax(dim=1)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, d)


def mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over non-pad tokens."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, d)


def at_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Hidden states at marked positions (B, k); -1 marks padding and yields a zero vector."""
    safe = positions.clamp(min=0)  # (B, k)
    picked = torch.gather(hidden, 1, safe.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, k, d)
    return picked * (positions >= 0).unsqueeze(-1).to(hidden.dtype)


def marked_positions(input_ids: torch.Tensor, mark_id: int) -> torch.Tensor:
    """Positions (B, k) of every ``mark_id`` token per row, padded with -1 to the row maximum."""
    hits = input_ids == mark_id  # (B, T)
    k = int(hits.sum(dim=1).max().item()) if hits.any() else 0
    out = torch.full((input_ids.shape[0], k), -1, dtype=torch.long, device=input_ids.device)
    for row in range(input_ids.shape[0]):
        idx = hits[row].nonzero(as_tuple=True)[0]
        out[row, : len(idx)] = idx
    return out


def last_marked(input_ids: torch.Tensor, mark_id: int) -> torch.Tensor:
    """Position (B,) of the last ``mark_id`` token of each row; an error naming the row when one has none."""
    hits = input_ids == mark_id  # (B, T)
    missing = (~hits.any(dim=1)).nonzero(as_tuple=True)[0]
    if missing.numel():
        raise ValueError(f"pooling 'marked': row {int(missing[0])} has no <|emb|> (mark) token; put the mark token "
                         "in the role's template (model.templates) or use pooling last/mean")
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
    return (hits.long() * positions).argmax(dim=1)  # (B,)


POOLING = {"last": last_token, "mean": mean}
