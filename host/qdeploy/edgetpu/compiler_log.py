"""Read what `edgetpu_compiler` said: its console output and its `_edgetpu.log` file.

`parse(text)` turns either (or both concatenated) into one `CompilerLog`: version,
memory figures, subgraph and op counts, the per-op table with statuses, output paths.
`diagnose(log)` classifies a failed or useless compile into a `Failure` with a
one-line cause and a concrete fix. The grammar covers compilers 2.0 to 16.0 (see the
real outputs in tests/data/compiler-logs); unknown lines are ignored.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Optional

from qdeploy.edgetpu import ops as ops_table

UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
SIZE = r"([\d.]+)\s*(B|KiB|MiB|GiB)"

# "label" -> field name, for "label: value" lines. The .log file says Input:/Output:.
PATHS = {"Input model": "input_model", "Input": "input_model", "Output model": "output_model",
         "Output": "output_model", "Operation log": "operation_log"}
SIZES = {
    "Input size": "input_size",
    "Output size": "output_size",
    "On-chip memory used for caching model parameters": "on_chip_used",
    "On-chip memory remaining for caching model parameters": "on_chip_remaining",
    "Off-chip memory used for streaming uncached model parameters": "off_chip_streaming",
}
COUNTS = {
    "Number of Edge TPU subgraphs": "edgetpu_subgraphs",
    "Total number of operations": "total_ops",
    "Number of operations that will run on Edge TPU": "reported_on_edgetpu",
    "Number of operations that will run on CPU": "reported_on_cpu",
}
ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$")
VERSION = re.compile(r"Edge TPU Compiler version (\d+(?:\.\d+)*)")
OP_VERSION = re.compile(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'")
PARTIAL = "not all operations are supported by the"


@dataclass
class OpRow:
    """One row of the compiler's op table; an op can have several rows, one per status."""

    op: str
    count: int
    status: str

    @property
    def mapped(self) -> bool:
        return self.status == ops_table.MAPPED


@dataclass
class CompilerLog:
    """Everything the compiler reported about one compile (absent fields stay None)."""

    compiler_version: Optional[str] = None
    input_model: Optional[str] = None
    output_model: Optional[str] = None
    operation_log: Optional[str] = None
    input_size: Optional[int] = None  # bytes, as rounded by the compiler
    output_size: Optional[int] = None
    on_chip_used: Optional[int] = None
    on_chip_remaining: Optional[int] = None
    off_chip_streaming: Optional[int] = None
    edgetpu_subgraphs: Optional[int] = None
    total_ops: Optional[int] = None
    reported_on_edgetpu: Optional[int] = None
    reported_on_cpu: Optional[int] = None
    compile_ms: Optional[int] = None
    timeout_timer_s: Optional[int] = None
    search_step: Optional[int] = None
    segment_ops: list = field(default_factory=list)  # "Try to compile segment with N ops"
    op_table: list = field(default_factory=list)  # OpRow
    compiled: bool = False  # "Model compiled successfully"
    partial: bool = False  # "not all operations are supported by the Edge TPU"
    succeeded: Optional[bool] = None  # "Compilation succeeded!" / "Compilation failed!"
    errors: list = field(default_factory=list)  # error lines, in order

    @property
    def ops_on_edgetpu(self) -> Optional[int]:
        if self.reported_on_edgetpu is not None:
            return self.reported_on_edgetpu
        if self.compiled and not self.partial and self.total_ops is not None:
            return self.total_ops
        if self.op_table:
            return sum(r.count for r in self.op_table if r.mapped)
        return None

    @property
    def ops_on_cpu(self) -> Optional[int]:
        if self.reported_on_cpu is not None:
            return self.reported_on_cpu
        if self.compiled and not self.partial and self.total_ops is not None:
            return 0
        if self.op_table:
            return sum(r.count for r in self.op_table if not r.mapped)
        return None

    def unmapped_rows(self) -> list:
        """Rows not mapped for their own reason (not merely "after the first unmapped op")."""
        return [r for r in self.op_table
                if not r.mapped and r.status != ops_table.MORE_THAN_ONE_SUBGRAPH]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ops_on_edgetpu"] = self.ops_on_edgetpu
        d["ops_on_cpu"] = self.ops_on_cpu
        return d


@dataclass
class Failure:
    """Why a compile failed or is useless: a kind, a one-line cause, a concrete fix."""

    kind: str
    cause: str
    fix: str

    def message(self) -> str:
        return f"{self.cause}; fix: {self.fix}"


def parse_size(text: str) -> Optional[int]:
    """'2.88MiB' -> 3019898 bytes; None when there is no size."""
    m = re.search(SIZE, text)
    return round(float(m.group(1)) * UNITS[m.group(2)]) if m else None


