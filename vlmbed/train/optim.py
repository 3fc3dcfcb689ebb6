"""AdamW with decoupled weight decay (none on biases and norms) and a warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer, cfg, total_steps: int):
    warmup = int(round(cfg.warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps, warmup))
