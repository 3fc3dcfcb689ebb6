"""Core commands: quickstart, train, eval, encode, export-merged. Parsing only; the work is in library functions."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vlmbed.cli import app
from vlmbed.cli.common import Role, Suite, absolute, fail


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Output folder for the model, results and report."),
    override: list[str] = typer.Argument(None, help="Recipe overrides, key=value (e.g. train.epochs=1)."),
) -> None:
    """Build the tiny VLM, train it on the built-in digits suite, evaluate, and write a report."""
    from vlmbed.quickstart import run_quickstart

    try:
        run_quickstart(absolute(out), override or [])
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)


@app.command()
def train(
    recipe: str = typer.Argument(..., help="Recipe YAML path or a shipped recipe name (quickstart, moca, ...)."),
    override: list[str] = typer.Argument(None, help="Overrides key=value; stages.NAME.key=value for one stage."),
    stage: str = typer.Option(None, "--stage", help="Run only this stage (earlier stages' outputs are reused)."),
    out: Path = typer.Option(None, "--out", help="Output folder (sets the recipe's output_dir; default: the "
                             "recipe's output_dir, relative to the working directory)."),
) -> None:
    """Run a recipe (all its stages in order, or one with --stage).

    Input paths in a recipe file (data sources, image_root, model.path) are relative to the recipe file's
    folder; in a shipped recipe and in overrides they are relative to the working directory.
    """
    from vlmbed.config import load_recipe
    from vlmbed.eval.table import print_table
    from vlmbed.train.stages import run_recipe

    overrides = list(override or []) + ([f"output_dir={absolute(out)}"] if out is not None else [])
    try:
        recipe_cfg = load_recipe(recipe, overrides)
        names = [s.name for s in recipe_cfg.stages]
        if stage is not None and stage not in names:
            raise ValueError(f"--stage {stage!r}: recipe {recipe_cfg.name!r} has no such stage; "
                             f"its stages: {', '.join(names)}")
        runs = run_recipe(recipe_cfg, only_stage=stage)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        fail(exc)
    for run in runs:
        if run.results_after is not None:
            print_table(run.results_after, run.results_before, title=f"stage {run.stage}")
        typer.echo(f"stage {run.stage}: model -> {absolute(Path(run.result.model_dir))}")


@app.command("eval")
def eval_cmd(
    model: Path = typer.Option(..., "--model", help="Model folder (vlmbed save or Hugging Face VLM folder)."),
    suite: Suite = typer.Option(Suite.digits, "--suite", help="Benchmark suite: digits, scenes, mmeb, mmeb-v2, vidore or mbeir."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Folder with the suite's files (not needed for digits)."),
    tasks: list[str] = typer.Option(None, "--tasks", help="Only this task (repeat the option for several)."),
    out: Path = typer.Option(None, "--out", help="Folder for results.json (default: MODEL/eval-SUITE)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    max_queries: int = typer.Option(None, "--max-queries", help="At most this many queries per task."),
    option: list[str] = typer.Option(
        None, "--option", help="Suite option key=value (pool=global, prompt=moca, ties=trec, ...); repeatable."
    ),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Embedding cache folder (default: OUT/embeddings)."),
) -> None:
    """Evaluate a model on a benchmark suite and print the score table.

    Multi-GPU / multi-node: accelerate launch --multi_gpu --num_processes N $(which vlmbed) eval ...
    """
    from vlmbed.eval import evaluate
    from vlmbed.eval.table import print_table

    model, data_dir, cache_dir = absolute(model), absolute(data_dir), absolute(cache_dir)
    out = absolute(out) or model / f"eval-{suite.value}"
    bad = [o for o in option or [] if "=" not in o]
    if bad:
        fail(ValueError(f"--option {bad[0]!r} is not key=value"))
    opts = dict(o.split("=", 1) for o in (option or []))
    try:
        results = evaluate(model, suite=suite.value, tasks=tasks or None, out_dir=out, max_queries=max_queries,
                           batch_size=batch_size, show_progress=True, data_dir=data_dir, options=opts,
                           cache_dir=cache_dir)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    if results.get("run", {}).get("is_main_process", True):
        print_table(results, title=f"{suite.value}: {model}")
        typer.echo(f"results -> {out / 'results.json'}")


def npy_path(out: Path) -> Path:
    """The file ``numpy.save`` writes for ``out`` (it appends ``.npy`` when the name lacks it)."""
    return out if out.suffix == ".npy" else out.with_name(out.name + ".npy")


@app.command()
def encode(
    model: Path = typer.Option(..., "--model", help="Model folder."),
    input: Path = typer.Option(..., "--input", help="jsonl with one item per line: {text, image, instruction}."),
    out: Path = typer.Option(..., "--out", help="Output .npy file (N x d float32, in input order; "
                             "`.npy` is added when missing)."),
    role: Role = typer.Option(Role.query, "--role", help="Embed the items as queries or as documents."),
    batch_size: int = typer.Option(32, "--batch-size"),
    truncate_dim: int = typer.Option(None, "--truncate-dim",
                                     help="Keep the first D dimensions (Matryoshka), renormalised."),
    skip_bad: bool = typer.Option(False, "--skip-bad",
                                  help="Unreadable images give a row of NaN (reported) instead of failing."),
) -> None:
    """Embed a jsonl of items (image paths relative to the file) and save an N x d .npy array.

    Row i of the array is line i of --input.
    """
    import numpy as np

    from vlmbed.data.items import read_items
    from vlmbed.index.corpus import encode_items
    from vlmbed.models.embedder import Embedder

    model, input, target = absolute(model), absolute(input), npy_path(absolute(out))
    try:
        items = read_items(input, check_images=not skip_bad)
        embedder = Embedder.from_pretrained(model)
        embedder._check_truncate_dim(truncate_dim)
        vectors, report = encode_items(embedder, items, role.value, batch_size=batch_size,
                                       on_bad="skip" if skip_bad else "error", show_progress=True)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc, "--skip-bad")
    dim = truncate_dim or int(embedder.hidden_size)
    full = np.full((len(items), dim), np.nan, dtype=np.float32)
    full[report.kept] = _truncate(vectors, truncate_dim, embedder.settings.normalize)
    for reason in report.skipped:
        typer.secho(f"skipped (NaN row): {reason}", fg=typer.colors.YELLOW, err=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target, full)
    typer.echo(json.dumps({"items": len(items), "dim": dim, "skipped": len(report.skipped), "out": str(target)}))


def _truncate(vectors, dim: int | None, normalize: bool):
    """Matryoshka: the first ``dim`` dimensions, renormalised when the model normalises (as ``encode`` does)."""
    import numpy as np

    if dim is None:
        return vectors
    cut = vectors[:, :dim]
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12) if normalize else cut


@app.command("export-merged")
def export_merged_cmd(
    model: Path = typer.Option(..., "--model", help="A LoRA stage's adapter/ folder (PEFT format + vlmbed.json)."),
    out: Path = typer.Option(..., "--out", help="Output folder: a plain Hugging Face model with merged weights."),
) -> None:
    """Merge a LoRA adapter into its base model and save a plain Hugging Face folder (no peft needed)."""
    from vlmbed.models.export import export_merged

    try:
        path = export_merged(absolute(model), absolute(out))
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    typer.echo(f"merged model -> {absolute(Path(path))}")
