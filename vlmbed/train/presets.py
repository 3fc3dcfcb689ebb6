"""accelerate config presets shipped with vlmbed (package data in ``vlmbed/recipes/accelerate``).

    python -m vlmbed.train.presets            # list the presets and their paths
    python -m vlmbed.train.presets fsdp       # print one path, for --config_file
"""

from __future__ import annotations

import sys
from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent.parent / "recipes" / "accelerate"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no accelerate preset {name!r}; shipped: {', '.join(preset_names())}")
    return path


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
