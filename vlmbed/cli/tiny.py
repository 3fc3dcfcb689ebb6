"""The tiny world: ``vlmbed tiny build [--pretrained]``. Parsing only; the work is in vlmbed.models."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vlmbed.cli import app
from vlmbed.cli.common import absolute, fail

tiny_app = typer.Typer(help="The tiny world: small Qwen2-VL models built in code, offline.", no_args_is_help=True)
app.add_typer(tiny_app, name="tiny")


@tiny_app.command("build")
def build(
    pretrained: bool = typer.Option(False, "--pretrained",
                                    help="Generatively pre-train it on the built-in real-image data (minutes; cached)."),
    out: Path = typer.Option(None, "--out", help="Folder to write (default: the user cache, $VLMBED_CACHE)."),
    force: bool = typer.Option(False, "--force", help="Build again even if a finished build is there."),
    family: str = typer.Option("qwen2_vl", "--family", help="qwen2_vl or qwen2_5_vl."),
    seed: int = typer.Option(0, "--seed", help="Initialisation (and, pre-trained, data order) seed."),
    steps: int = typer.Option(None, "--steps", help="Pre-training steps (default: the built-in config's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the build log as JSON."),
) -> None:
    """Build the tiny model (random, or with --pretrained causally pre-trained) and print where it went.

    The pre-trained one is what recipes get with model.path=tiny_pretrained."""
    if family not in ("qwen2_vl", "qwen2_5_vl"):
        fail(ValueError(f"--family {family!r}: choose qwen2_vl or qwen2_5_vl"))
    if not pretrained:
        _random(out, force, family, seed)
        return
    from dataclasses import replace

    from vlmbed.models.pretrained_tiny import PretrainConfig, read_build_log
    from vlmbed.train.pretrain_tiny import ensure_pretrained_tiny

    cfg = replace(PretrainConfig(), family=family, seed=seed)
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    try:
        folder = ensure_pretrained_tiny(cfg, out=absolute(out) if out else None, force=force,
                                        log=None if as_json else typer.echo)
    except (ValueError, FileExistsError) as exc:
        fail(exc)
    log = read_build_log(folder)
    if as_json:
        typer.echo(json.dumps({"path": str(folder), **log}, indent=2))
        return
    typer.echo(f"pre-trained tiny {family} model: {folder}")
    typer.echo(f"  {log['parameters'] / 1e6:.2f}M parameters, {log['steps']} steps on {log['config']['data']}, "
               f"loss {log['first_loss']:.3f} -> {log['final_loss']:.3f}, built in {log['build_seconds']:.0f} s")
    for name, ev in log["heldout"].items():
        typer.echo(f"  held-out {name}: caption accuracy {ev['caption_accuracy']} (chance {ev['chance']}, "
                   f"n={ev['n']})")
    typer.echo("  use it with model.path=tiny_pretrained, or Embedder.from_pretrained on the folder")


def _random(out: Path | None, force: bool, family: str, seed: int) -> None:
    import shutil

    from vlmbed.models.pretrained_tiny import cache_root
    from vlmbed.models.tiny import build_tiny_vlm

    folder = absolute(out) if out else cache_root() / "tiny" / f"{family}-seed{seed}"
    if (folder / "config.json").exists() and not force:
        typer.echo(f"random tiny {family} model (already there; --force builds it again): {folder}")
        return
    if folder.exists() and any(folder.iterdir()) and not (folder / "config.json").exists() and not force:
        fail(FileExistsError(f"{folder} exists and is not a model folder; pass --force or choose another --out"))
    if force:
        shutil.rmtree(folder, ignore_errors=True)
    build_tiny_vlm(folder, family=family, seed=seed)
    typer.echo(f"random tiny {family} model: {folder}")
