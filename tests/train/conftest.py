"""Shared helpers for the training tests: a float32 tiny embedder and a mixed digits batch."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture()
def f32_embedder(tiny_model_dir):
    from vlmbed.models.embedder import Embedder

    torch.manual_seed(0)
    emb = Embedder.from_pretrained(tiny_model_dir, dtype=torch.float32, pooling="mean", attention="bidirectional",
                                   append_eos=False)
    emb.train()
    return emb


def digits_examples(tasks=("digits_cls", "digits_t2i", "digits_i2t"), per_task=4):
    from vlmbed.data.digits import build_digits

    exs = build_digits("train", tasks=list(tasks), max_per_task=per_task)
    return [ex for t in tasks for ex in exs[t]]


def train_batch(embedder, examples, num_negatives=2):
    from vlmbed.data.collate import ContrastiveCollator
    from vlmbed.train.data import TrainCollator

    collate = TrainCollator(ContrastiveCollator(embedder.encoder, num_negatives))
    return collate([(0, 0, ex) for ex in examples])
