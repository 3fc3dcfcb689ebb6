"""Turn records into processor inputs, keyed by role.

:class:`ItemEncoder` formats items with the per-role template and runs the family's processor;
:class:`ContrastiveCollator` turns a list of :class:`~vlmbed.types.Example` into a batch dict keyed by
role (``query``, ``positive``, ``negatives``) plus what objectives need beside the tensors
(``group_ids`` for false-negative masking, ``negative_owner``, ``tasks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vlmbed.types import Example, Item

DEFAULT_TEMPLATES = {"query": "{instruction}{image}{text}", "document": "{instruction}{image}{text}"}
ROLE_ALIASES = {"positive": "document", "negatives": "document", "candidate": "document", "target": "document"}


@dataclass
class ItemEncoder:
    """Formats items for a role and calls the processor. Right padding, explicit EOS when asked."""

    processor: object
    image_placeholder: str
    templates: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    append_eos: str | None = None  # token appended to every sequence (for last/EOS pooling)
    max_text_tokens: int | None = None

    def format(self, item: Item, role: str) -> str:
        role = ROLE_ALIASES.get(role, role)
        if role not in self.templates:
            raise ValueError(f"no template for role {role!r}; known roles: {', '.join(sorted(self.templates))}")
        text = self._truncate(item.text)
        out = self.templates[role].format(
            instruction=item.instruction, image=self.image_placeholder if item.has_image else "", text=text
        )
        if self.append_eos:
            out += self.append_eos
        return out

    def _truncate(self, text: str) -> str:
        if not self.max_text_tokens or len(text) <= self.max_text_tokens:
            return text
        tok = self.processor.tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= self.max_text_tokens else tok.decode(ids[: self.max_text_tokens])

    def __call__(self, items: list[Item], role: str) -> dict[str, torch.Tensor]:
        texts = [self.format(item, role) for item in items]
        images = [item.load_image() for item in items if item.has_image]
        enc = self.processor(
            text=texts, images=images or None, padding=True, return_tensors="pt", padding_side="right"
        )
        return dict(enc)


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
            "query": self.encoder(queries, "query"),
            "positive": self.encoder(positives, "document"),
            "negatives": self.encoder(negatives, "document") if negatives else None,
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
