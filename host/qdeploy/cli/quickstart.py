"""`qdeploy quickstart`: the whole pipeline on the bundled demo (qdeploy.quickstart), printed
as convert, evaluate, compile and push print their own results."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qdeploy.cli.convert import DEFAULT_OUT, print_conversion, print_evaluation
from qdeploy.cli.push_view import print_table
from qdeploy.cli.ui import StepUI, out

commands = typer.Typer()  # added to the qdeploy app by qdeploy.cli


@commands.command()
def quickstart(
    out_dir: Path = typer.Option(DEFAULT_OUT, "--out", help="Output directory."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default: "
                                         "the recipe's)."),
    push: bool = typer.Option(True, "--push/--no-push", help="End with a push to the local "
                              "target and a benchmark."),
):
    """Run the whole pipeline on the bundled MNIST demo, with no arguments needed.

    Trains the TFLite quantization tutorial's model on the first 8,000 images of the
    bundled MNIST test split, converts it to full integer, evaluates it on the last 2,000
    (held out), compiles it for the Edge TPU (or predicts the compiler's verdict when
    edgetpu_compiler is not installed) and rehearses a deployment: a push to the `local`
    target (release under $QDEPLOY_HOME, default ~/qdeploy; report under ./reports) that
    benchmarks it on this machine. It ends with the command that classifies a bundled
    held-out digit (models/mnist/samples/digit-7.png) with that deployment.
    """
    from qdeploy import quickstart as qs

    result = qs.run(out_dir, StepUI(), epochs=epochs, push=push)
    print_conversion(result.conversion)
    print_evaluation(result.evaluation)
    out.print(f"Edge TPU: {result.compile_outcome.verdict}")
    if result.push_result is not None:
        print_table([result.push_result], console=out)
        if not result.push_result.ok:
            raise typer.Exit(1)
    print_next(result)


def print_next(result) -> None:
    """The last lines: the command that classifies the bundled sample digit (as it is
    pasted in this directory), on one line of its own whatever its length."""
    from qdeploy import quickstart as qs

    with_what = "this deployment" if result.push_result is not None else "the converted model"
    what = ("a held-out digit (its true label is in the file name)" if result.sample
            is not None else "an image")
    typer.echo(f"Next, classify {what} with {with_what}:")
    typer.echo(f"  {qs.classify_command(result)}")
