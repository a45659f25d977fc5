"""`qrun` command line (commands to be written)."""

import typer

from qrun import __version__
from qrun.errors import run

app = typer.Typer(name="qrun", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)


@app.command()
def version():
    """Print the version."""
    typer.echo(f"qrun {__version__}")


def main() -> None:
    run(app)
