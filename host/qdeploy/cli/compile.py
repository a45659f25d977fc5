"""`qdeploy compile` and `qdeploy preflight`: parse arguments, call qdeploy.edgetpu.compiler /
qdeploy.edgetpu.preflight, print the verdict first.

Those modules (and numpy, via the flatbuffer reader) are imported inside the commands, so
`qdeploy --help` and the other commands do not pay for them."""

import json
from pathlib import Path
from typing import Optional

import typer

from qdeploy.errors import UserError

commands = typer.Typer()  # added to the qdeploy app by qdeploy.cli


COMPILE_HELP = (
    "Compile the int8 model for the Edge TPU and say how much of it runs there.\n\n"
    "Runs edgetpu_compiler into a temporary directory and moves model_int8_edgetpu.tflite "
    "and its .log into DIR only when the compile succeeded and mapped at least one op, then "
    "records them in manifest.json. Prints the verdict first (ops on the Edge TPU, "
    "subgraphs, on-chip memory, first op left on the CPU); a failure is explained in one "
    "line with a fix and exits non-zero.\n\n"
    "A bare quantized .tflite is first imported into a cache directory (as qdeploy import "
    "would; the line 'imported X into DIR' says where) and compiled there.\n\n"
    "Without the compiler (it runs only on x86-64 Linux) the preflight predicts its "
    "verdict, and the exit status is non-zero because nothing was compiled.")

PREFLIGHT_HELP = (
    "Predict what edgetpu_compiler will do with MODEL, without the compiler.\n\n"
    "Reads the .tflite flatbuffer (no TensorFlow) and prints the verdict, then one line per "
    "op (index, op, version, predicted status) and the predicted number of ops on the Edge "
    "TPU. Checks data types, sizes known only at run time, constant parameters, batch 1 / "
    "rank, the Edge TPU op table and its limits, op versions the compiler cannot parse, "
    "then places the ops by the graph as the compiler does: the ops reachable from the "
    "inputs through mappable ops form the Edge TPU subgraph, ops fed by a CPU result after "
    "it are cut off ('More than one subgraph is not supported') unless --multiple-subgraphs. "
    "The verdict names the first op that leaves the Edge TPU and the input it reads from "
    "there: that is where to change the model. A compiled _edgetpu model is reported as "
    "such. Exits 1 when no op is predicted on the Edge TPU.")


@commands.command("compile", help=COMPILE_HELP)
def compile_command(
    target: Path = typer.Argument(..., help="Directory made by `qdeploy convert` or "
                                  "`qdeploy import` (its model_int8.tflite is compiled) or a "
                                  ".tflite model."),
    compiler_path: Optional[Path] = typer.Option(
        None, "--compiler", help="Path of edgetpu_compiler (default: found on PATH)."),
    min_runtime: Optional[int] = typer.Option(
        None, "--min-runtime", help="Oldest Edge TPU runtime to support (-m); compiler 16 "
        "defaults to 14, use 13 for runtime 13."),
    multiple_subgraphs: bool = typer.Option(
        False, "--multiple-subgraphs", help="Map ops after the first unsupported one into "
        "further Edge TPU subgraphs (-a, experimental)."),
    search_delegate: bool = typer.Option(
        False, "--search-delegate", help="On failure, retry with fewer ops until a prefix "
        "compiles (-d, compiler 16)."),
    search_step: Optional[int] = typer.Option(
        None, "--search-step", help="Ops dropped per retry of --search-delegate (-k)."),
    timeout: Optional[int] = typer.Option(
        None, "--timeout", help="Seconds before the compile is stopped (-t; default: "
        "qdeploy.edgetpu.compiler.DEFAULT_TIMEOUT_S, 180)."),
    segments: Optional[int] = typer.Option(
        None, "--segments", help="Split into N segments for pipelining (-n)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Compile DIR's int8 model for the Edge TPU (help: COMPILE_HELP)."""
    from qdeploy.edgetpu import compiler
    from qdeploy.modelimport import cache

    options = compiler.CompileOptions(min_runtime=min_runtime,
                                      multiple_subgraphs=multiple_subgraphs,
                                      search_delegate=search_delegate, search_step=search_step,
                                      segments=segments)
    if timeout is not None:
        options.timeout = timeout
    # A bare quantized CPU model is compiled in its cached import; a directory, an _edgetpu
    # or a float model goes on unchanged (compile refuses those itself, with the reason).
    cached = cache.bare_file_import(target, compilable=True)
    if cached is not None:
        for line in cached.lines(target):  # on stderr: --json stays one object
            typer.echo(line, err=True)
        target = cached.directory
    outcome = compiler.compile_or_preflight(target, options, compiler_path)
    if as_json:
        document = outcome.to_dict()
        if outcome.missing:  # nothing compiled: not ok (exit 1), whatever the prediction says
            document |= {"ok": False, "predicted_ok": outcome.ok}
        typer.echo(json.dumps(document))
    elif outcome.missing:
        typer.echo(f"{outcome.missing}")
        typer.echo("running the preflight instead:")
        _print_prediction(outcome.result)
    else:
        typer.echo(outcome.verdict)
        for line in outcome.result.notes:
            typer.echo(f"  {line}")
    if outcome.missing:
        raise UserError(f"{compiler.COMPILER_NAME} not found, nothing compiled; the "
                        "preflight above predicts its verdict")
    if not outcome.ok:
        raise UserError(outcome.result.failure.message())


@commands.command("preflight", help=PREFLIGHT_HELP)
def preflight_command(
    model: Path = typer.Argument(..., help="A .tflite model (int8, or an _edgetpu one), or "
                                 "a qdeploy convert directory (its model_int8.tflite)."),
    multiple_subgraphs: bool = typer.Option(
        False, "--multiple-subgraphs", "-a", help="Predict for compile --multiple-subgraphs "
        "(edgetpu_compiler -a): ops after an unmapped one form further Edge TPU subgraphs."),
    compiler_version: str = typer.Option(
        "16", "--compiler-version", help="The edgetpu_compiler version to predict for "
        "(16, 15, 14, 2.1, 2.0.267685300 ...): older ones refuse a batch of -1 and know "
        "fewer ops and op versions. The verdict says which it assumed."),
    segments: Optional[int] = typer.Option(
        None, "--segments", min=1, help="Predict for compile --segments N (edgetpu_compiler "
        "-n): the ops of each pipeline segment and those it leaves on the CPU."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Predict the compiler's verdict on MODEL (help: PREFLIGHT_HELP)."""
    from qdeploy.edgetpu import preflight

    prediction = preflight.preflight(model, multiple_subgraphs, compiler_version,
                                     num_segments=segments)
    if as_json:
        typer.echo(json.dumps(prediction.to_dict()))
    else:
        _print_prediction(prediction)
    if not prediction.ok:
        raise typer.Exit(1)


def _print_prediction(prediction) -> None:
    from qdeploy.edgetpu import preflight

    typer.echo(prediction.verdict)
    for line in preflight.report_lines(prediction):
        typer.echo(line)
