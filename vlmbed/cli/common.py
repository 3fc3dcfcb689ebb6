"""What every command shares: choices listed in ``--help``, resolved paths, and errors that exit non-zero."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer


class Role(str, Enum):
    """Who an item is embedded as: the question side or the searched side."""

    query = "query"
    document = "document"


class Suite(str, Enum):
    """Benchmark suites (vlmbed.eval.SUITES; a test keeps the two the same)."""

    digits = "digits"
    scenes = "scenes"
    mmeb = "mmeb"
    vidore = "vidore"
    mbeir = "mbeir"
    mmeb_v2 = "mmeb-v2"


class IndexKind(str, Enum):
    """vlmbed.index.KINDS."""

    auto = "auto"
    flat = "flat"
    ivf = "ivf"
    hnsw = "hnsw"


class Pooling(str, Enum):
    last = "last"
    mean = "mean"


class Attention(str, Enum):
    causal = "causal"
    bidirectional = "bidirectional"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


# the hint library errors give about unreadable images names a recipe key; commands have a flag instead
_RECIPE_HINT = "set data.on_bad_image=skip to skip such records"


def fail(exc: BaseException, flag_hint: str | None = None) -> None:
    """Print ``error: ...`` in red and exit with code 2. ``flag_hint``: the command's own flag that skips
    unreadable images, replacing the recipe key the library's message suggests."""
    text = str(exc)
    if _RECIPE_HINT in text:
        text = text.replace(_RECIPE_HINT, f"pass {flag_hint} to skip such items" if flag_hint else
                            "fix or remove such items")
    typer.secho(f"error: {text}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def absolute(path: Path | None) -> Path | None:
    """``path`` made absolute (``~`` expanded), so every message names the file it means."""
    return None if path is None else path.expanduser().resolve()


def value(choice) -> str | None:
    """The plain string of an Enum choice (None stays None)."""
    return None if choice is None else getattr(choice, "value", choice)
