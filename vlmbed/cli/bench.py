"""Benchmark data commands: ``vlmbed data check SUITE DIR``. Parsing only; the work is in vlmbed.eval."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vlmbed.cli import app
from vlmbed.cli.common import Suite, absolute

data_app = typer.Typer(help="Benchmark data: validate downloads before any model runs.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _options(pairs: list[str] | None) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"option {pair!r} is not key=value")
        out[key] = value
    return out


@data_app.command("check")
def check(
    suite: str = typer.Argument(..., help="Benchmark suite: " + ", ".join(s.value for s in Suite) + "."),
    data_dir: Path = typer.Argument(..., help="Folder with the suite's files."),
    tasks: list[str] = typer.Option(None, "--tasks", help="Only these datasets (repeat the option)."),
    images: bool = typer.Option(True, "--images/--no-images", help="Check that every referenced image exists."),
    option: list[str] = typer.Option(None, "--option", help="Suite option key=value (e.g. pool=global)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Report exactly which files, images or datasets are missing or have the wrong row counts.

    Exit code 0 when everything is present with the published sizes, 1 otherwise.
    """
    from vlmbed.eval import check_suite

    data_dir = absolute(data_dir)
    if not data_dir.exists():
        typer.secho(f"error: {data_dir} does not exist", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    try:
        report = check_suite(suite, data_dir, tasks or None, _options(option), images=images)
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    typer.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.text())
    raise typer.Exit(code=0 if report.ok else 1)
