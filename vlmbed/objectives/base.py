"""The objective contract: what a table row holds and what an objective function receives.

An objective is ``fn(cfg, outputs, batch) -> dict[str, Tensor]``: named, *unweighted* loss parts.
``cfg`` is the objective's own config (a :class:`ObjectiveSettings` subclass read from the recipe),
``batch`` the collated batch of this process. What ``outputs`` is depends on the objective's kind:

- ``contrastive``: a :class:`ContrastiveView`: embeddings by role, with documents (and, when asked,
  queries) gathered from every process, and the batch fields the objective declared, gathered the
  same way. GradCache and cross-device gathering build the view, so they never know which objective
  runs; an objective written on the view is correct on one process, on many, and under GradCache.
- ``reconstruction``: the :class:`vlmbed.models.embedder.EmbedOutput` of one forward on the masked
  inputs. ``forward`` says what the forward must compute for it (e.g. LM-head logits at the masked
  positions), ``prepare`` attaches training-only heads before the optimizer is built.

The stage lists objectives with weights; the loop sums ``weight * part`` over every part of every
objective, backpropagates the sum and logs each part. It never names an objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

KINDS = ("contrastive", "reconstruction")
# how a batch field's rows line up, which says how it is gathered across processes
FIELD_ROWS = ("query", "negatives", "query_index")


class ObjectiveSettings(BaseModel):
    """Base of every objective's config: ``name`` (the table key, a Literal in subclasses) and ``weight``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class Objective:
    """One row of :data:`vlmbed.objectives.OBJECTIVES`.

    ``fields``: contrastive batch fields the objective reads, name -> rows: ``query`` (one row per query,
    e.g. group ids, teacher scores), ``negatives`` (one row per hard negative, e.g. content keys) or
    ``query_index`` (one row per hard negative holding a local query index, shifted to the global index
    when gathered). ``all_queries(cfg)``: whether the view must carry every process's queries (a
    document -> query direction). ``tokens``: vlmbed's own token roles (``mask``, ``mark``) the objective
    needs in the vocabulary. ``collator``: the entry of ``vlmbed.train.data.COLLATORS`` building its batches.
    ``data``: what the stage's data sources must yield (a ``vlmbed.data.FORMATS`` ``yields`` value:
    contrastive ``examples`` or pre-training ``documents``); default by kind (:attr:`consumes`).
    """

    config: type[ObjectiveSettings]
    fn: Callable
    kind: Literal["contrastive", "reconstruction"]
    fields: dict[str, str] = field(default_factory=dict)
    all_queries: Callable[[ObjectiveSettings], bool] | None = None
    forward: Callable[[ObjectiveSettings, dict], dict] | None = None
    prepare: Callable | None = None
    tokens: tuple[str, ...] = ()
    collator: str | None = None
    data: Literal["examples", "documents"] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"objective kind must be one of {KINDS}, got {self.kind!r}")
        bad = {k: v for k, v in self.fields.items() if v not in FIELD_ROWS}
        if bad:
            raise ValueError(f"objective fields {bad}: rows must be one of {FIELD_ROWS}")

    @property
    def name(self) -> str:
        return self.config.model_fields["name"].default

    @property
    def collator_name(self) -> str:
        return self.collator or ("pairs" if self.kind == "contrastive" else "documents")

    @property
    def consumes(self) -> str:
        """What its stage's sources yield: ``examples`` (contrastive pairs) or ``documents``; e.g. CoCoA's
        EOS-bridged reconstruction reads pairs."""
        return self.data or ("examples" if self.kind == "contrastive" else "documents")


@dataclass
class ContrastiveView:
    """Embeddings of a contrastive batch as every contrastive objective sees them.

    ``query`` (B, d) or (B, k, d): this process's queries (the loss is the mean over them).
    ``positive`` (P, d): every process's positives in rank order; query i's is row ``offset + i``.
    ``negatives`` (N, d) or None: every process's hard negatives.
    ``local_positive`` (B, d): this process's positives. ``queries`` (P, d): every process's queries,
    gathered only when an objective asks (``Objective.all_queries``); else this process's.
    ``fields``: the declared batch fields, gathered in rank order like the embeddings (``query_index``
    fields shifted to global query indices); ``local``: this process's rows of the ``query`` fields.
    """

    query: torch.Tensor
    positive: torch.Tensor
    negatives: torch.Tensor | None
    local_positive: torch.Tensor
    queries: torch.Tensor
    offset: int = 0
    fields: dict[str, torch.Tensor] = field(default_factory=dict)
    local: dict[str, torch.Tensor] = field(default_factory=dict)
