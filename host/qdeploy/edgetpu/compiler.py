"""Drive `edgetpu_compiler`: find it, run it into a staging directory, publish on success.

`compile_model(target, options)` compiles DIR's int8 model (or a given model),
parses the compiler's console output and `.log` (`qdeploy.edgetpu.compiler_log`), classifies
failures, and only when the compile succeeded and mapped something moves
`<name>_edgetpu.tflite` and its `.log` into the model's directory and records them
in `manifest.json`. A failure leaves the directory as it was.

After a successful compile the preflight's prediction for the same model is compared with
what the compiler did (`qdeploy.edgetpu.twins.compare`): where they differ is printed,
which is how the preflight's rule table grows in the field.

`compile_or_preflight(directory)` is the quickstart's entry: compile when the compiler
is installed, else predict its verdict with `qdeploy.edgetpu.preflight`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from qdeploy.edgetpu import compiler_log
from qdeploy.edgetpu import preflight
from qdeploy.modelfile import tflite_graph
from qdeploy.edgetpu import ops as ops_table
from qdeploy.errors import UserError
from qrun import atomic
from qrun.model import manifest
from qrun.model.deployment import int8_model

COMPILER_NAME = "edgetpu_compiler"
DEFAULT_TIMEOUT_S = 180
TIMEOUT_MARGIN_S = 30  # on top of the compiler's own timer, for start-up and writing
VERSION_TIMEOUT_S = 30
MIB = 1 << 20
INSTALL_HINT = ("it runs only on x86-64 Linux: on Debian/Ubuntu install the package "
                "edgetpu-compiler from Coral's apt repo (https://coral.ai/docs/edgetpu/compiler/), "
                "or pass --compiler PATH")


class CompilerMissing(UserError):
    """No `edgetpu_compiler` on PATH: the caller can fall back to the preflight."""


@dataclass
class CompileOptions:
    """The compiler flags qdeploy exposes (see `compiler_args`)."""

    min_runtime: Optional[int] = None
    multiple_subgraphs: bool = False
    search_delegate: bool = False
    search_step: Optional[int] = None
    timeout: int = DEFAULT_TIMEOUT_S
    segments: Optional[int] = None


@dataclass
class Run:
    """One compiler process: its exit status, merged stdout+stderr, and whether it hung."""

    returncode: int
    output: str
    timed_out: bool = False


@dataclass
class CompileResult:
    """What `qdeploy compile` did; `verdict` is the line printed first."""

    ok: bool
    verdict: str
    model: str
    compiler: str
    compiler_version: str
    min_runtime: Optional[int] = None
    log: Optional[compiler_log.CompilerLog] = None
    failure: Optional[compiler_log.Failure] = None
    outputs: list = field(default_factory=list)  # file names published into the directory
    first_cpu_op: Optional[str] = None
    manifest_updated: bool = False
    notes: list = field(default_factory=list)
    predicted: Optional[str] = None  # the preflight's verdict on the same model
    differences: Optional[list] = None  # prediction vs compiler, one line each; [] = exact

    def to_dict(self) -> dict:
        return asdict(self) | {"log": self.log.to_dict() if self.log else None}


@dataclass
class Outcome:
    """The quickstart's answer: compiled, or predicted when the compiler is missing."""

    ok: bool
    verdict: str
    compiled: bool
    result: object = None  # CompileResult or preflight.Prediction
    missing: str = ""  # why the compiler did not run (then `result` is a Prediction)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "verdict": self.verdict, "compiled": self.compiled,
                "compiler_missing": self.missing or None, "result": self.result.to_dict()}


def find_compiler(explicit: Optional[Path] = None) -> Optional[Path]:
    """`explicit` when given (it must be executable), else `edgetpu_compiler` on PATH."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise UserError(f"--compiler {path}: no such executable; pass the path of "
                            f"{COMPILER_NAME}")
        return Path(os.path.abspath(path))  # "./edgetpu_compiler" must not go to PATH
    found = shutil.which(COMPILER_NAME)
    return Path(found) if found else None


def read_version(compiler: Path) -> str:
    """The compiler's version, e.g. '16.0.384591198', from `edgetpu_compiler --version`."""
    try:
        run = subprocess.run([str(compiler), "--version"], capture_output=True, text=True,
                             timeout=VERSION_TIMEOUT_S)
        text = run.stdout + run.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"{compiler} --version failed ({exc}); check the installation: "
                        f"{INSTALL_HINT}") from None
    m = compiler_log.VERSION.search(text)
    if not m:
        said = text.strip().splitlines()[-1] if text.strip() else "nothing"
        raise UserError(f"{compiler} did not print an Edge TPU compiler version (it said: "
                        f"{said}); is it {COMPILER_NAME}? {INSTALL_HINT}")
    return m.group(1)


