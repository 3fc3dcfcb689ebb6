"""``vlmbed export``: a model folder for sentence-transformers or vLLM. Parsing only."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from vlmbed.cli import app
from vlmbed.cli.common import DType, absolute, fail, value


class Format(str, Enum):
    """vlmbed.export.FORMATS (a test keeps the two the same)."""

    sentence_transformers = "sentence-transformers"
    vllm = "vllm"


def _dims(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(d) for d in text.replace(" ", "").split(",") if d]
    except ValueError:
        raise typer.BadParameter(f"--matryoshka-dims wants integers separated by commas (e.g. 1536,768,256), "
                                 f"got {text!r}") from None


@app.command("export")
def export_cmd(
    model: Path = typer.Argument(..., help="Model folder: a vlmbed save, a Hugging Face VLM, or a LoRA adapter/."),
    out: Path = typer.Argument(..., help="Output folder (new or empty)."),
    format: Format = typer.Option(..., "--format", help="Who loads it: sentence-transformers or vllm."),  # noqa: A002
    dtype: DType = typer.Option(DType.auto, "--dtype", help="Saved weights' dtype (auto: the model's config)."),
    matryoshka_dims: str = typer.Option(None, "--matryoshka-dims",
                                        help="Dimensions the model was trained to truncate to, e.g. 1536,768,256."),
    query_instruction: str = typer.Option("", "--query-instruction",
                                          help="Instruction for queries that have none (the 'query' prompt)."),
    document_instruction: str = typer.Option("", "--document-instruction",
                                             help="Instruction for documents that have none (the 'document' prompt)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty OUT."),
) -> None:
    """Export MODEL for sentence-transformers or vLLM: merged weights, a chat template that renders items as
    vlmbed does, pooling and normalisation files, and (vllm) SERVE.md with the serve command."""
    from vlmbed.export import export

    try:
        path = export(absolute(model), absolute(out), value(format), dtype=value(dtype),
                      matryoshka_dims=_dims(matryoshka_dims),
                      prompts={"query": query_instruction, "document": document_instruction}, overwrite=overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        fail(exc)
    typer.echo(f"{value(format)} export -> {path}")
    if value(format) == "vllm":
        typer.echo(f"serve it: see {path / 'SERVE.md'}")