def parse(text: str) -> CompilerLog:
    """Parse console output and/or a `.log` file of any compiler version from 2.0 to 16.0."""
    log = CompilerLog()
    for raw in text.splitlines():
        line = raw.strip()
        if line:
            _read_line(log, line)
    return log


def _read_line(log: CompilerLog, line: str) -> None:
    m = VERSION.search(line)
    if m:
        log.compiler_version = log.compiler_version or m.group(1)
        return
    m = ROW.match(line)
    if m:
        log.op_table.append(OpRow(m.group(1), int(m.group(2)), m.group(3)))
        return
    label, sep, value = line.partition(":")
    value = value.strip()
    if sep and label in PATHS:
        setattr(log, PATHS[label], getattr(log, PATHS[label]) or value)
    elif sep and label in SIZES:
        setattr(log, SIZES[label], parse_size(value))
    elif sep and label in COUNTS and value.isdigit():
        setattr(log, COUNTS[label], int(value))
    else:
        _read_event(log, line)


def _read_event(log: CompilerLog, line: str) -> None:
    """Banners, timers, delegate search and error lines."""
    number = re.search(r"(\d+)", line)
    if line.startswith("Model compiled successfully"):
        log.compiled = True
        log.compile_ms = int(number.group(1)) if number else None
    elif line.startswith("Started a compilation timeout timer"):
        log.timeout_timer_s = int(number.group(1)) if number else None
    elif line.startswith("Searching for valid delegate with step"):
        log.search_step = int(number.group(1)) if number else None
    elif line.startswith("Try to compile segment with"):
        log.segment_ops.append(int(number.group(1)))
    elif PARTIAL in line:
        log.partial = True
    elif line.startswith("Compilation succeeded"):
        log.succeeded = True
    elif line.startswith("Compilation failed!"):
        log.succeeded = False
    elif _is_error(line):
        log.errors.append(line)


def _is_error(line: str) -> bool:
    return (line.startswith(("ERROR:", "Compilation failed:", "Invalid model", "Model not ",
                             "Model could not", "Internal compiler error", "The number of "))
            or "timed out" in line.lower())


def merge(console: CompilerLog, logfile: Optional[CompilerLog]) -> CompilerLog:
    """The console result, with the `.log` file's op table when the console had none."""
    if logfile is not None and not console.op_table:
        console.op_table = list(logfile.op_table)
    return console


def diagnose(log: CompilerLog, returncode: int = 0) -> Optional[Failure]:
    """Classify a compile; None when it succeeded and mapped something."""
    text = "\n".join(log.errors)
    version = log.compiler_version or "?"
    m = OP_VERSION.search(text)
    if m:
        op, v = m.group(1), m.group(2)
        return Failure("op_version",
                       f"compiler {version} cannot parse {op} version {v} (Model could not "
                       "be parsed): the converter emitted an op version newer than it knows",
                       f"re-convert with an older TensorFlow whose converter emits an older "
                       f"{op} version, or replace {op}; qdeploy preflight lists op versions")
    if "dynamic-sized tensors" in text:
        return Failure("dynamic_shape", "the model has dynamic-sized tensors",
                       "re-convert with a fixed input shape and batch 1")
    if "Model not quantized" in text:
        return Failure("not_quantized", "Model not quantized: the compiler needs a "
                       "full-integer model with a fixed batch size",
                       "convert first (qdeploy convert makes a full-integer model), "
                       "and re-convert with batch 1 if the batch is dynamic")
    if "large activation tensors" in text:
        return Failure("large_activations", "compilation failed due to large activation "
                       "tensors in the model",
                       "reduce the input resolution or the widest layers, or compile with "
                       "--search-delegate to map the largest prefix that fits")
    if "Internal compiler error" in text:
        return Failure("internal_error", "Internal compiler error",
                       "retry: this error is sometimes intermittent; if it persists, try "
                       "--search-delegate or --segments")
    if "intermediate_tensors" in text:
        return Failure("bad_arguments", text.splitlines()[-1],
                       "check the compiler arguments (tensor names containing ':' break -i)")
    if "timed out" in text.lower():
        return Failure("timeout", "the compiler timed out",
                       "raise --timeout (default 180 s) or split the model with --segments N")
    if log.errors or log.succeeded is False or returncode != 0:
        detail = log.errors[-1] if log.errors else f"exit status {returncode}"
        return Failure("failed", f"the compiler failed: {detail}",
                       "run qdeploy preflight MODEL to find the op that blocks it")
    if log.ops_on_edgetpu == 0 or log.edgetpu_subgraphs == 0:
        rows = log.unmapped_rows()
        first = f" (first: {rows[0].op}, {rows[0].status})" if rows else ""
        return Failure("nothing_mapped", "the compiler mapped 0 ops to the Edge TPU: the "
                       f"model would run only on the CPU{first}",
                       "run qdeploy preflight MODEL to see the first op that blocks it")
    return None
