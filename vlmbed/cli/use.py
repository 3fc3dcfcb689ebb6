"""Using a model: ``serve``, ``index build``, ``index search``, ``mine``. Parsing only."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vlmbed.cli import app
from vlmbed.cli.common import Attention, DType, IndexKind, Pooling, Role, absolute, fail, value

index_app = typer.Typer(help="Build and search a vector index of a corpus.", no_args_is_help=True)
app.add_typer(index_app, name="index")


def _overrides(pooling: Pooling | None, attention: Attention | None) -> dict:
    return {k: value(v) for k, v in (("pooling", pooling), ("attention", attention)) if v}


@app.command()
def serve(
    model: Path = typer.Option(..., "--model", help="Model folder (vlmbed save or Hugging Face VLM folder)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    port: int = typer.Option(8000, "--port"),
    api_key: str = typer.Option(None, "--api-key", envvar="VLMBED_API_KEY",
                                help="Require 'Authorization: Bearer KEY' on /v1/* (or set VLMBED_API_KEY)."),
    model_name: str = typer.Option(None, "--model-name", help="Name clients send as `model` (default: folder name)."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", help="Most items in one model batch."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="Longest a request waits for batch company."),
    max_queue: int = typer.Option(1024, "--max-queue", help="Most items waiting; beyond it requests get 503."),
    max_body_mb: float = typer.Option(32.0, "--max-body-mb", help="Largest request body, MiB (413 beyond)."),
    max_items: int = typer.Option(256, "--max-items", help="Most inputs in one request."),
    max_image_pixels: int = typer.Option(25_000_000, "--max-image-pixels", help="Largest image, width x height."),
    allow_remote_images: bool = typer.Option(False, "--allow-remote-images",
                                             help="Fetch http(s) image URLs (off: only data URLs / base64)."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    dtype: DType = typer.Option(DType.auto, "--dtype", help="Weights' dtype (auto: the checkpoint's)."),
    threads: int = typer.Option(None, "--threads",
                                help="torch CPU threads (default on CPU: every core but one, kept for the event loop)."),
    pooling: Pooling = typer.Option(None, "--pooling", help="Override the saved pooling."),
    attention: Attention = typer.Option(None, "--attention", help="Override the saved attention."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve --model with an OpenAI-compatible POST /v1/embeddings (plus GET /v1/models and /health)."""
    try:
        from vlmbed.serve import ServeSettings, run_server
    except ImportError as exc:
        fail(ImportError(f"{exc}; serving needs fastapi and uvicorn: pip install fastapi 'uvicorn[standard]'"))
    model = absolute(model)

    try:
        settings = ServeSettings(
            model_name=model_name or model.name, api_key=api_key, max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms, max_queue=max_queue, max_body_bytes=int(max_body_mb * 1024 * 1024),
            max_items_per_request=max_items, max_image_pixels=max_image_pixels,
            allow_remote_images=allow_remote_images)
        run_server(model, settings, host=host, port=port, device=device, dtype=value(dtype), threads=threads,
                   log_level=log_level, **_overrides(pooling, attention))
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)


