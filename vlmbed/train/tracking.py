"""Experiment tracking through accelerate's trackers: TensorBoard and Weights & Biases.

``train.report_to: [tensorboard, wandb]`` sends every row written to ``metrics.jsonl`` (the same numeric
parts, at the same optimizer step) to each tracker, and the stage's flattened config as hyperparameters.
Runs live inside the stage folder (``<stage_dir>/tracking/``), so a run's logs travel with its weights.

W&B runs offline by default (``train.wandb_mode``): nothing leaves the machine until ``wandb sync
<stage_dir>/tracking/wandb/offline-run-*``; ``online`` logs live (needs ``WANDB_API_KEY``). A tracker whose
package is missing is an error naming the extra to install, raised before any training step.
"""

from __future__ import annotations

import importlib.util
import numbers
from pathlib import Path

TRACKERS = ("tensorboard", "wandb")
# tracker -> the module that must import for it
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def tracking_dir(stage_dir: Path) -> Path:
    return Path(stage_dir) / "tracking"


def check_trackers(report_to: list[str]) -> list[str]:
    """The trackers to start (validated, de-duplicated); a clear error for a missing package."""
    out = []
    for name in dict.fromkeys(report_to or []):
        if name not in TRACKERS:
            raise ValueError(f"train.report_to: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise ImportError(f"train.report_to lists {name!r} but the {_PACKAGES[name]!r} package is not "
                              f"installed: pip install {_PACKAGES[name]} (or pip install 'vlmbed[track]')")
        out.append(name)
    return out


def flat_config(tree: dict, prefix: str = "") -> dict:
    """Nested config -> ``{"train.lr": 1e-4, ...}`` with values every tracker accepts (bool, int, float, str);
    lists and None become strings so TensorBoard's hparams take them."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def start(accelerator, stage, stage_dir: Path, project: str) -> bool:
    """Start the stage's trackers on ``accelerator`` (built with ``log_with``); False when none is asked."""
    cfg = stage.train
    if not cfg.report_to:
        return False
    root = tracking_dir(stage_dir)
    root.mkdir(parents=True, exist_ok=True)
    init = {}
    if "wandb" in cfg.report_to:
        init["wandb"] = {"name": stage.name, "dir": str(root), "mode": cfg.wandb_mode, "job_type": "train"}
    accelerator.init_trackers(project, config=flat_config(stage.model_dump(mode="json")), init_kwargs=init)
    return True


def log_row(accelerator, row: dict) -> None:
    """Send the numeric values of one metrics row to every started tracker, at its optimizer step."""
    values = {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, numbers.Real)}
    accelerator.log(values, step=int(row["step"]))
