"""Core commands: quickstart, train, eval, encode. Parsing only; the work is in library functions."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vlmbed.cli import app


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), help="Output folder for the model, results and report."),
    override: list[str] = typer.Argument(None, help="Recipe overrides, key=value (e.g. train.epochs=1)."),
) -> None:
    """Build the tiny VLM, train it on the built-in digits suite, evaluate, and write a report."""
    from vlmbed.quickstart import run_quickstart

    try:
        run_quickstart(out, override or [])
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)


@app.command()
def train(
    recipe: str = typer.Argument(..., help="Recipe YAML path or a shipped recipe name (quickstart, ...)."),
    override: list[str] = typer.Argument(None, help="Overrides key=value; stages.NAME.key=value for one stage."),
    stage: str = typer.Option(None, "--stage", help="Run only this stage (earlier stages' outputs are reused)."),
) -> None:
    """Run a recipe (all its stages in order, or one with --stage)."""
    from vlmbed.config import load_recipe
    from vlmbed.eval.table import print_table
    from vlmbed.train.stages import run_recipe

    try:
        recipe_cfg = load_recipe(recipe, override or [])
        runs = run_recipe(recipe_cfg, only_stage=stage)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(exc)
    for run in runs:
        if run.results_after is not None:
            print_table(run.results_after, run.results_before, title=f"stage {run.stage}")
        typer.echo(f"stage {run.stage}: model -> {run.result.model_dir}")


@app.command("eval")
def eval_cmd(
    model: Path = typer.Option(..., "--model", help="Model folder (vlmbed save or Hugging Face VLM folder)."),
    suite: str = typer.Option("digits", "--suite", help="Benchmark suite."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Folder with the suite's files (not needed for digits)."),
    tasks: list[str] = typer.Option(None, "--tasks", help="Only these tasks (repeat the option)."),
    out: Path = typer.Option(None, "--out", help="Folder for results.json (default: MODEL/eval-SUITE)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    max_queries: int = typer.Option(None, "--max-queries", help="At most this many queries per task."),
    option: list[str] = typer.Option(
        None, "--option", help="Suite option key=value (pool=global, prompt=moca, ties=trec, ...); repeatable."
    ),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Embedding cache folder (default: OUT/embeddings)."),
) -> None:
    """Evaluate a model on a benchmark suite (digits, mmeb, vidore, mbeir) and print the score table.

    Multi-GPU / multi-node: accelerate launch --multi_gpu --num_processes N $(which vlmbed) eval ...
    """
    from vlmbed.eval import evaluate
    from vlmbed.eval.table import print_table

    out = out or model / f"eval-{suite}"
    bad = [o for o in option or [] if "=" not in o]
    if bad:
        _fail(ValueError(f"--option {bad[0]!r} is not key=value"))
    opts = dict(o.split("=", 1) for o in (option or []))
    try:
        results = evaluate(model, suite=suite, tasks=tasks or None, out_dir=out, max_queries=max_queries,
                           batch_size=batch_size, show_progress=True, data_dir=data_dir, options=opts,
                           cache_dir=cache_dir)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    if results.get("run", {}).get("is_main_process", True):
        print_table(results, title=f"{suite}: {model}")
        typer.echo(f"results -> {out / 'results.json'}")


@app.command()
def encode(
    model: Path = typer.Option(..., "--model", help="Model folder."),
    input: Path = typer.Option(..., "--input", help="jsonl with one item per line: {text, image, instruction}."),
    out: Path = typer.Option(..., "--out", help="Output .npy file (N x d float32, in input order)."),
    role: str = typer.Option("query", "--role", help="query or document."),
    batch_size: int = typer.Option(32, "--batch-size"),
) -> None:
    """Embed a jsonl of items (image paths relative to the file) and save an N x d .npy array."""
    import numpy as np

    from vlmbed.data.items import read_items
    from vlmbed.models.embedder import Embedder

    try:
        items = read_items(input)
        embedder = Embedder.from_pretrained(model)
        vectors = embedder.encode(items, role=role, batch_size=batch_size, show_progress=True)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, vectors)
    typer.echo(json.dumps({"items": len(items), "dim": int(vectors.shape[1]) if len(items) else 0, "out": str(out)}))


@app.command("export-merged")
def export_merged_cmd(
    adapter: Path = typer.Argument(..., help="A LoRA stage's adapter/ folder (PEFT format + vlmbed.json)."),
    out: Path = typer.Argument(..., help="Output folder: a plain Hugging Face model with merged weights."),
) -> None:
    """Merge a LoRA adapter into its base model and save a plain Hugging Face folder (no peft needed)."""
    from vlmbed.models.lora import export_merged

    try:
        path = export_merged(adapter, out)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"merged model -> {path}")
