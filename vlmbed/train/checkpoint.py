"""Checkpoints: model, optimizer, scheduler, RNG (accelerate state) + step and resolved config.

Written to a temporary folder and renamed, so a crash never leaves a half-written checkpoint
that resume would pick up.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.json"


def checkpoint_dir(stage_dir: Path) -> Path:
    return Path(stage_dir) / "checkpoints"


def save_checkpoint(accelerator, stage_dir: Path, step: int, state: dict, config_yaml: str, keep: int = 2) -> Path:
    root = checkpoint_dir(stage_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=2))
        (tmp / "config.yaml").write_text(config_yaml)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(stage_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(stage_dir: Path) -> list[Path]:
    root = checkpoint_dir(stage_dir)
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE_FILE).exists())


def latest_checkpoint(stage_dir: Path) -> Path | None:
    ckpts = list_checkpoints(stage_dir)
    return ckpts[-1] if ckpts else None


def read_state(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / STATE_FILE).read_text())