@index_app.command("build")
def index_build(
    model: Path = typer.Option(..., "--model", help="Model folder."),
    input: Path = typer.Option(..., "--input", help="Items jsonl: {id, text, image, instruction, ...metadata}."),
    out: Path = typer.Option(..., "--out", help="Index folder to write."),
    kind: IndexKind = typer.Option(IndexKind.auto, "--kind", help="auto: flat up to 50k items, else ivf."),
    role: Role = typer.Option(Role.document, "--role", help="Role the corpus is encoded with."),
    batch_size: int = typer.Option(32, "--batch-size"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images (reported) instead of failing."),
    nlist: int = typer.Option(None, "--nlist", help="ivf: number of lists (default 4*sqrt(N))."),
    nprobe: int = typer.Option(None, "--nprobe", help="ivf: lists searched per query."),
    ef_search: int = typer.Option(128, "--ef-search", help="hnsw: query-time beam width."),
) -> None:
    """Encode every item of --input and save a faiss index with ids and metadata in --out."""
    from vlmbed.index import IndexParams, build_index

    model, input, out = absolute(model), absolute(input), absolute(out)
    try:
        params = IndexParams(nlist=nlist, nprobe=nprobe, ef_search=ef_search)
        index = build_index(model, input, out, kind=kind.value, role=role.value, batch_size=batch_size,
                            on_bad="skip" if skip_bad else "error", params=params, show_progress=True)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        fail(exc, "--skip-bad")
    for reason in index.info.get("skipped", []):
        typer.secho(f"skipped: {reason}", fg=typer.colors.YELLOW, err=True)
    typer.echo(json.dumps({"items": len(index), "dim": index.dim, "kind": index.kind,
                           "skipped": len(index.info.get("skipped", [])), "out": str(out)}))


@index_app.command("search")
def index_search(
    index_dir: Path = typer.Option(..., "--index", help="Index folder from `vlmbed index build`."),
    text: str = typer.Option("", "--text", help="Query text."),
    image: Path = typer.Option(None, "--image", help="Query image file."),
    k: int = typer.Option(10, "-k", "--k", help="Number of hits."),
    instruction: str = typer.Option("", "--instruction", help="Task instruction for the query."),
    model: Path = typer.Option(None, "--model", help="Model folder (default: the one that built the index)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per hit."),
) -> None:
    """Search an index with a text and/or image query (encoded with role "query")."""
    from vlmbed.index import search_index

    if not text and image is None:
        fail(ValueError("give a query: --text, --image, or both"))
    index_dir, image, model = absolute(index_dir), absolute(image), absolute(model)
    try:
        hits = search_index(index_dir, text=text, image=image, k=k, instruction=instruction, model=model)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        fail(exc)
    if as_json:
        for hit in hits:
            typer.echo(json.dumps(hit.as_dict(), ensure_ascii=False))
        return
    _print_hits(hits)


def _print_hits(hits) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("rank", "score", "id", "text", "image")
    for hit in hits:
        text = str(hit.metadata.get("text", ""))
        table.add_row(str(hit.rank), f"{hit.score:.4f}", hit.id, text[:80] + ("..." if len(text) > 80 else ""),
                      str(hit.metadata.get("image", "")))
    Console().print(table)


@app.command()
def mine(
    model: Path = typer.Option(..., "--model", help="Model folder used to score candidates."),
    input: Path = typer.Option(..., "--input", help="Training jsonl (query/positive/... records)."),
    out: Path = typer.Option(..., "--out", help="Output jsonl: the records with `negatives` filled in."),
    k: int = typer.Option(8, "-k", "--k", help="Hard negatives per query (UniME 8, MoCa 2)."),
    dup_threshold: float = typer.Option(0.95, "--dup-threshold",
                                        help="Drop candidates this similar to the positive (near-duplicates)."),
    margin: float = typer.Option(0.1, "--margin", help="Drop candidates scoring above sim(query, positive) + margin "
                                 "as likely false negatives (UniME beta); negative value: off."),
    skip_top: int = typer.Option(0, "--skip-top", help="Also skip the n best remaining candidates."),
    corpus: Path = typer.Option(None, "--corpus", help="Mine from this items jsonl instead of the file's positives."),
    any_task: bool = typer.Option(False, "--any-task", help="Take candidates from every task, not the query's."),
    keep_existing: bool = typer.Option(True, "--keep-existing/--replace-existing",
                                       help="Keep each record's curated negatives (first, then the mined ones), "
                                       "or replace them with the mined ones."),
    batch_size: int = typer.Option(32, "--batch-size"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images (reported) instead of failing."),
) -> None:
    """Write hard negatives per query (excluding the positive, near-duplicates and likely false negatives).

    Records' own negatives are kept unless --replace-existing; the summary counts them either way.
    """
    from vlmbed.mine import MineSettings, mine_hard_negatives

    model, input, out, corpus = absolute(model), absolute(input), absolute(out), absolute(corpus)
    try:
        settings = MineSettings(k=k, dup_threshold=dup_threshold, margin=None if margin < 0 else margin,
                                skip_top=skip_top, same_task=not any_task, keep_existing=keep_existing,
                                batch_size=batch_size)
        report = mine_hard_negatives(model, input, out, settings, corpus=corpus,
                                     on_bad="skip" if skip_bad else "error", show_progress=True)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        fail(exc, "--skip-bad")
    for reason in report.skipped:
        typer.secho(f"skipped: {reason}", fg=typer.colors.YELLOW, err=True)
    _warn_mine(report, k)
    typer.echo(json.dumps({**report.as_dict(), "out": str(out)}))


def _warn_mine(report, k: int) -> None:
    """Say what happened to curated negatives and to records that got fewer than k mined ones."""
    if report.existing_dropped:
        typer.secho(f"replaced {report.existing_dropped} curated negative(s) in {report.records_with_existing} "
                    "record(s) with mined ones (--replace-existing)", fg=typer.colors.YELLOW, err=True)
    elif report.existing_kept:
        typer.echo(f"kept {report.existing_kept} curated negative(s) of {report.records_with_existing} record(s), "
                   "before the mined ones", err=True)
    if report.short:
        typer.secho(f"{report.short} of {report.records} record(s) got fewer than {k} mined negative(s) "
                    "(too few candidates pass the rules, or an unreadable image)", fg=typer.colors.YELLOW, err=True)
