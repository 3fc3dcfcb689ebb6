"""Training data for one process: batch plan -> positioned sampler -> loader -> role-keyed batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vlmbed.data.batching import (
    BatchingSpec,
    BatchPlan,
    CostModel,
    PlanSampler,
    PositionedDataset,
    example_costs,
    group_hash,
)
from vlmbed.data.collate import ContrastiveCollator, group_key
from vlmbed.data.pretrain import document_costs


@dataclass
class TrainCollator:
    """``ContrastiveCollator`` plus what training across processes needs.

    ``group_ids`` become content hashes (the same group has the same id on every process, so
    false-negative masking survives the gather), and ``position`` = (epoch, batch) of the plan.
    """

    collator: ContrastiveCollator

    def __call__(self, items: list) -> dict:
        examples = [ex for _, _, ex in items]
        batch = self.collator(examples)
        batch["group_ids"] = torch.tensor([group_hash(group_key(ex)) for ex in examples], dtype=torch.long)
        batch["position"] = (int(items[0][0]), int(items[0][1]))
        return batch


def build_plan(stage, examples, embedder, world: int, rank: int, cache_dir: Path | None) -> BatchPlan:
    b = stage.data.batching
    spec = BatchingSpec(batch_size=stage.data.batch_size, mode=b.mode, max_tokens=b.max_tokens,
                        homogeneous=b.homogeneous, unique_positives=b.unique_positives, task_weights=b.task_weights)
    costs = None
    if b.mode == "token_budget" and stage.is_reconstruction:
        costs = document_costs(examples, CostModel(embedder.encoder, kind=b.cost))
    elif b.mode == "token_budget":
        folder = Path(b.cost_cache) if b.cost_cache else cache_dir
        costs = example_costs(examples, CostModel(embedder.encoder, kind=b.cost), stage.data.num_negatives, folder)
    keys = [group_key(ex) for ex in examples] if b.unique_positives and not stage.is_reconstruction else None
    return BatchPlan(len(examples), spec, world=world, rank=rank, seed=stage.data.seed,
                     tasks=[ex.task for ex in examples], keys=keys, costs=costs)


def build_loader(stage, examples, embedder, plan: BatchPlan) -> tuple[DataLoader, PlanSampler]:
    sampler = PlanSampler(plan)
    if stage.is_reconstruction:
        from vlmbed.train.reconstruction import DocumentCollator, pretrain_collator

        collate = DocumentCollator(pretrain_collator(embedder, stage), seed=stage.data.seed)
    else:
        collate = TrainCollator(ContrastiveCollator(embedder.encoder, stage.data.num_negatives))
    loader = DataLoader(PositionedDataset(examples), batch_sampler=sampler, collate_fn=collate,
                        num_workers=stage.data.num_workers)
    return loader, sampler
