"""Turn records into batches, keyed by role.

:class:`ContrastiveCollator` turns a list of :class:`~vlmbed.types.Example` into a batch dict keyed by
role (``query``, ``positive``, ``negatives``) plus what objectives need beside the tensors
(``group_ids`` for false-negative masking, ``negative_owner``, ``tasks``). Items become processor
inputs through the model's :class:`~vlmbed.models.inputs.ItemEncoder` (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmbed.models.inputs import DEFAULT_TEMPLATES, ROLE_ALIASES, ItemEncoder, render_chat
from vlmbed.types import DOCUMENT, NEGATIVES, POSITIVE, QUERY, Example

__all__ = ["DEFAULT_TEMPLATES", "ROLE_ALIASES", "ContrastiveCollator", "ItemEncoder", "group_ids", "group_key",
           "render_chat"]


@dataclass
class ContrastiveCollator:
    """Examples -> {"query": inputs, "positive": inputs, "negatives": inputs | None, ...}."""

    encoder: ItemEncoder
    num_negatives: int | None = None  # None: every negative of the example; k: at most k each

    def __call__(self, examples: list[Example]) -> dict:
        queries = [ex.query for ex in examples]
        positives = [ex.positive for ex in examples]
        negatives, owner = [], []
        for i, ex in enumerate(examples):
            negs = ex.negatives if self.num_negatives is None else ex.negatives[: self.num_negatives]
            negatives.extend(negs)
            owner.extend([i] * len(negs))
        return {
            QUERY: self.encoder(queries, QUERY),
            POSITIVE: self.encoder(positives, DOCUMENT),
            NEGATIVES: self.encoder(negatives, DOCUMENT) if negatives else None,
            "negative_owner": torch.tensor(owner, dtype=torch.long),
            "group_ids": group_ids(examples),
            "tasks": [ex.task for ex in examples],
        }


def group_key(ex: Example) -> str:
    """Same key, same answer: equal label within a task, or equal positive content."""
    return f"label:{ex.task}:{ex.label}" if ex.label is not None else f"pos:{ex.positive.key()}"


def group_ids(examples: list[Example]) -> torch.Tensor:
    """Integer group per example (numbered in batch order); equal :func:`group_key`, same group."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(group_key(ex), len(ids)) for ex in examples], dtype=torch.long)
