"""MMEB precision@1 semantics on the built-in suite: positive at index 0, first-index argmax on ties."""

from __future__ import annotations

import numpy as np

from vlmbed.eval.metrics import precision_at_1
from vlmbed.eval.suite import EvalTask, aggregate, score_task
from vlmbed.types import Example, Item


def test_ties_resolve_in_favour_of_the_positive():
    assert precision_at_1([np.array([0.5, 0.5, 0.1])]) == 1.0
    assert precision_at_1([np.array([0.4, 0.5, 0.5])]) == 0.0
    assert precision_at_1([np.array([1.0, 0.0]), np.array([0.0, 1.0, 0.5, 0.2])]) == 0.5


def test_duplicate_of_the_positive_counts_as_correct(embedder):
    # a candidate identical to the positive gets an identical embedding: a tie the positive wins
    ex = Example(Item(text="seven"), [Item(text="the digit seven")], [Item(text="the digit seven")], task="t")
    swapped = Example(Item(text="seven"), [Item(text="the digit one")],
                      [Item(text="the digit seven"), Item(text="the digit seven")], task="t")
    res = score_task(embedder, EvalTask("t", "CLS", [ex, swapped]))
    assert res["num_unique_candidates"] == 2  # duplicates are encoded once
    # row 1 is a pure tie -> correct; row 2 is correct only if "one" beats "seven" for this random model
    # (encoded here in other batches: where the two scores tie within 1e-5 either answer is right)
    q = embedder.encode([Item(text="seven")])[0]
    one, seven = embedder.encode([Item(text="the digit one"), Item(text="the digit seven")], role="document") @ q
    allowed = {(1 + int(one >= seven + s)) / 2 for s in (-1e-5, 1e-5)}
    assert res["precision@1"] in allowed, (res["precision@1"], one, seven)


def test_overall_is_mean_over_tasks_not_mean_of_meta_means():
    per_task = {"a": {"precision@1": 1.0}, "b": {"precision@1": 0.0}, "c": {"precision@1": 0.0}}
    out = aggregate(per_task, {"a": "CLS", "b": "VQA", "c": "VQA"})
    assert out["meta_tasks"] == {"CLS": 1.0, "VQA": 0.0}
    assert abs(out["overall"] - 1 / 3) < 1e-12
