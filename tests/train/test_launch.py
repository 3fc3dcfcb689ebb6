"""`accelerate launch` with 2 CPU processes runs `vlmbed train` end to end (DDP on gloo, GradCache, gathered
negatives), and its losses equal one process on the same global batches."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .helpers import VLMBED, free_port, losses, run, tiny_recipe

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]


def _launch(tmp_path: Path) -> list[str]:
    """accelerate launch, 2 CPU processes, running the installed `vlmbed` script (or an equivalent entry)."""
    script = Path(sys.executable).parent / "vlmbed"
    if not script.exists():
        script = tmp_path / "vlmbed_main.py"
        script.write_text("from vlmbed.cli import main\nmain()\n")
    return [*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(script)]


@pytest.mark.timeout(400)
def test_accelerate_launch_two_cpu_processes_trains_end_to_end(tiny_model_dir, tmp_path):
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_model_dir, max_steps=4, save_every=None, gradcache_chunk=3)
    run([*_launch(tmp_path), "train", str(recipe), f"output_dir={tmp_path / 'two'}", "data.batch_size=4"],
        timeout=300)
    stage = tmp_path / "two" / "00-cl"
    assert (stage / "model" / "config.json").exists() and (stage / "model" / "vlmbed.json").exists()
    two = losses(stage)
    assert sorted(two) == [1, 2, 3, 4]

    run([*VLMBED, "train", str(recipe), f"output_dir={tmp_path / 'one'}", "data.batch_size=8"])
    one = losses(tmp_path / "one" / "00-cl")
    # 2 processes x 4 = the same global batches as 1 process x 8: the same losses at every step (the same
    # gradients, learning rates and optimizer states; accelerate's default would step the LR schedule twice)
    for step in two:
        assert abs(two[step] - one[step]) < 1e-4, (step, two, one)


def test_presets_are_shipped_and_parse_as_accelerate_configs():
    from accelerate.commands.config.config_args import ClusterConfig

    from vlmbed.train.presets import preset_names, preset_path

    assert preset_names() == ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp", "single_gpu"]
    for name in preset_names():
        cfg = ClusterConfig.from_yaml_file(str(preset_path(name)))  # accelerate's own reader
        assert cfg.mixed_precision == "bf16"
        assert str(cfg.distributed_type).split(".")[-1] in ("NO", "MULTI_GPU", "FSDP", "DEEPSPEED")
    assert ClusterConfig.from_yaml_file(str(preset_path("deepspeed_zero3"))).deepspeed_config["zero_stage"] == 3
    assert ClusterConfig.from_yaml_file(str(preset_path("fsdp"))).fsdp_config["fsdp_version"] == 2


@pytest.mark.timeout(400)
def test_accelerate_launch_with_token_budget_homogeneous_batches(tiny_model_dir, tmp_path):
    """Processes hold different numbers of rows: gathers pad and cut, chunk counts are agreed on."""
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_model_dir, max_steps=2, save_every=1, gradcache_chunk=2)
    out = run([*_launch(tmp_path), "train", str(recipe), f"output_dir={tmp_path / 'tb'}",
               "data.batching.mode=token_budget", "data.batching.max_tokens=300", "data.batching.cost=tokens",
               "data.batching.homogeneous=true", "data.sources=[{format: digits, tasks: [digits_t2i, digits_cls]}]"],
              timeout=300)
    assert "MULTI_CPU x 2" in out.stdout + out.stderr
    stage = tmp_path / "tb" / "00-cl"
    assert sorted(losses(stage)) == [1, 2] and all(v == v for v in losses(stage).values())
    assert (stage / "model" / "config.json").exists()