def major(version: str) -> int:
    return int(version.split(".")[0])


def default_min_runtime(version: str) -> Optional[int]:
    """The runtime version a compiler targets by default (compiler 16 -> 14, ...)."""
    if major(version) >= 16:
        return 14
    if version.startswith("2.0.") and int(re.sub(r"\D", "", version.split(".")[2]) or 0) \
            < 291256449:
        return 12
    return 13


def compiler_args(compiler: Path, model: Path, out_dir: Path, options: CompileOptions,
                  version: str) -> list:
    """The command line for one compile; `-s` so the console holds the op table."""
    if (options.search_delegate or options.search_step) and major(version) < 16:
        raise UserError(f"--search-delegate needs compiler 16, this is {version}; "
                        "upgrade edgetpu-compiler or drop the flag")
    argv = [str(compiler), "-s", "-o", str(out_dir), "-t", str(options.timeout)]
    if options.min_runtime is not None:
        argv += ["-m", str(options.min_runtime)]
    if options.multiple_subgraphs:
        argv.append("-a")
    if options.search_delegate or options.search_step:
        argv.append("-d")
    if options.search_step:
        argv += ["-k", str(options.search_step)]
    if options.segments:
        argv += ["-n", str(options.segments)]
    return argv + [str(model)]


def run_compiler(argv: list, timeout_s: float) -> Run:
    """Run the compiler in its own process group; kill the whole group on timeout."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    except OSError as exc:
        raise UserError(f"cannot run {argv[0]} ({exc}); {INSTALL_HINT}") from None
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return Run(proc.returncode, out)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return Run(proc.returncode, out or "", timed_out=True)


def resolve_target(target: Path) -> tuple:
    """(directory, model) for `DIR` (its int8 model) or a model file."""
    target = Path(target)
    if target.is_dir():
        model = int8_model(target, manifest.load(target) if manifest.find(target) else None)
        if model is None:
            raise UserError(f"{target} has no {manifest.CONVERT_FILES[manifest.INT8]}; run "
                            "qdeploy convert first or pass the .tflite model")
        return target, model
    if not target.is_file():
        raise UserError(f"{target} does not exist; pass a directory made by qdeploy convert "
                        "or a .tflite model")
    return target.parent, target


def check_model(model: Path) -> tflite_graph.Graph:
    """Refuse what the compiler would refuse for reasons the user must fix first."""
    graph = tflite_graph.load(model)
    if any(op.name == ops_table.EDGETPU_CUSTOM_OP for op in graph.ops):
        raise UserError(f"{model} is already compiled for the Edge TPU; compile the int8 "
                        "model it came from")
    if preflight.not_quantized(graph):
        raise UserError(f"{model} is a float model, the Edge TPU needs full-integer int8; "
                        "convert first: qdeploy convert")
    return graph


def run_failure(run: Run, log: compiler_log.CompilerLog,
                timeout_s: float) -> Optional[compiler_log.Failure]:
    """Failures seen in the process itself (hang, signal), then in what it printed."""
    if run.timed_out:
        return compiler_log.Failure("timeout", f"the compiler did not finish within "
                                    f"{timeout_s:.0f} s and was stopped",
                                    "raise --timeout or split the model with --segments N")
    if run.returncode < 0:
        name = signal.Signals(-run.returncode).name
        return compiler_log.Failure("crash", f"the compiler crashed ({name})",
                                    "retry; if it crashes again, check the model with "
                                    "qdeploy preflight and the install with "
                                    "edgetpu_compiler --version")
    failure = compiler_log.diagnose(log, run.returncode)
    if failure is not None and failure.kind == "failed" and not log.errors:
        said = [ln.strip() for ln in run.output.splitlines() if ln.strip()]
        if said:  # output qdeploy does not recognise: show its last line, not just the status
            failure.cause += f" (it said: {said[-1][:200]})"
    return failure


def first_cpu_op(compiled: Path, log: compiler_log.CompilerLog) -> Optional[str]:
    """The first op left on the CPU after the Edge TPU part, with its table status."""
    names = []
    try:
        graph = tflite_graph.load(compiled)
        ops = [op.name for op in graph.ops]
        if ops_table.EDGETPU_CUSTOM_OP in ops:
            start = ops.index(ops_table.EDGETPU_CUSTOM_OP)
            names = [n for n in ops[start:] if n != ops_table.EDGETPU_CUSTOM_OP]
    except UserError:
        pass
    rows = log.unmapped_rows() or [r for r in log.op_table if not r.mapped]
    if names:
        status = next((r.status for r in rows if r.op == names[0]), None)
        return f"{names[0]} ({status})" if status else names[0]
    return f"{rows[0].op} ({rows[0].status})" if rows else None


def success_verdict(log: compiler_log.CompilerLog, first_cpu: Optional[str]) -> str:
    """'31 of 31 ops on the Edge TPU, 1 subgraph, 0.52 MiB cached on chip'."""
    on, cpu = log.ops_on_edgetpu or 0, log.ops_on_cpu or 0
    subgraphs = log.edgetpu_subgraphs if log.edgetpu_subgraphs is not None else "?"
    parts = [f"{on} of {on + cpu} ops on the Edge TPU",
             f"{subgraphs} subgraph{'' if subgraphs == 1 else 's'}"]
    if log.on_chip_used is not None:
        parts.append(f"{log.on_chip_used / MIB:.2f} MiB cached on chip")
    if log.off_chip_streaming:
        parts.append(f"{log.off_chip_streaming / MIB:.2f} MiB streamed from the host")
    line = ", ".join(parts)
    return f"{line}; first on CPU: {first_cpu}" if cpu and first_cpu else line


def output_names(stage: Path) -> list:
    """The compiled model(s) and log(s) the compiler wrote, models first."""
    models = sorted(p.name for p in stage.glob("*_edgetpu.tflite"))
    logs = sorted(p.name for p in stage.glob("*_edgetpu.log"))
    return models + logs


def is_manifest_model(directory: Path, model: Path) -> bool:
    """Whether `model` is the int8 artifact of `directory`'s manifest (same file and sha256).

    Only then does a compile of it belong in that manifest: compiling another .tflite
    that happens to sit in the directory must not make it the deployment's edgetpu model.
    """
    if not directory.is_dir() or manifest.find(directory) is None:
        return False
    m = manifest.load(directory)
    art = m.artifacts.get(manifest.INT8)
    if art is None:
        return False
    recorded = m.path_of(directory, manifest.INT8)
    try:
        same_file = recorded.resolve() == Path(model).resolve()
        return same_file and manifest.sha256_file(model) == art.sha256.lower()
    except OSError:
        return False


def record(stage: Path, directory: Path, outputs: list, version: str,
           min_runtime: Optional[int], log: compiler_log.CompilerLog) -> bool:
    """Write the updated manifest into `stage`; False when the directory has none."""
    if manifest.find(directory) is None or not directory.is_dir():
        return False
    m = manifest.load(directory)
    models = [n for n in outputs if n.endswith(".tflite")]
    for role in [r for r in m.artifacts if r.startswith(manifest.EDGETPU)]:
        del m.artifacts[role]  # a previous compile's (segment) models are no longer current
    for i, name in enumerate(models):
        role = manifest.EDGETPU if len(models) == 1 else f"{manifest.EDGETPU}_segment_{i}"
        m.artifacts[role] = manifest.artifact_for(stage / name)
    logs = [n for n in outputs if n.endswith(".log")]
    m.compiled = manifest.Compiled(compiler_version=version, min_runtime=min_runtime,
                                   edgetpu_subgraphs=log.edgetpu_subgraphs,
                                   ops_on_edgetpu=log.ops_on_edgetpu,
                                   ops_on_cpu=log.ops_on_cpu, log=logs[0] if logs else None)
    manifest.save(m, stage)
    return True


def compile_model(target: Path, options: Optional[CompileOptions] = None,
                  compiler: Optional[Path] = None) -> CompileResult:
    """Compile DIR's int8 model (or `target` itself); publish only a successful compile.

    Raises CompilerMissing when no compiler is found, UserError for bad input; a
    compiler failure comes back as a result with `ok` False and a classified failure.
    """
    options = options or CompileOptions()
    directory, model = resolve_target(target)
    if manifest.find(directory):
        manifest.load(directory)  # a broken manifest is reported before compiling
    check_model(model)
    owned = is_manifest_model(directory, model)
    atomic.check_writable(directory, "make it writable or copy the model to a directory you own")
    path = find_compiler(compiler)
    if path is None:
        raise CompilerMissing(f"{COMPILER_NAME} not found on PATH; {INSTALL_HINT}")
    version = read_version(path)
    min_runtime = options.min_runtime or default_min_runtime(version)
    timeout_s = options.timeout + TIMEOUT_MARGIN_S
    with atomic.staging_dir(directory) as stage:
        run = run_compiler(compiler_args(path, model, stage, options, version), timeout_s)
        logfile = stage / f"{model.stem}_edgetpu.log"
        log = compiler_log.merge(compiler_log.parse(run.output),
                                 compiler_log.parse(logfile.read_text(errors="replace"))
                                 if logfile.is_file() else None)
        outputs = output_names(stage)
        failure = run_failure(run, log, timeout_s)
        if failure is None and not any(n.endswith(".tflite") for n in outputs):
            failure = compiler_log.Failure("failed", "the compiler reported success but "
                                           "wrote no compiled model",
                                           "retry; check free disk space in the directory")
        result = CompileResult(ok=failure is None, verdict="", model=str(model),
                               compiler=str(path), compiler_version=version,
                               min_runtime=min_runtime, log=log, failure=failure)
        if failure:
            result.verdict = f"compile failed ({failure.kind}): {failure.cause}"
            return result
        compiled = stage / next(n for n in outputs if n.endswith(".tflite"))
        result.first_cpu_op = first_cpu_op(compiled, log)
        result.verdict = success_verdict(log, result.first_cpu_op)
        result.predicted, result.differences = against_preflight(
            model, [stage / n for n in outputs if n.endswith(".tflite")], options, version)
        if owned:
            result.manifest_updated = record(stage, directory, outputs, version, min_runtime,
                                             log)
        names = outputs + ([manifest.MANIFEST_NAME] if result.manifest_updated else [])
        atomic.publish(stage, directory, names)
    result.outputs = outputs
    result.notes = notes(result, directory, owned)
    return result


def against_preflight(model: Path, compiled: list, options: CompileOptions,
                      version: str) -> tuple:
    """(the preflight's verdict, where it differs from the compiled model(s)) for `model`:
    op counts, first CPU op and Edge TPU subgraph by subgraph; with --segments, segment
    model by segment model."""
    from qdeploy.edgetpu import twins

    prediction = preflight.preflight(model, options.multiple_subgraphs, str(major(version)),
                                     num_segments=options.segments)
    if options.segments:
        segments = [twins.read_twin(path) for path in sorted(compiled, key=segment_number)]
        return prediction.verdict, twins.compare_pipeline(prediction, segments)
    return prediction.verdict, twins.compare(prediction, twins.read_twin(compiled[0], model))


def segment_number(path: Path) -> int:
    """model_segment_3_of_4_edgetpu.tflite -> 3."""
    m = re.search(r"_segment_(\d+)_of_\d+_edgetpu", Path(path).name)
    return int(m.group(1)) if m else 0


def comparison_lines(result: CompileResult) -> list:
    """'the preflight predicted this compile exactly', or where it differed."""
    if result.differences is None:
        return []
    if not result.differences:
        return ["the preflight predicted this compile exactly"]
    return (["the preflight's prediction differs from the compiler (please report it, with "
             "the model's op table, so the rule table in qdeploy.edgetpu.ops can grow):"]
            + [f"  {line}" for line in result.differences])


def notes(result: CompileResult, directory: Path, owned: bool = True) -> list:
    """Lines printed after the verdict of a successful compile."""
    lines = [f"wrote {', '.join(str(directory / n) for n in result.outputs)}"]
    lines += comparison_lines(result)
    if result.min_runtime is not None:
        lines.append(f"needs Edge TPU runtime {result.min_runtime} or newer on the device"
                     + (" (use --min-runtime 13 for runtime 13)"
                        if result.min_runtime > 13 else ""))
    if result.manifest_updated:
        lines.append("manifest.json updated")
    elif not owned and manifest.find(directory) is not None:
        lines.append(f"manifest.json not updated: {Path(result.model).name} is not the int8 "
                     "model it records (another file, or its sha256 differs)")
    else:
        lines.append(f"no manifest.json in {directory}: nothing recorded")
    return lines


def compile_or_preflight(directory: Path, options: Optional[CompileOptions] = None,
                         compiler: Optional[Path] = None) -> Outcome:
    """Compile `directory` when the compiler is installed, else preflight its int8 model.

    For `qdeploy quickstart` (and `qdeploy compile`): `outcome.verdict` is the line to
    print, `outcome.ok` whether the model runs (or is predicted to run) on the Edge TPU,
    `outcome.missing` says why the compiler was not run.
    """
    try:
        result = compile_model(directory, options, compiler)
        return Outcome(ok=result.ok, verdict=result.verdict, compiled=result.ok,
                       result=result)
    except CompilerMissing as exc:
        prediction = preflight.preflight(resolve_target(directory)[1],
                                         bool(options and options.multiple_subgraphs))
        return Outcome(ok=prediction.ok, compiled=False, result=prediction, missing=str(exc),
                       verdict=f"{COMPILER_NAME} not found (x86-64 Debian: Coral's apt repo, "
                               f"package edgetpu-compiler); {prediction.verdict}")
