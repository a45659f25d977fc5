"""The `qdeploy` typer application. qdeploy.cli adds the commands of its sibling modules."""

import typer

from qrun import __version__
from qrun.errors import run

app = typer.Typer(
    name="qdeploy",
    help="Quantize a float model, compile it for the Coral Edge TPU, push it to a "
         "Raspberry Pi and bring the latency report home.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"qdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Quantize, compile, push and benchmark models for Coral Edge TPU + Raspberry Pi."""


def main() -> None:
    run(app)
