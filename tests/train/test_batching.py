"""Batch plans: fixed and token-budget batches, task-homogeneous, weighted mixtures, unique positives,
resumable positions, cached costs."""

from __future__ import annotations

import numpy as np
import pytest

from vlmbed.data.batching import (
    BatchingSpec,
    BatchPlan,
    CostModel,
    PlanSampler,
    example_costs,
    padded_cost,
    padding_waste,
)


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    tasks = [f"t{i % 3}" for i in range(n)]
    keys = [f"k{i % 250}" for i in range(n)]
    q = rng.integers(5, 400, n)
    costs = np.stack([q, q // 2 + rng.integers(5, 50, n), rng.integers(5, 300, n), np.ones(n)], 1).astype(float)
    return tasks, keys, costs


def _flat(plan, epoch=0):
    return [i for gb in plan.epoch(epoch) for part in gb for i in part]


def test_fixed_plan_is_a_function_of_seed_and_epoch_and_uses_each_example_once():
    tasks, keys, costs = _data()
    a = BatchPlan(600, BatchingSpec(batch_size=8), world=2, seed=3, tasks=tasks)
    b = BatchPlan(600, BatchingSpec(batch_size=8), world=2, seed=3, tasks=tasks)
    assert a.epoch(0) == b.epoch(0) and a.epoch(1) != a.epoch(0)
    used = _flat(a)
    assert len(used) == len(set(used)) == 592  # 37 global batches of 2 x 8; 8 left out (noted)
    assert all(len(part) == 8 for gb in a.epoch(0) for part in gb)


def test_processes_take_their_share_of_the_same_global_batches():
    tasks, _, _ = _data()
    plans = [BatchPlan(600, BatchingSpec(batch_size=4), world=3, rank=r, seed=1, tasks=tasks) for r in range(3)]
    streams = [list(zip(range(5), iter(PlanSampler(p)), strict=False)) for p in plans]
    for step in range(5):
        parts = [s[step][1] for s in streams]
        idx = [[i for _, _, i in part] for part in parts]
        assert idx == plans[0].epoch(0)[step]  # rank r gets part r of global batch `step`


def test_homogeneous_batches_hold_one_task_and_unique_positives():
    tasks, keys, _ = _data()
    plan = BatchPlan(600, BatchingSpec(batch_size=8, homogeneous=True, unique_positives=True), world=2, seed=0,
                     tasks=tasks, keys=keys)
    for gb in plan.epoch(0):
        members = [i for part in gb for i in part]
        assert len({tasks[i] for i in members}) == 1
        assert len({keys[i] for i in members}) == len(members)


def test_unique_positives_that_cannot_fill_a_batch_fail_clearly():
    with pytest.raises(ValueError, match="unique positives"):
        BatchPlan(40, BatchingSpec(batch_size=16, unique_positives=True), keys=[f"k{i % 5}" for i in range(40)]).epoch(0)


def test_task_weights_set_the_mixture():
    tasks, _, _ = _data(n=900)
    plan = BatchPlan(900, BatchingSpec(batch_size=10, homogeneous=True, task_weights={"t0": 8, "t1": 1, "t2": 1}),
                     seed=0, tasks=tasks)
    share = np.mean([tasks[gb[0][0]] == "t0" for gb in plan.epoch(0)])
    assert 0.7 < share < 0.9
    mixed = BatchPlan(900, BatchingSpec(batch_size=10, task_weights={"t0": 1, "t2": 1}), seed=0, tasks=tasks)
    assert {tasks[i] for i in _flat(mixed)} == {"t0", "t2"}
    with pytest.raises(ValueError, match="unknown task"):
        BatchPlan(900, BatchingSpec(task_weights={"nope": 1}), tasks=tasks)


def test_token_budget_batches_stay_under_the_budget_and_waste_less():
    tasks, _, costs = _data(n=2000)
    budget = BatchPlan(2000, BatchingSpec(mode="token_budget", max_tokens=6000), world=2, seed=0, tasks=tasks,
                       costs=costs)
    fixed = BatchPlan(2000, BatchingSpec(batch_size=8), world=2, seed=0, tasks=tasks)
    parts = [part for gb in budget.epoch(0) for part in gb]
    assert all(padded_cost(costs[p]) <= 6000 for p in parts)
    assert len(_flat(budget)) > 0.95 * 2000
    fixed_parts = [part for gb in fixed.epoch(0) for part in gb]
    assert padding_waste(parts, costs) < 0.5 * padding_waste(fixed_parts, costs)


def test_sampler_starts_at_any_position_without_replaying(tmp_path):
    tasks, _, _ = _data()
    plan = BatchPlan(600, BatchingSpec(batch_size=8), seed=0, tasks=tasks)
    full = [b for _, b in zip(range(100), iter(PlanSampler(plan)), strict=False)]  # crosses into epoch 1
    resumed = PlanSampler(plan)
    resumed.set_start(1, 2)
    start = next(i for i, b in enumerate(full) if b[0][:2] == (1, 2))
    assert [b for _, b in zip(range(10), iter(resumed), strict=False)] == full[start : start + 10]


def test_costs_from_the_processor_are_cached(embedder, tmp_path, monkeypatch):
    from vlmbed.data.digits import build_digits

    exs = build_digits("train", tasks=["digits_t2i", "digits_cls"], max_per_task=5)
    exs = exs["digits_t2i"] + exs["digits_cls"]
    model = CostModel(embedder.encoder, kind="tokens")
    costs = example_costs(exs, model, num_negatives=2, cache_dir=tmp_path)
    assert costs.shape == (10, 4) and (costs[:, 3] == 2).all()
    batch = embedder.encoder([exs[0].positive], "document")  # an image: its real sequence length
    assert costs[0, 1] == batch["input_ids"].shape[1]
    assert costs[0, 0] == embedder.encoder([exs[0].query], "query")["input_ids"].shape[1]
    assert len(list(tmp_path.glob("costs-*.npy"))) == 1
    moca = example_costs(exs, CostModel(embedder.encoder, kind="moca"), 2)
    assert (moca[:5, 1] > costs[:5, 1]).all()  # images weigh 4x in MoCa's cost

    def measured(*args):
        raise AssertionError("costs measured again instead of read from the cache")

    monkeypatch.setattr(CostModel, "__call__", measured)
    assert (example_costs(exs, CostModel(embedder.encoder, kind="tokens"), 2, tmp_path) == costs).all()


def _small_task(n_big=64, n_small=5):
    return ["big"] * n_big + ["small"] * n_small


def test_a_task_smaller_than_one_global_batch_is_repeated_to_fill_one(capsys):
    tasks = _small_task()
    plan = BatchPlan(len(tasks), BatchingSpec(batch_size=4, homogeneous=True), world=2, seed=0, tasks=tasks)
    small = [gb for gb in plan.epoch(0) if tasks[gb[0][0]] == "small"]
    assert len(small) == 1 and [len(p) for p in small[0]] == [4, 4]
    members = [i for part in small[0] for i in part]
    assert set(members) == set(range(64, 69))  # all five, three of them twice
    assert len([gb for gb in plan.epoch(0) if tasks[gb[0][0]] == "big"]) == 8
    out = capsys.readouterr().out
    assert out.count("note:") == 1 and "task 'small' has 5 examples" in out and "repeated" in out
    plan.epoch(1)
    assert capsys.readouterr().out == ""  # noted once per plan
    BatchPlan(len(tasks), BatchingSpec(batch_size=4, homogeneous=True), world=2, rank=1, tasks=tasks).epoch(0)
    assert capsys.readouterr().out == ""  # only the first process prints


def test_small_tasks_fill_token_budget_and_weighted_batches_too():
    tasks = _small_task(n_big=300, n_small=3)
    costs = np.tile([[10.0, 10.0, 0.0, 0.0]], (len(tasks), 1))
    spec = BatchingSpec(mode="token_budget", max_tokens=100, homogeneous=True)
    plan = BatchPlan(len(tasks), spec, world=2, seed=0, tasks=tasks, costs=costs)
    small = [gb for gb in plan.epoch(0) if tasks[gb[0][0]] == "small"]
    assert len(small) == 1 and all(padded_cost(costs[p]) <= 100 for p in small[0])
    assert {i for p in small[0] for i in p} == {300, 301, 302} and sum(len(p) for p in small[0]) == 10
    weighted = BatchPlan(len(tasks), BatchingSpec(batch_size=8, homogeneous=True,
                                                  task_weights={"big": 1, "small": 1}), seed=0, tasks=tasks)
    assert {tasks[gb[0][0]] for gb in weighted.epoch(0)} == {"big", "small"}


def test_a_small_task_that_repetition_cannot_fill_is_an_error_naming_it():
    tasks = _small_task()
    keys = [f"k{i}" for i in range(64)] + ["same"] * 5  # unique positives: one distinct positive
    spec = BatchingSpec(batch_size=4, homogeneous=True, unique_positives=True)
    with pytest.raises(ValueError, match=r"task 'small' has too few distinct positives"):
        BatchPlan(len(tasks), spec, world=2, tasks=tasks, keys=keys).epoch(0)


def test_the_last_partial_batch_is_left_out_with_a_printed_count(capsys):
    plan = BatchPlan(20, BatchingSpec(batch_size=8), seed=0)
    used = _flat(plan)
    assert len(plan) == 2 and len(used) == len(set(used)) == 16  # 20 rows at batch 8: 2 full batches
    assert plan.left_out == {0: 4}
    out = capsys.readouterr().out
    assert out.count("note:") == 1 and "4 of 20 examples are not in epoch 0's batches" in out
    assert "8 per process x 1 process(es)" in out and "data.batch_size" in out
    assert set(_flat(plan, 1)) != set(used) and plan.left_out[1] == 4  # another shuffle leaves out others
    assert capsys.readouterr().out == ""  # printed once per plan
    # two processes: every process gets the same number of full batches, the rest is counted
    two = [BatchPlan(20, BatchingSpec(batch_size=4), world=2, rank=r, seed=0) for r in range(2)]
    assert [len(p.epoch(0)) for p in two] == [2, 2] and two[1].left_out == {0: 4}
    assert all(len(part) == 4 for gb in two[0].epoch(0) for part in gb)
    assert capsys.readouterr().out.count("note:") == 1  # only the first process prints


def test_homogeneous_leftovers_are_counted_and_an_exact_fit_prints_nothing(capsys):
    tasks = ["a"] * 10 + ["b"] * 7
    plan = BatchPlan(17, BatchingSpec(batch_size=4, homogeneous=True), seed=0, tasks=tasks)
    assert len(plan) == 3 and plan.left_out == {0: 5}  # a: 2 + 2 left, b: 1 + 3 left
    assert "5 of 17 examples" in capsys.readouterr().out
    exact = BatchPlan(16, BatchingSpec(batch_size=8), seed=0)
    assert exact.epoch(0) and exact.left_out == {0: 0}
    assert capsys.readouterr().out == ""
