"""accelerate config presets shipped with vlmbed (package data in ``vlmbed/recipes/accelerate``).

    python -m vlmbed.train.presets            # list the presets and their paths
    python -m vlmbed.train.presets fsdp       # print one path, for --config_file
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent.parent / "recipes" / "accelerate"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no accelerate preset {name!r}; shipped: {', '.join(preset_names())}")
    return path


def set_deepspeed_grad_clip(ds_config: dict, grad_clip: float | None) -> None:
    """Make DeepSpeed clip at the recipe's ``train.grad_clip`` (``gradient_clipping``; 0 = no clipping).

    DeepSpeed's engine clips inside its own step, so the loop does not clip under DeepSpeed; without this,
    accelerate fills an unset (``auto``) value with 1.0 and a recipe's ``grad_clip`` (MoCa: 5.0) is lost.
    The shipped presets leave it unset; a value pinned in a user's own DeepSpeed config that disagrees
    with the recipe is replaced, with a warning.
    """
    value = float(grad_clip) if grad_clip else 0.0
    pinned = ds_config.get("gradient_clipping")
    if isinstance(pinned, (int, float)) and float(pinned) != value:
        warnings.warn(f"DeepSpeed config gradient_clipping={pinned} replaced by the recipe's train.grad_clip "
                      f"({grad_clip}); set train.grad_clip in the recipe to change it", stacklevel=2)
    ds_config["gradient_clipping"] = value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        try:
            print(preset_path(argv[0]))
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    for name in preset_names():
        print(f"{name:18s} {preset_path(name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
