"""Training data for one process: batch plan -> positioned sampler -> loader -> role-keyed batches."""

from __future__ import annotations

from dataclasses import dataclass, field
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
from vlmbed.data.decode import BadImageLog, decode_examples
from vlmbed.data.pretrain import document_costs
from vlmbed.objectives import lookup


@dataclass
class TrainCollator:
    """``ContrastiveCollator`` plus what training across processes needs.

    ``group_ids`` become content hashes (the same group has the same id on every process, so
    false-negative masking survives the gather), ``positive_keys`` / ``negative_keys`` are content
    hashes of the positives and hard negatives (see :func:`content_keys`), and ``position`` = (epoch,
    batch) of the plan.

    Images are decoded here, in the loader's workers (:func:`vlmbed.data.decode.decode_examples`); keys
    are computed on the undecoded records (paths), as the plan's are. With ``on_bad_image="skip"`` an
    example whose image does not decode is dropped from the batch and counted (``bad_images``, printed
    once per process); ``data_stats`` holds this batch's count.
    """

    collator: ContrastiveCollator
    on_bad_image: str = "error"
    bad_images: BadImageLog = field(default_factory=BadImageLog)
    # further batch fields of a recipe's collator: ``make(examples, num_negatives) -> {name: tensor}`` over the
    # batch's (kept, undecoded) examples, e.g. teacher vectors or judge scores (vlmbed.train.teacher)
    extra_fields: list = field(default_factory=list)

    def __call__(self, items: list) -> dict:
        before = self.bad_images.dropped
        kept, decoded = decode_examples([ex for _, _, ex in items], self.on_bad_image, self.bad_images,
                                        self.collator.num_negatives)
        examples = [items[i][2] for i in kept]
        batch = self.collator(decoded)
        batch["data_stats"] = {"bad_images": self.bad_images.dropped - before}
        batch["group_ids"] = torch.tensor([group_hash(group_key(ex)) for ex in examples], dtype=torch.long)
        batch["positive_keys"], batch["negative_keys"] = content_keys(examples, self.collator.num_negatives)
        batch["tasks"] = [ex.task for ex in examples]  # source task of each query (B,), for objectives and logs
        batch["position"] = (int(items[0][0]), int(items[0][1]))
        for make in self.extra_fields:
            batch.update(make(examples, self.collator.num_negatives))
        return batch


def content_keys(examples: list, num_negatives: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Content hashes (B,) of each example's positive and (N,) of its hard negatives, in collator order.

    Equal hashes mean identical inputs. A negative identical to any of its own example's positives takes
    the key of the positive that is trained on, so it is masked as a false negative of its query.
    """
    pos, neg = [], []
    for ex in examples:
        alternatives = [p.key() for p in ex.positives]
        own = alternatives[0]  # ex.positive, the one trained on
        pos.append(group_hash(f"item:{own}"))
        negs = ex.negatives if num_negatives is None else ex.negatives[:num_negatives]
        for item in negs:
            key = item.key()
            neg.append(group_hash(f"item:{own if key in alternatives else key}"))
    return torch.tensor(pos, dtype=torch.long), torch.tensor(neg, dtype=torch.long)


def build_plan(stage, examples, embedder, world: int, rank: int, cache_dir: Path | None) -> BatchPlan:
    b = stage.data.batching
    spec = BatchingSpec(batch_size=stage.data.batch_size, mode=b.mode, max_tokens=b.max_tokens,
                        homogeneous=b.homogeneous, unique_positives=b.unique_positives, task_weights=b.task_weights)
    costs = None
    cost = CostModel(embedder.encoder, kind=b.cost, max_length=getattr(stage.model, "max_length", None),
                     on_bad_image=stage.data.on_bad_image)
    if b.mode == "token_budget" and stage.consumes == "documents":
        costs = document_costs(examples, cost)
    elif b.mode == "token_budget":
        folder = Path(b.cost_cache) if b.cost_cache else cache_dir
        costs = example_costs(examples, cost, stage.data.num_negatives, folder)
    keys = [group_key(ex) for ex in examples] if b.unique_positives and stage.consumes == "examples" else None
    return BatchPlan(len(examples), spec, world=world, rank=rank, seed=stage.data.seed,
                     tasks=[ex.task for ex in examples], keys=keys, costs=costs)


def pairs_collator(stage, embedder) -> TrainCollator:
    """Contrastive pairs: every role's processor inputs plus group ids, content keys and negative owners."""
    return TrainCollator(ContrastiveCollator(embedder.encoder, stage.data.num_negatives),
                         on_bad_image=stage.data.on_bad_image)


def documents_collator(stage, embedder):
    """Pre-training documents, masked for the stage's reconstruction objectives (MoCa's MLM + MAE)."""
    from vlmbed.train.reconstruction import DocumentCollator, pretrain_collator

    return DocumentCollator(pretrain_collator(embedder, stage), seed=stage.data.seed)


def bridge_collator(stage, embedder):
    """CoCoA's EOS-bridged reconstruction: pairs -> masked ``[A | EOS | B]`` rows with attention blocks."""
    from vlmbed.data.bridge import build_bridge_collator

    cfg = next(o for o in stage.objectives if lookup(o.name).collator_name == "bridge")
    return build_bridge_collator(cfg, stage, embedder)


def teacher_collator(stage, embedder) -> TrainCollator:
    """Text-only pairs plus the teacher vectors of every text (UniME stage 1), read from the objective's cache."""
    from vlmbed.train.teacher import teacher_fields

    collator = pairs_collator(stage, embedder)
    collator.extra_fields.append(teacher_fields(stage))
    return collator


def judged_collator(stage, embedder) -> TrainCollator:
    """Pairs plus per-candidate judge scores of each query's positive and hard negatives (UniME-V2)."""
    from vlmbed.train.teacher import judge_fields

    collator = pairs_collator(stage, embedder)
    collator.extra_fields.append(judge_fields(stage))
    return collator


def turns_collator(stage, embedder):
    """MuCo's multi-turn rows: one image, k query turns and k target turns, an ``<|emb|>`` per turn."""
    from vlmbed.train.turns_data import turns_collator as build

    return build(stage, embedder)


# collator name -> (stage, embedder) -> collate_fn over positioned records; objectives name theirs
# (Objective.collator; default: ``pairs`` for contrastive, ``documents`` for reconstruction objectives)
COLLATORS = {"pairs": pairs_collator, "documents": documents_collator, "bridge": bridge_collator,
             "teacher": teacher_collator, "judged": judged_collator, "turns": turns_collator}


def stage_collator(stage, embedder):
    """The collate function of the stage: the one collator its objectives agree on."""
    names = {lookup(o.name).collator_name: o.name for o in stage.objectives}
    if len(names) > 1:
        raise ValueError(f"stage {stage.name!r}: its objectives need different collators "
                         f"({', '.join(f'{o}: {c}' for c, o in names.items())}); split them into stages")
    (name,) = names
    if name not in COLLATORS:
        raise ValueError(f"stage {stage.name!r}: no collator {name!r}; known: {', '.join(COLLATORS)}")
    return COLLATORS[name](stage, embedder)


def build_loader(stage, examples, embedder, plan: BatchPlan) -> tuple[DataLoader, PlanSampler]:
    sampler = PlanSampler(plan)
    loader = DataLoader(PositionedDataset(examples), batch_sampler=sampler, collate_fn=stage_collator(stage, embedder),
                        num_workers=stage.data.num_workers)
    return loader, sampler
