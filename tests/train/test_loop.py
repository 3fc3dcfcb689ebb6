"""The loop in one process: non-finite losses skipped and counted, a clear stop after too many in a row,
token-budget task-homogeneous batches, checkpoints kept and atomic, config keys typed."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vlmbed.config import ConfigError, build_recipe
from vlmbed.objectives import OBJECTIVES
from vlmbed.train.checkpoint import list_checkpoints, read_state
from vlmbed.train.loop import NonFiniteLossError
from vlmbed.train.stages import train


def _recipe(model_dir, out, **train_cfg):
    data = train_cfg.pop("data", {})
    return build_recipe({"name": "t", "output_dir": str(out), "stages": [{
        "name": "cl",
        "model": {"path": str(model_dir), "attention": "bidirectional", "pooling": "mean", "append_eos": False,
                  "dtype": "float32"},
        "data": {"sources": [{"format": "digits", "tasks": ["digits_t2i", "digits_i2t"], "max_examples": 80}],
                 "batch_size": 8, "num_negatives": 1, **data},
        "train": {"lr": 1e-3, "max_steps": 5, "progress": False, "log_every": 1, **train_cfg},
        "eval": {"suite": "none"},
    }]})


def _nan_on(calls: set[int]):
    real = OBJECTIVES["infonce"]
    seen = {"n": 0}

    def objective(*args, **kwargs):
        seen["n"] += 1
        out = real.fn(*args, **kwargs)
        return {k: v * float("nan") for k, v in out.items()} if seen["n"] in calls else out

    return dataclasses.replace(real, fn=objective)


def test_nonfinite_losses_are_skipped_and_counted(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "infonce", _nan_on({2, 3}))
    (run,) = train(_recipe(tiny_model_dir, tmp_path, max_nonfinite=3, gradcache_chunk=4))
    assert run.result.steps == 5 and run.result.nonfinite_steps == 2
    rows = [json.loads(line) for line in (run.stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["nonfinite_steps"] == 2 and all(r["loss"] == r["loss"] for r in rows)
    assert read_state(list_checkpoints(run.stage_dir)[-1])["batches_seen"] == 7  # two batches skipped


def test_too_many_nonfinite_losses_in_a_row_stop_with_a_clear_message(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "infonce", _nan_on(set(range(2, 100))))
    with pytest.raises(NonFiniteLossError, match=r"3 non-finite losses/gradients in a row .*train\.max_nonfinite=3"):
        train(_recipe(tiny_model_dir, tmp_path, max_nonfinite=3))


def test_token_budget_homogeneous_training_runs_and_caches_costs(tiny_model_dir, tmp_path):
    data = {"batching": {"mode": "token_budget", "max_tokens": 400, "homogeneous": True, "cost": "tokens"}}
    (run,) = train(_recipe(tiny_model_dir, tmp_path / "out", max_steps=3, save_every=1, keep_checkpoints=2,
                           data=data))
    assert run.result.steps == 3 and run.result.final_loss == run.result.final_loss
    assert len(list((tmp_path / "out" / "cache").glob("costs-*.npy"))) == 1
    ckpts = list_checkpoints(run.stage_dir)
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000003"]  # the last K kept
    assert not list((run.stage_dir / "checkpoints").glob(".tmp-*"))  # written to a temporary folder, renamed


def test_new_config_sections_are_typed_and_unknown_keys_named():
    cfg = build_recipe({"stages": [{"name": "a"}]}, [
        "train.gradcache_chunk=16", "train.max_nonfinite=2", "train.keep_checkpoints=3",
        "data.batching.mode=token_budget", "data.batching.max_tokens=12800", "model.lora.enabled=true",
        "model.lora.target=language_and_vision", "data.batching.task_weights={a: 2, b: 1}"])
    stage = cfg.stages[0]
    assert stage.train.gradcache_chunk == 16 and stage.data.batching.task_weights == {"a": 2.0, "b": 1.0}
    assert stage.model.lora.enabled and stage.model.lora.target == "language_and_vision"
    with pytest.raises(ConfigError, match=r"unknown key `stages\.a\.data\.batching\.max_token`"):
        build_recipe({"stages": [{"name": "a"}]}, ["data.batching.max_token=5"])
    with pytest.raises(ConfigError, match=r"`stages\.a\.train\.gradcache_chunk`"):
        build_recipe({"stages": [{"name": "a"}]}, ["train.gradcache_chunk=0"])
    with pytest.raises(ConfigError, match=r"`stages\.a\.model\.lora\.target`"):
        build_recipe({"stages": [{"name": "a"}]}, ["model.lora.target=everything"])


def test_scheduler_steps_once_per_step(tiny_model_dir, tmp_path):
    (run,) = train(_recipe(tiny_model_dir, tmp_path, max_steps=4, warmup_ratio=0.5))
    rows = [json.loads(line) for line in (run.stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert [round(r["lr"] / 1e-3, 4) for r in rows] == [1.0, 1.0, 0.5, 0.0]
    assert torch.isfinite(torch.tensor([r["loss"] for r in rows])).all()


def _grads_at_each_step(monkeypatch, recipe) -> list[torch.Tensor]:
    """The flattened gradient the optimizer sees at every step of a run."""
    seen: list[torch.Tensor] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.append(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]
                               if p.grad is not None]).clone())
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    train(recipe)
    return seen


def test_gradient_accumulation_averages_the_micro_batch_gradients(tiny_model_dir, tmp_path, monkeypatch):
    # lr ~ 0: the weights do not move, so the two single-batch steps see the same model as the accumulated one
    common = dict(lr=1e-30, grad_clip=None, warmup_ratio=0.0)
    g1, g2 = _grads_at_each_step(monkeypatch, _recipe(tiny_model_dir, tmp_path / "a", max_steps=2, **common))
    (both,) = _grads_at_each_step(monkeypatch, _recipe(tiny_model_dir, tmp_path / "b", max_steps=1, grad_accum=2,
                                                       **common))
    assert not torch.allclose(g1, g2, atol=1e-6)  # two different batches
    assert torch.allclose(both, (g1 + g2) / 2, atol=1e-6, rtol=1e-4)


def test_fused_adamw_updates_as_the_per_tensor_loop():
    """build_optimizer picks torch's fused kernel on CPU; three steps move weights as the plain loop does."""
    from types import SimpleNamespace

    from vlmbed.train.optim import build_optimizer

    torch.manual_seed(0)
    cfg = SimpleNamespace(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1)
    models = [torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = build_optimizer(models[0], cfg)
    assert all(g.get("fused") for g in fused.param_groups)
    params = list(models[1].parameters())  # weight, bias, norm weight, norm bias
    loop = torch.optim.AdamW([{"params": [params[0]], "weight_decay": 0.1},
                              {"params": params[1:], "weight_decay": 0.0}], lr=1e-2, foreach=False)
    x = torch.randn(4, 8)
    for _ in range(3):
        for model, opt in ((models[0], fused), (models[1], loop)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_loss_and_example_counts_are_gathered_only_on_logged_steps(tiny_model_dir, tmp_path, monkeypatch):
    """Averaging the loss over processes and counting examples (a collective and a host sync each) happen on
    the steps that log, not on every step; the logged values are the ones of those steps."""
    from vlmbed import dist
    from vlmbed.train import loop

    calls = {"parts": 0, "sizes": 0}
    real_parts, real_sizes = loop.global_mean_parts, dist.gather_sizes
    monkeypatch.setattr(loop, "global_mean_parts", lambda parts: calls.__setitem__("parts", calls["parts"] + 1)
                        or real_parts(parts))
    monkeypatch.setattr(dist, "gather_sizes", lambda n: calls.__setitem__("sizes", calls["sizes"] + 1)
                        or real_sizes(n))
    (run,) = train(_recipe(tiny_model_dir, tmp_path, max_steps=6, log_every=4))
    rows = [json.loads(line) for line in (run.stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 6]  # every 4th step and the last
    assert calls == {"parts": 2, "sizes": 2}
    assert run.result.final_loss == rows[-1]["loss"] and rows[-1]["examples_per_s"] > 0
