"""`vlmbed` command line: parsing only; every command calls a library function.

One module per command group registers its commands on :data:`app`:
``core`` (quickstart, train, eval, encode), ``use`` (serve, index, mine), ``bench`` (data check),
``tiny`` (tiny build), ``teacher`` (teacher embed), ``export`` (export for sentence-transformers / vLLM).
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vlmbed",
    help="Turn vision-language models into multimodal embedding models: train, evaluate, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(show: bool) -> None:
    if show:
        from vlmbed import __version__

        typer.echo(f"vlmbed {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the vlmbed version and exit."),
) -> None:
    """Turn vision-language models into multimodal embedding models: train, evaluate, serve."""


def _register() -> None:
    from importlib import import_module

    for name in ("core", "use", "bench", "tiny", "teacher", "export"):
        try:
            import_module(f"vlmbed.cli.{name}")
        except ModuleNotFoundError as exc:  # a command group not present in this install
            if exc.name != f"vlmbed.cli.{name}":
                raise


def main() -> None:
    _register()
    app()
