"""`qrun` command line: classify, bench, verify, info. Parses options and prints; the work is elsewhere.

Heavy modules (numpy, PIL, the TFLite runtime) are imported inside the commands,
so `qrun --help` stays quick and `qrun classify` pays only for what it uses.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from qrun import __version__
from qrun.errors import run
from qrun.layout import CURRENT, DEFAULT_HOME, HOME_ENV, MANIFEST_NAME

CURRENT_HELP = f"${HOME_ENV}/{CURRENT} ({DEFAULT_HOME}/{CURRENT})"
app = typer.Typer(name="qrun", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Run quantized and Edge TPU models on this device: classify an image, "
                       "benchmark a model, show the runtime and Edge TPUs. Without --model, "
                       f"qrun uses the current deployment, {CURRENT_HELP}.")

MODEL_HELP = (f"Model file (.tflite) or deployment directory with {MANIFEST_NAME}. "
              f"Default: {CURRENT_HELP}.")
DEVICE_HELP = ("auto: the Edge TPU when its delegate loads, else the CPU int8 twin (says why); "
               "edgetpu: the Edge TPU or an error; cpu: the CPU model.")
TPU_HELP = "Which Edge TPU: usb, usb:N, pci, pci:N or :N. Default: the first found."
THREADS_HELP = "CPU threads for the interpreter. Default: the runtime's choice."


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qrun {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """qrun: classify and benchmark TFLite models on the Edge TPU or the CPU."""


@app.command()
def classify(
    image: Path = typer.Argument(..., metavar="IMAGE", help="Image to classify (JPEG, PNG or BMP)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    labels: Optional[Path] = typer.Option(
        None, "--labels", "-l",
        help="Labels file: 'id label' / 'id: label' lines, or one label per line. "
             "Default: the deployment's."),
    top_k: int = typer.Option(3, "--top-k", "-k", help="How many classes to print."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", "-t",
        help="Lowest score to print. Default: none, the top-k classes whatever their scores "
             "(a model without softmax can score every class below 0)."),
    count: int = typer.Option(1, "--count", "-c",
                              help="Times to run the model; the first includes model load."),
    device: str = typer.Option("auto", "--device", "-d", help=DEVICE_HELP),
    tpu: str = typer.Option("", "--tpu", help=TPU_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead."),
) -> None:
    """Classify IMAGE: print 'label: score' lines, best first, and the time of each invoke.

    Reads the output the deployment's manifest names as scores (a bare model file: output
    0); a deployment whose task is not classify is refused, naming the command to use.
    """
    from qrun.classify import classify as run_classify

    result = run_classify(image, model, labels, top_k, threshold, count, device, tpu, threads)
    if result.fell_back:
        typer.echo(f"note: {result.device['reason']}", err=True)
    if as_json:
        import json

        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    for i, ms in enumerate(result.timings_ms, 1):
        flag = " (first: includes loading the model)" if i == 1 else ""
        typer.echo(f"invoke {i}: {ms:.2f} ms{flag}")
    for c in result.classes:
        typer.echo(f"{c.label or c.id}: {c.score:.5f}")


@app.command()
def bench(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    runs: int = typer.Option(100, "--runs", "-n", help="Timed steady-state runs."),
    warmup: int = typer.Option(10, "--warmup", "-w",
                               help="Untimed runs after the first inference."),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    device: Optional[str] = typer.Option(
        None, "--device", "-d",
        help=DEVICE_HELP + " Default: auto. Not with --compare, which runs every variant."),
    tpu: str = typer.Option("", "--tpu", help=TPU_HELP),
    json_out: Optional[str] = typer.Option(
        None, "--json",
        help="Write the JSON report to this file (atomically), or '-' for stdout."),
    compare: bool = typer.Option(
        False, "--compare",
        help="Benchmark every variant the deployment holds (float, int8, edgetpu when the "
             "delegate loads) with the same settings; the JSON holds one report each."),
) -> None:
    """Measure latency (init, first inference, warm-up, steady state), memory and host facts.

    Every input is fed seeded random values of its dtype; the report records the model's
    task (from its manifest) and how many inputs and outputs it has.
    """
    from qrun import bench as bench_mod

    target = _json_target(json_out)  # before benchmarking: a bad path fails in a second
    if compare and device is not None:
        from qrun.errors import UserError

        raise UserError(f"--device {device} cannot be used with --compare, which benchmarks "
                        "every variant (float, int8, edgetpu); drop one of them")
    if compare:
        report = bench_mod.bench_variants(model, runs, warmup, threads, tpu,
                                          progress=bench_mod.stderr_progress)
        texts = [bench_mod.summary(r) for r in report["reports"]]
    else:
        report = bench_mod.bench(model, runs, warmup, threads, device or "auto", tpu,
                                 progress=bench_mod.stderr_progress).to_dict()
        texts = [bench_mod.summary(report)]
    if json_out is None:
        typer.echo("\n\n".join(texts))
        return
    import json

    text = json.dumps(report, indent=2) + "\n"
    if json_out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from qrun import atomic
    from qrun.errors import UserError

    try:
        atomic.write_text(target, text)
    except OSError as exc:
        raise UserError(f"--json {json_out}: cannot write the report "
                        f"({exc.strerror or exc.__class__.__name__}); give a writable "
                        "file path") from None
    typer.echo("\n\n".join(texts))
    typer.echo(f"report written to {target}", err=True)


def _json_target(json_out: Optional[str]) -> Optional[Path]:
    """The file `--json` names (None for no --json or '-'), checked before any work is done."""
    if json_out is None or json_out == "-":
        return None
    from qrun.errors import UserError

    target = Path(json_out)
    try:
        is_dir, parent_is_dir = target.is_dir(), target.parent.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        raise UserError(f"--json {json_out}: {exc.strerror or exc.__class__.__name__}; give "
                        "another path") from None
    if is_dir:
        raise UserError(f"--json {json_out} is a directory; give a file name, e.g. "
                        f"{target / 'bench.json'}")
    if not parent_is_dir:
        raise UserError(f"--json {json_out}: directory {target.parent} does not exist; "
                        "create it or give another path")
    return target


@app.command()
def verify(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    device: str = typer.Option(
        "auto", "--device", "-d",
        help="auto: the CPU int8 model, and the Edge TPU model when its delegate loads; "
             "cpu: the int8 model only; edgetpu: the Edge TPU model or an error."),
    tpu: str = typer.Option("", "--tpu", help=TPU_HELP),
    inputs: Optional[Path] = typer.Option(
        None, "--inputs",
        help="Inputs instead of the deployment's reference inputs: a .npy for a "
             "single-input model (uint8 pixels or float model inputs), or a .npz with "
             "input_0, input_1, ... (one raw array per input, in the model's order)."),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    json_out: Optional[str] = typer.Option(
        None, "--json", help="'-': print the outputs as one JSON object on stdout."),
) -> None:
    """Run the deployment's reference inputs through each variant: top-1 where an output is a
    score vector, else the outputs compared (--json: every output's raw values)."""
    from qrun import verify as verify_mod

    if json_out not in (None, "-"):
        from qrun.errors import UserError

        raise UserError(f"--json takes '-' (stdout), not {json_out!r}")
    document = verify_mod.verify(model, device, tpu, inputs, threads,
                                 progress=verify_mod.stderr_progress)
    if json_out is None:
        typer.echo(verify_mod.summary(document))
        return
    import json

    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


@app.command()
def info(
    model: Optional[Path] = typer.Option(
        None, "--model", "-m",
        help="Model file or deployment directory to describe. Default: the current "
             "deployment, if there is one."),
    tpu: str = typer.Option("", "--tpu", help=TPU_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead."),
) -> None:
    """Show the TFLite runtime, whether libedgetpu loads, Edge TPUs present, every input and
    output of each model (name, position, shape, dtype, quantization) and the task its
    manifest records."""
    import json

    from qrun import info as info_mod

    report = info_mod.info(model, tpu)
    typer.echo(json.dumps(report, indent=2) if as_json else info_mod.format_info(report))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"qrun {__version__}")


def main() -> None:
    run(app)
