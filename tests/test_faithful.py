"""Faithfulness to the reference recipes: false hard negatives, the linear schedule, DeepSpeed clipping.

* A hard negative that repeats a positive of the query's group is masked out of the InfoNCE denominator
  exactly like an in-batch false negative, on one process and across two gloo processes (this file is
  also the worker: ``python tests/test_faithful.py OUT`` with the usual torch.distributed variables).
* ``train.schedule=linear`` equals transformers' ``get_linear_schedule_with_warmup`` step by step.
* A recipe's ``train.grad_clip`` is the ``gradient_clipping`` DeepSpeed ends up with, after accelerate
  has read a shipped preset and filled its own defaults (checked on the config dict; no DeepSpeed run).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlmbed.config import InfoNCEConfig, TrainConfig  # noqa: E402
from vlmbed.objectives.infonce import infonce_logits, loss  # noqa: E402
from vlmbed.train.losses import contrastive_loss  # noqa: E402

TAU = 0.1


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


# ---------------------------------------------------------------- false hard negatives, one process


def test_hard_negative_identical_to_the_positive_is_not_in_the_denominator():
    p, n = _unit(4, 8, seed=2), _unit(3, 8, seed=3)
    q = F.normalize(p + 0.5 * _unit(4, 8, seed=1), dim=-1)  # queries near their positives, as after training
    groups, pkeys = torch.tensor([10, 11, 12, 13]), torch.tensor([100, 101, 102, 103])
    nkeys, owner = torch.tensor([200, 201, 202]), torch.tensor([0, 1, 2])
    dup_n = torch.cat([n, p[1:2]])  # query 1's positive again, as a hard negative of query 1
    dup_keys, dup_owner = torch.cat([nkeys, pkeys[1:2]]), torch.cat([owner, torch.tensor([1])])
    kw = {"temperature": TAU, "positive_keys": pkeys}
    # own negatives only: the loss is exactly the loss without that negative
    want = loss(q, p, n, owner, groups, share_negatives=False, negative_keys=nkeys, **kw)["infonce"]
    got = loss(q, p, dup_n, dup_owner, groups, share_negatives=False, negative_keys=dup_keys, **kw)["infonce"]
    assert torch.allclose(got, want, atol=1e-6), (got, want)
    # shared negatives: query 1's row is unchanged; for the other groups it is an ordinary negative
    rows = [infonce_logits(q, p, neg, own, groups, negative_keys=keys, **kw)
            for neg, own, keys in ((n, owner, nkeys), (dup_n, dup_owner, dup_keys))]
    per_row = [F.cross_entropy(r, torch.arange(4), reduction="none") for r in rows]
    assert torch.isinf(rows[1][1, -1]) and torch.isfinite(rows[1][[0, 2, 3], -1]).all()
    assert abs(float(per_row[1][1] - per_row[0][1])) < 1e-6
    assert (per_row[1][[0, 2, 3]] > per_row[0][[0, 2, 3]]).all()
    # without content keys the repeat is counted and the loss rises
    unmasked = loss(q, p, dup_n, dup_owner, groups, share_negatives=False, temperature=TAU)["infonce"]
    assert unmasked > want + 0.05


def test_hard_negative_repeating_a_same_label_positive_is_masked_other_labels_are_not():
    q, p, n = _unit(4, 8, seed=4), _unit(4, 8, seed=5), _unit(2, 8, seed=6)
    groups = torch.tensor([7, 7, 8, 9])  # queries 0 and 1 share a label
    pkeys, nkeys, owner = torch.tensor([100, 101, 102, 103]), torch.tensor([200, 201]), torch.tensor([0, 2])

    def with_extra(emb, key):
        return loss(q, p, torch.cat([n, emb]), torch.cat([owner, torch.tensor([0])]), groups, temperature=TAU,
                    positive_keys=pkeys, negative_keys=torch.cat([nkeys, torch.tensor([key])]))["infonce"]

    def reference(masked_rows):
        """Loop over the docstring formula: the extra negative p[k] counts for every row but ``masked_rows``."""
        total = 0.0
        for i in range(4):
            terms = [float(q[i] @ p[k]) / TAU for k in range(4) if k == i or groups[k] != groups[i]]
            terms += [float(q[i] @ n[j]) / TAU for j in range(2)]
            target = float(q[i] @ p[i]) / TAU
            extra = [float(q[i] @ p[1]) / TAU] if i not in masked_rows else []
            total += math.log(sum(math.exp(t) for t in terms + extra)) - target
        return total / 4

    # p[1] (label 7) as a hard negative: a false negative for queries 0 and 1, a true one for 2 and 3
    assert abs(float(with_extra(p[1:2], 101)) - reference({0, 1})) < 1e-5
    # the same embedding with a key no positive has is an ordinary negative for every query
    assert abs(float(with_extra(p[1:2], 999)) - reference(set())) < 1e-5


def test_contrastive_loss_reads_the_keys_from_the_batch_and_mask_same_group_switches_it_off():
    p, n = _unit(3, 8, seed=8), _unit(2, 8, seed=9)
    q = F.normalize(p + 0.5 * _unit(3, 8, seed=7), dim=-1)
    meta = {"group_ids": torch.tensor([1, 2, 3]), "negative_owner": torch.tensor([0, 2, 1]),
            "positive_keys": torch.tensor([11, 12, 13]), "negative_keys": torch.tensor([21, 22, 12])}
    reps = {"query": q, "positive": p, "negatives": torch.cat([n, p[1:2]])}  # 3rd: query 1's positive again
    clean = {"query": q, "positive": p, "negatives": n}
    clean_meta = {**meta, "negative_owner": meta["negative_owner"][:2], "negative_keys": meta["negative_keys"][:2]}

    def total(r, m, **kw):
        return contrastive_loss(r, m, [InfoNCEConfig(temperature=TAU, share_negatives=False, **kw)])["loss"]

    masked, want, off = total(reps, meta), total(clean, clean_meta), total(reps, meta, mask_same_group=False)
    assert torch.allclose(masked, want, atol=1e-6) and off > masked + 0.05


def test_train_collator_keys_follow_the_collator_order_and_map_alternative_positives():
    from vlmbed.data.collate import ContrastiveCollator
    from vlmbed.train.data import TrainCollator
    from vlmbed.types import Example, Item

    def encoder(items, role):  # stands in for the processor: the keys do not depend on it
        return {"n": len(items)}

    a, b, c = Item("a"), Item("b"), Item("c")
    exs = [Example(Item("q0"), [a, Item("a2")], negatives=[Item("a2"), c, a], task="t"),
           Example(Item("q1"), [b], negatives=[b, Item("x")], task="t")]
    batch = TrainCollator(ContrastiveCollator(encoder, num_negatives=2))([(0, 0, ex) for ex in exs])
    pk, nk = batch["positive_keys"], batch["negative_keys"]
    assert pk.shape == (2,) and nk.shape == batch["negative_owner"].shape == (4,)
    assert nk[0] == pk[0]  # an alternative positive of its own example: the trained positive's key
    assert nk[2] == pk[1]  # the positive itself
    assert len({int(nk[1]), int(nk[3]), int(pk[0]), int(pk[1])}) == 4  # other content, other keys
    assert batch["negative_owner"].tolist() == [0, 0, 1, 1]


# ---------------------------------------------------------------- two gloo processes

# rank 0 holds queries 0-2, rank 1 queries 3-5; groups 5 and 6 span both ranks. Hard negatives (owner):
# a repeat of p[4] held by rank 0 (owner 0, group 5 = query 4's group: masked for 0 and 4 across ranks),
# a repeat of p[1] held by rank 1 (owner 3, group 6: masked for 1 and 3), and two ordinary ones.
GROUPS = [5, 6, 7, 6, 5, 8]
NEG_OF = [("pos", 4, 0), ("rand", 0, 2), ("pos", 1, 3), ("rand", 1, 5)]  # (kind, index, owner)
SPLIT = (3, 2)  # queries and negatives on rank 0


def _world():
    q, p, r = _unit(6, 8, seed=11), _unit(6, 8, seed=12), _unit(2, 8, seed=13)
    n = torch.stack([p[i] if kind == "pos" else r[i] for kind, i, _ in NEG_OF])
    pkeys = torch.arange(100, 106)
    nkeys = torch.tensor([int(pkeys[i]) if kind == "pos" else 900 + i for kind, i, _ in NEG_OF])
    meta = {"group_ids": torch.tensor(GROUPS), "positive_keys": pkeys, "negative_keys": nkeys,
            "negative_owner": torch.tensor([o for _, _, o in NEG_OF])}
    return {"query": q, "positive": p, "negatives": n}, meta


def _share(reps, meta, rank):
    b, m = SPLIT
    rows, negs = (slice(0, b), slice(0, m)) if rank == 0 else (slice(b, None), slice(m, None))
    reps = {"query": reps["query"][rows], "positive": reps["positive"][rows], "negatives": reps["negatives"][negs]}
    owner = meta["negative_owner"][negs] - (0 if rank == 0 else b)  # local query index
    meta = {"group_ids": meta["group_ids"][rows], "positive_keys": meta["positive_keys"][rows],
            "negative_keys": meta["negative_keys"][negs], "negative_owner": owner}
    return reps, meta


def _worker(out: str) -> None:
    import torch.distributed as tdist

    from vlmbed.train.losses import global_mean_parts

    tdist.init_process_group("gloo")
    rank = tdist.get_rank()
    results = {}
    for share in (True, False):
        reps, meta = _share(*_world(), rank)
        parts = contrastive_loss(reps, meta, [InfoNCEConfig(temperature=TAU, share_negatives=share)])
        results[share] = global_mean_parts(parts)["loss"]
    if rank == 0:
        torch.save(results, out)
    tdist.barrier()
    tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_two_processes_mask_false_hard_negatives_like_one_process(tmp_path):
    out = tmp_path / "two.pt"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, str(out)], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [proc.communicate(timeout=170)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), "\n".join(log[-3000:] for log in logs)
    two = torch.load(out)
    reps, meta = _world()
    no_keys = {k: v for k, v in meta.items() if not k.endswith("_keys")}
    for share in (True, False):
        objective = [InfoNCEConfig(temperature=TAU, share_negatives=share)]
        one = float(contrastive_loss(reps, meta, objective)["loss"])
        unmasked = float(contrastive_loss(reps, no_keys, objective)["loss"])
        assert abs(two[share] - one) < 1e-5, (share, two[share], one)
        assert unmasked > one + 1e-3  # the masking had something to do (on both ranks' negatives)


# ---------------------------------------------------------------- schedules


def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(("total", "ratio"), [(20, 0.1), (37, 0.11), (5, 0.0), (8, 1.0)])
def test_linear_schedule_equals_transformers_linear_schedule_with_warmup(total, ratio):
    from transformers import get_linear_schedule_with_warmup

    from vlmbed.train.optim import build_scheduler

    cfg = TrainConfig(lr=2e-5, schedule="linear", warmup_ratio=ratio)
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    warmup = math.ceil(ratio * total)  # HF TrainingArguments.get_warmup_steps
    ours = _lrs(build_scheduler(ours_opt, cfg, total), ours_opt, total + 2)
    ref = _lrs(get_linear_schedule_with_warmup(ref_opt, warmup, total), ref_opt, total + 2)
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert ours[-1] == 0.0 and (ratio == 1.0 or max(ours) == pytest.approx(cfg.lr))  # peak once warmed up


@pytest.mark.parametrize(("total", "warmup"), [(20, 5), (30, 100), (6, 0)])
def test_constant_schedule_and_warmup_steps_equal_transformers(total, warmup):
    """``schedule=constant`` with ``warmup_steps`` (MuCo's code) is HF's constant schedule with warm-up; a
    warm-up longer than the run is capped at it (as with our linear schedule); warmup_steps beats the ratio."""
    from transformers import get_constant_schedule_with_warmup

    from vlmbed.train.optim import build_scheduler

    cfg = TrainConfig(lr=5e-5, schedule="constant", warmup_steps=warmup, warmup_ratio=0.5)
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    ours = _lrs(build_scheduler(ours_opt, cfg, total), ours_opt, total)
    ref = _lrs(get_constant_schedule_with_warmup(ref_opt, min(warmup, total)), ref_opt, total)
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-15)
    lin = TrainConfig(lr=1.0, schedule="linear", warmup_steps=4, warmup_ratio=0.9)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert _lrs(build_scheduler(opt, lin, 10), opt, 10)[:5] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


def test_schedule_is_validated_and_cosine_stays_the_default():
    from pydantic import ValidationError

    from vlmbed.train.optim import build_scheduler

    assert TrainConfig().schedule == "cosine"
    with pytest.raises(ValidationError, match="schedule"):
        TrainConfig(schedule="step")
    cfg = TrainConfig(lr=1.0, warmup_ratio=0.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    lrs = _lrs(build_scheduler(opt, cfg, 10), opt, 10)
    assert lrs[2] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2))) and lrs[2] != pytest.approx(0.8)


# ---------------------------------------------------------------- DeepSpeed gradient clipping


def _plugin_from_preset(name: str, monkeypatch):
    """The DeepSpeed plugin a process started by ``accelerate launch --config_file PRESET`` builds."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    from vlmbed.train.presets import preset_path

    args = launch_command_parser().parse_args(["--config_file", str(preset_path(name)), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    for key in [k for k in os.environ if k.startswith("ACCELERATE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    return DeepSpeedPlugin()


def _accelerate_fills_defaults(plugin) -> dict:
    """What ``Accelerator._prepare_deepspeed`` does to the config before starting the engine."""
    plugin.deepspeed_config_process(must_match=False, **{
        "gradient_clipping": 1.0, "zero_optimization.stage3_gather_16bit_weights_on_model_save": False,
        "train_micro_batch_size_per_gpu": 4, "train_batch_size": 32, "gradient_accumulation_steps": 1})
    return plugin.deepspeed_config


@pytest.mark.parametrize("preset", ["deepspeed_zero2", "deepspeed_zero3"])
@pytest.mark.parametrize("grad_clip", [5.0, None])
def test_recipe_grad_clip_reaches_deepspeed_through_the_loop(preset, grad_clip, monkeypatch):
    from accelerate.utils import DistributedType

    from vlmbed.train.loop import prepare

    plugin = _plugin_from_preset(preset, monkeypatch)
    assert plugin.deepspeed_config.get("gradient_clipping") in (None, "auto"), "the preset pins a clip value"

    class Accelerator:  # the parts of accelerate.Accelerator that loop.prepare touches
        distributed_type = DistributedType.DEEPSPEED

        class state:
            deepspeed_plugin = plugin

        def prepare(self, *objects):
            return objects

    embedder = torch.nn.Linear(2, 2)
    embedder.model = torch.nn.Linear(2, 2)
    prepare(Accelerator(), embedder, None, None, 4, grad_clip)
    config = _accelerate_fills_defaults(plugin)
    assert config["gradient_clipping"] == (grad_clip or 0.0)  # DeepSpeed: 0 = no clipping
    assert config["train_micro_batch_size_per_gpu"] == 4


def test_a_pinned_clip_value_that_disagrees_with_the_recipe_is_replaced_with_a_warning():
    from vlmbed.train.presets import set_deepspeed_grad_clip

    config = {"gradient_clipping": 1.0}
    with pytest.warns(UserWarning, match=r"gradient_clipping=1.0 replaced .* train.grad_clip \(5.0\)"):
        set_deepspeed_grad_clip(config, 5.0)
    assert config["gradient_clipping"] == 5.0


if __name__ == "__main__":
    _worker(sys.argv[1])
