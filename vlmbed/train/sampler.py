"""A shuffling sampler whose order is a pure function of (seed, epoch): resume can find its place."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    def __init__(self, n: int, seed: int = 0):
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n
