"""Teacher embeddings for distillation (UniME stage 1): ``vlmbed teacher embed``. Parsing only; the work is in
:mod:`vlmbed.train.teacher`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vlmbed.cli import app
from vlmbed.cli.common import Role, absolute, fail, value

teacher_app = typer.Typer(help="Teacher embeddings computed offline, read by training by content key.",
                          no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")


@teacher_app.command("embed")
def embed(
    teacher: Path = typer.Option(..., "--teacher", help="Teacher folder: a vlmbed / Hugging Face VLM model folder "
                                 "or a sentence-transformers folder (needs the sentence-transformers package)."),
    out: Path = typer.Option(..., "--out", help="Cache folder (vectors.npy, keys.json, teacher.json); texts "
                             "already in it are skipped."),
    data: Path = typer.Option(None, "--data", help="jsonl of {\"text\": ...} lines, JSON strings, or contrastive "
                              "records (their query / positive / negatives text)."),
    recipe: str = typer.Option(None, "--recipe", help="Instead of --data: every text the stage --stage of this "
                               "recipe (file or shipped name) trains on."),
    stage: str = typer.Option(None, "--stage", help="The stage of --recipe (default: its first)."),
    role: Role = typer.Option(Role.query, "--role", help="Role the teacher embeds the texts as (vlmbed teachers)."),
    instruction: str = typer.Option("", "--instruction", help="Instruction put before every text (the teacher's "
                                    "own prompt, e.g. NV-Embed-v2's), not part of the content key."),
    batch_size: int = typer.Option(32, "--batch-size"),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: the library's)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Let a sentence-transformers "
                                           "teacher run its own code (NV-Embed-v2 needs it)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Embed texts with a teacher and add them to a cache folder that training reads by content key."""
    from vlmbed.train.teacher import embed_texts, texts_of_file, texts_of_recipe

    if (data is None) == (recipe is None):
        fail(ValueError("give exactly one of --data FILE or --recipe RECIPE [--stage NAME]"))
    try:
        texts = texts_of_file(absolute(data)) if data is not None else texts_of_recipe(recipe, stage)
        summary = embed_texts(absolute(teacher), texts, absolute(out), role=value(role), instruction=instruction,
                              batch_size=batch_size, device=device, trust_remote_code=trust_remote_code)
    except (ValueError, FileNotFoundError, ImportError, KeyError) as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"{summary['added']} new text(s) embedded by the {summary['kind']} teacher; {summary['total']} in "
               f"{summary['out']} (dimension {summary['dim']})")
