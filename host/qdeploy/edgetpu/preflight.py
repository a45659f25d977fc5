"""Predict, op by op, what the Edge TPU compiler will do with a model, without the compiler.

The compiler runs only on x86-64 Linux; this reads the `.tflite` flatbuffer
(`qdeploy.modelfile.tflite_graph`) and applies the rules of `qdeploy.edgetpu.ops`
(each cites the twin or compiler log that shows it, `ops.EVIDENCE`):

- model-level refusals: an op version the compiler cannot parse ("Model could not be
  parsed"), a size computed at run time ("dynamic-sized tensors"; a batch of -1 over a
  static shape is accepted by compiler 16), float weights ("Model not quantized");
- per op: activation data type, op in the support table, constant parameters,
  rank (only the 3 innermost dimensions may exceed 1, i.e. batch 1), documented limits;
- placement by the graph (`qdeploy.edgetpu.placement`): the ops reachable from the
  inputs through mappable ops form the Edge TPU subgraph; after the first op that
  leaves it, ops whose inputs stay on the Edge TPU side are still mapped and ops fed
  by CPU results are cut off ("More than one subgraph is not supported"), unless
  multiple subgraphs are requested. The verdict names the first op that leaves the
  Edge TPU and the input it reads from there.

Rules that differ between compiler versions follow `compiler_version` (default 16).
A compiled `_edgetpu` model is reported as such: its `edgetpu-custom-op` nodes and the
ops left on the CPU.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from qdeploy.edgetpu import ops as ops_table
from qdeploy.edgetpu import placement
from qdeploy.edgetpu.placement import Boundary
from qdeploy.modelfile.tflite_graph import Graph, Op, load
from qdeploy.errors import UserError

FUSED_NONE = 0
WEIGHTS_FORMAT_DEFAULT = 0

FIXES = {
    ops_table.VERSION_NOT_SUPPORTED: "re-convert with a TensorFlow whose converter emits an "
                                     "older version of this op, or replace the op",
    ops_table.DYNAMIC_SHAPE: "re-convert with a fixed input shape and batch 1",
    ops_table.UNSUPPORTED_DTYPE: "quantize it to int8/uint8 (full-integer conversion) or "
                                 "move it out of the model",
    ops_table.NOT_SUPPORTED: "replace it with ops from the Edge TPU table, or move it to the "
                             "end of the model so everything before it is mapped",
    ops_table.NOT_CONSTANT: "make weights, biases and shapes constants in the saved model",
    ops_table.UNSUPPORTED_RANK: "re-convert with batch 1 (only the 3 innermost dimensions "
                                "may exceed 1)",
    ops_table.TWO_D_OUTPUT: "re-convert with batch 1 so the output is 1-dimensional",
    ops_table.LIMITATION: "change the op's parameters to fit the Edge TPU limits",
}


@dataclass
class OpPrediction:
    """The predicted compiler status of one op, with why when it is not mapped."""

    index: int
    op: str
    version: int
    status: str
    reason: str = ""

    @property
    def mapped(self) -> bool:
        return self.status == ops_table.MAPPED


@dataclass
class Prediction:
    """The preflight's verdict on one model."""

    model: str
    ops: list = field(default_factory=list)  # OpPrediction, in execution order
    on_edgetpu: int = 0
    on_cpu: int = 0
    subgraphs: int = 0
    refusal: str = ""  # set when the compiler would refuse the whole model
    fix: str = ""
    first_blocker: Optional[OpPrediction] = None
    leaves_from: Optional[Boundary] = None  # the blocker's input from the Edge TPU part
    multiple_subgraphs: bool = False
    compiler_version: str = ops_table.DEFAULT_COMPILER  # the compiler the rules assumed
    compiled: bool = False
    edgetpu_custom_ops: int = 0
    cpu_ops: list = field(default_factory=list)  # op names left on the CPU, in order
    notes: list = field(default_factory=list)  # rules applied that the user should know

    @property
    def ok(self) -> bool:
        return self.compiled or (not self.refusal and self.on_edgetpu > 0)

    @property
    def verdict(self) -> str:
        return verdict(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["verdict"] = self.verdict
        return d


def compiler_version(text: str) -> tuple:
    """'16' or '2.0.267685300' -> (16,) / (2, 0, 267685300), for comparing versions."""
    parts = str(text).strip().split(".")
    if not all(p.isdigit() for p in parts):
        raise UserError(f"--compiler-version {text!r} is not a version; pass e.g. 16, 15.0 "
                        "or 2.0.267685300 (edgetpu_compiler --version prints it)")
    return tuple(int(p) for p in parts)


def model_in(target: Path) -> Path:
    """`target` itself, or for a `qdeploy convert` directory its int8 model (as compile)."""
    from qrun.model import manifest
    from qrun.model.deployment import int8_model

    target = Path(target)
    if not target.is_dir():
        return target
    model = int8_model(target, manifest.load(target) if manifest.find(target) else None)
    if model is None:
        name = manifest.CONVERT_FILES[manifest.INT8]
        raise UserError(f"{target} is a directory without {name}; pass a .tflite model file "
                        "or a directory made by qdeploy convert")
    return model


def preflight(model: Path, multiple_subgraphs: bool = False,
              compiler: str = ops_table.DEFAULT_COMPILER) -> Prediction:
    """Read `model` (a .tflite, or a convert directory's int8 model) and predict the
    verdict of edgetpu_compiler version `compiler` (see the module docstring)."""
    version = compiler_version(compiler)
    graph = load(model_in(model))
    if any(op.name == ops_table.EDGETPU_CUSTOM_OP for op in graph.ops):
        return compiled_report(graph)
    prediction = predict(graph, multiple_subgraphs, version)
    prediction.compiler_version = str(compiler)
    return prediction


def compiled_report(graph: Graph) -> Prediction:
    """Describe an already compiled model: Edge TPU custom ops and the ops left on CPU."""
    custom = [op for op in graph.ops if op.name == ops_table.EDGETPU_CUSTOM_OP]
    cpu = [op for op in graph.ops if op.name != ops_table.EDGETPU_CUSTOM_OP]
    rows = [OpPrediction(op.index, op.name, op.version,
                         "Edge TPU subgraph" if op.name == ops_table.EDGETPU_CUSTOM_OP
                         else "CPU") for op in graph.ops]
    return Prediction(model=str(graph.path), ops=rows, on_cpu=len(cpu),
                      subgraphs=len(custom), compiled=True, edgetpu_custom_ops=len(custom),
                      cpu_ops=[op.name for op in cpu])


def predict(graph: Graph, multiple_subgraphs: bool = False,
            compiler: tuple = (16,)) -> Prediction:
    """Judge each op on its own, place them by the graph, and find the first blocker."""
    own = [op_status(graph, op, compiler) for op in graph.ops]
    refusal, fix = model_refusal(graph, own, compiler)
    where = placement.place(graph, [s == ops_table.MAPPED for s, _ in own],
                            multiple_subgraphs)
    rows = [OpPrediction(op.index, op.name, op.version, *placed_status(status, cut))
            for op, status, cut in zip(graph.ops, own, where.cut)]
    mapped = [row.mapped and not refusal for row in rows]
    leaves = placement.boundary(graph, where)
    blocker = rows[leaves.op] if leaves else first_blocker(rows)
    return Prediction(
        model=str(graph.path), ops=rows, on_edgetpu=sum(mapped),
        on_cpu=len(rows) - sum(mapped), subgraphs=0 if refusal else where.subgraphs,
        refusal=refusal, fix=fix or (FIXES.get(blocker.status, "") if blocker else ""),
        first_blocker=blocker, leaves_from=None if refusal else leaves,
        multiple_subgraphs=multiple_subgraphs,
        cpu_ops=[row.op for row, m in zip(rows, mapped) if not m],
        notes=model_notes(graph, compiler))


def placed_status(own: tuple, cut: bool) -> tuple:
    """An op's (status, reason) once placed: cut-off ops report what the compiler says."""
    if cut:
        return (ops_table.MORE_THAN_ONE_SUBGRAPH, "an input comes from the CPU after the "
                "Edge TPU part (ops.EVIDENCE['connectivity'])")
    return own


def sequence(own: list, multiple_subgraphs: bool) -> list:
    """The placement of a chain of ops (each reads the previous op's output), given each
    op's own (status, reason): the graph rule on the simplest graph."""
    from qdeploy.modelfile.tflite_graph import Op as GraphOp
    chain = tuple(GraphOp(index=i, name="OP", version=1, inputs=(i,), outputs=(i + 1,))
                  for i in range(len(own)))
    graph = Graph(path=Path("chain"), ops=chain, tensors=(), inputs=(0,),
                  outputs=(len(own),))
    where = placement.place(graph, [s == ops_table.MAPPED for s, _ in own],
                            multiple_subgraphs)
    return [placed_status(status, cut) for status, cut in zip(own, where.cut)]


def first_blocker(rows: list) -> Optional[OpPrediction]:
    """When no op reads from the Edge TPU part: the first op not mapped for its own reason
    after mapping started, else the first unmapped op."""
    started = False
    for row in rows:
        if row.mapped:
            started = True
        elif started and row.status != ops_table.MORE_THAN_ONE_SUBGRAPH:
            return row
    return next((row for row in rows if not row.mapped), None)


def model_refusal(graph: Graph, own: list, compiler: tuple = (16,)) -> tuple:
    """(message, fix) when the compiler would reject the whole model, else ("", "")."""
    name = ".".join(str(p) for p in compiler)
    for op, (status, _) in zip(graph.ops, own):
        if status == ops_table.VERSION_NOT_SUPPORTED:
            return (f"Model could not be parsed: compiler {name} has no {op.name} version "
                    f"{op.version} (op {op.index})", FIXES[status])
    dynamic = [(op, reason) for op, (status, reason) in zip(graph.ops, own)
               if status == ops_table.DYNAMIC_SHAPE]
    if dynamic:
        op, reason = dynamic[0]
        inputs = [graph.tensor(i) for i in graph.inputs if graph.tensor(i).dynamic]
        cause = (f"; the model input '{inputs[0].name}' has a dynamic shape "
                 f"{list(inputs[0].shape_signature)}") if inputs else ""
        what = ("the compiler answers 'Model not quantized' or 'dynamic-sized tensors'"
                if compiler < (16,) else "compiler 16 fails on 'dynamic-sized tensors'")
        return (f"op {op.index} {op.name}: {reason}; {what}{cause}",
                FIXES[ops_table.DYNAMIC_SHAPE])
    if not_quantized(graph):
        return ("Model not quantized: weights or activations are float",
                "convert first: qdeploy convert makes a full-integer (int8) model")
    return "", ""


def model_notes(graph: Graph, compiler: tuple) -> list:
    """Rules applied to this model that a user may not expect."""
    batch = [t for t in graph.tensors if t.dynamic and not t.dynamic_beyond_batch]
    if compiler >= (16,) and batch:
        return [f"tensor '{batch[0].name}' has a batch of -1 over the static shape "
                f"{list(batch[0].shape)}: compiler 16 maps it as batch 1 "
                "(ops.EVIDENCE['dynamic batch'], a guess)"]
    return []


def not_quantized(graph: Graph) -> bool:
    """True when a weighted op has float weights, or no op computes on int8/uint8."""
    for op in graph.ops:
        if op.name in ops_table.WEIGHTED_OPS:
            weights = graph.tensor(op.inputs[1] if len(op.inputs) > 1 else -1)
            if weights is not None and weights.dtype not in ops_table.QUANTIZED_DTYPES:
                return True
    return not any(t.dtype in ops_table.QUANTIZED_DTYPES
                   for op in graph.ops for t in activations(graph, op))


def activations(graph: Graph, op: Op) -> list:
    """The op's non-constant input and output tensors, without state (an LSTM's hidden
    and cell state: int16 there, and mapped, ops.EVIDENCE['lstm'])."""
    return [t for t in (graph.tensor(i) for i in op.inputs + op.outputs)
            if t is not None and not t.constant and not t.variable]


def rejected_version(op: Op, compiler: tuple) -> int:
    """The lowest version of `op` that compiler `compiler` cannot parse (0: none)."""
    rejected = dict(ops_table.REJECTED_VERSIONS)
    if compiler < (2, 1):
        rejected |= ops_table.REJECTED_BEFORE_2_1
    return rejected.get(op.name, 0)


def dynamic_status(graph: Graph, op: Op, compiler: tuple) -> str:
    """Why `op` has a dynamic size for this compiler, or ""."""
    for t in activations(graph, op):
        if t.dynamic_beyond_batch or (compiler < (16,) and t.dynamic):
            return f"tensor '{t.name}' has shape {list(t.shape_signature)}"
    for position in ops_table.SIZE_INPUTS.get(op.name, ()):
        t = graph.tensor(op.inputs[position]) if position < len(op.inputs) else None
        if t is not None and not t.constant:
            return (f"its size input {position} ('{t.name}') is computed at run time, so "
                    "the interpreter makes its output dynamic-sized")
    return ""


def op_status(graph: Graph, op: Op, compiler: tuple = (16,)) -> tuple:
    """(status, reason) of one op judged on its own, before placement by the graph."""
    rejected = rejected_version(op, compiler)
    if rejected and op.version >= rejected:
        name = ".".join(str(p) for p in compiler)
        return ops_table.VERSION_NOT_SUPPORTED, f"compiler {name} parses {op.name} only " \
                                                f"below version {rejected}"
    acts = activations(graph, op)
    dynamic = dynamic_status(graph, op, compiler)
    if dynamic:
        return ops_table.DYNAMIC_SHAPE, dynamic
    float_tensors = [t for t in acts if t.dtype not in ops_table.QUANTIZED_DTYPES]
    if float_tensors:
        t = float_tensors[0]
        if op.name == "QUANTIZE" and all(o.dtype in ops_table.QUANTIZED_DTYPES
                                         for o in acts if o.index in op.outputs):
            return ops_table.LIMITATION, f"quantizes a {t.dtype} input (float model I/O)"
        return ops_table.UNSUPPORTED_DTYPE, f"tensor '{t.name}' is {t.dtype}"
    if op.custom or op.name not in ops_table.SUPPORTED_OPS or (
            compiler < (2, 0, 291256449) and op.name in ops_table.ADDED_IN_2_0_291256449):
        return ops_table.NOT_SUPPORTED, f"{op.name} is not in the Edge TPU op table"
    for position in ops_table.PARAM_INPUTS.get(op.name, ()):
        t = graph.tensor(op.inputs[position]) if position < len(op.inputs) else None
        if t is not None and not t.constant:
            return ops_table.NOT_CONSTANT, f"input {position} ('{t.name}') is computed at " \
                                           "run time"
    for t in acts:
        if not rank_ok(t.shape):
            return ops_table.UNSUPPORTED_RANK, f"tensor '{t.name}' has shape {list(t.shape)}"
    return limit_status(graph, op)



def rank_ok(shape: tuple) -> bool:
    """Only the 3 innermost dimensions may exceed 1."""
    return all(d == 1 for d in shape[:-ops_table.INNERMOST_DIMS]) if len(shape) > 3 else True


def non_unit_dims(shape: tuple) -> int:
    return sum(1 for d in shape if d != 1)


def limit_status(graph: Graph, op: Op) -> tuple:
    """(status, reason) from the op's documented limits; MAPPED when within them."""
    checker = LIMITS.get(op.name)
    reason = checker(graph, op) if checker else ""
    if not reason:
        return ops_table.MAPPED, ""
    if reason.startswith("2-D"):
        return ops_table.TWO_D_OUTPUT, reason
    return ops_table.LIMITATION, reason


def _fused_activation(graph: Graph, op: Op) -> str:
    if op.options.get("fused_activation", FUSED_NONE) != FUSED_NONE:
        return f"{op.name} has a fused activation; the Edge TPU needs none here"
    return ""


def _concatenation(graph: Graph, op: Op) -> str:
    reason = _fused_activation(graph, op)
    if reason:
        return reason
    constants = [graph.tensor(i) for i in op.inputs if graph.tensor(i) is not None
                 and graph.tensor(i).constant]
    if constants and (len(op.inputs) != 2 or any(c.data.any() for c in constants)):
        return "a constant input is allowed only with exactly 2 inputs and all zeros"
    return ""


def _fully_connected(graph: Graph, op: Op) -> str:
    if op.options.get("weights_format", WEIGHTS_FORMAT_DEFAULT) != WEIGHTS_FORMAT_DEFAULT:
        return "weights are not in the default format"
    out = graph.tensor(op.outputs[0])
    if non_unit_dims(out.shape) > 1:
        return f"2-D output {list(out.shape)}: the output must be 1-dimensional"
    return ""


def _softmax(graph: Graph, op: Op) -> str:
    t = graph.tensor(op.inputs[0])
    if non_unit_dims(t.shape) > 1:
        return f"2-D input {list(t.shape)}: the input must be 1-dimensional"
    size = 1
    for d in t.shape:
        size *= d
    if size > ops_table.SOFTMAX_MAX_ELEMENTS:
        return f"{size} elements, more than {ops_table.SOFTMAX_MAX_ELEMENTS}"
    return ""


def _spatial_axes(rank: int) -> set:
    """Axes of y and x: (1, 2) for NHWC, (0, 1) for HWC."""
    return {rank - 3, rank - 2} if rank >= 3 else set()


def _mean(graph: Graph, op: Op) -> str:
    rank = len(graph.tensor(op.inputs[0]).shape)
    axes = {int(a) % rank for a in graph.tensor(op.inputs[1]).values("int32")} if rank else set()
    if not axes <= _spatial_axes(rank):
        return f"reduces along axes {sorted(axes)}; only x and/or y are supported"
    return ""


def _pad(graph: Graph, op: Op) -> str:
    rank = len(graph.tensor(op.inputs[0]).shape)
    pads = graph.tensor(op.inputs[1]).values("int32").reshape(-1, 2)
    padded = {i for i, row in enumerate(pads) if row.any()}
    if not padded <= _spatial_axes(rank):
        return f"pads along axes {sorted(padded)}; only x and/or y are supported"
    return ""


def _resize_bilinear(graph: Graph, op: Op) -> str:
    """Heuristic for "may stay unmapped to avoid precision loss": the scale from input to
    output must be a whole number (align_corners: (out-1)/(in-1)). It reproduces the
    real compiler on Coral's deeplabv3 twin (1x1 -> 33x33 with align_corners stays on CPU)."""
    src = graph.tensor(op.inputs[0]).shape
    dst = graph.tensor(op.outputs[0]).shape
    if len(src) < 3 or len(dst) < 3:
        return ""
    align = op.options.get("align_corners", False)
    for i, o in zip(src[-3:-1], dst[-3:-1]):
        whole = (i > 1 and (o - 1) % (i - 1) == 0) if align else (o % i == 0)
        if not whole:
            return f"resizes {list(src[-3:-1])} to {list(dst[-3:-1])}: not a whole scale " \
                   "factor (the compiler avoids precision loss)"
    return ""


def _squeeze(graph: Graph, op: Op) -> str:
    src = graph.tensor(op.inputs[0]).shape
    dst = graph.tensor(op.outputs[0]).shape
    if tuple(src[len(src) - len(dst):]) != tuple(dst):
        return f"squeezes {list(src)} to {list(dst)}: only leading 1s can be dropped"
    return ""


def _strided_slice(graph: Graph, op: Op) -> str:
    if op.options.get("ellipsis_mask", 0) or op.options.get("new_axis_mask", 0):
        return "ellipsis or new-axis mask is set"
    strides = graph.tensor(op.inputs[3]) if len(op.inputs) > 3 else None
    if strides is not None and strides.constant and (strides.values("int32") != 1).any():
        return "strides other than 1"
    return ""


LIMITS = {
    "AVERAGE_POOL_2D": _fused_activation,
    "MAX_POOL_2D": _fused_activation,
    "CONCATENATION": _concatenation,
    "FULLY_CONNECTED": _fully_connected,
    "SOFTMAX": _softmax,
    "MEAN": _mean,
    "PAD": _pad,
    "RESIZE_BILINEAR": _resize_bilinear,
    "SQUEEZE": _squeeze,
    "STRIDED_SLICE": _strided_slice,
}


def summarize(names: list) -> str:
    """'RESIZE_BILINEAR x3, QUANTIZE, ...' in order of first appearance."""
    counts = Counter(names)
    seen = dict.fromkeys(names)
    return ", ".join(f"{n} x{counts[n]}" if counts[n] > 1 else n for n in seen)


def verdict(p: Prediction) -> str:
    """The one line that answers "will it run on the Edge TPU?"."""
    name = Path(p.model).name
    if p.compiled:
        cpu = f": {summarize(p.cpu_ops)}" if p.cpu_ops else ""
        return (f"{name} is already compiled for the Edge TPU: {p.edgetpu_custom_ops} "
                f"{ops_table.EDGETPU_CUSTOM_OP}, {p.on_cpu} ops on the CPU{cpu}")
    assumed = f"assumed compiler {p.compiler_version} (--compiler-version)"
    total = len(p.ops)
    if p.refusal:
        return (f"preflight: the compiler will refuse {name}: {p.refusal}; fix: {p.fix}; "
                f"{assumed}")
    head = (f"preflight: {p.on_edgetpu} of {total} ops predicted on the Edge TPU, "
            f"{p.subgraphs} subgraph{'s' if p.subgraphs != 1 else ''}")
    b = p.first_blocker
    if b is None:
        return f"{head}; {assumed}"
    source = ""
    if p.leaves_from is not None:
        f = p.leaves_from
        source = f"; it reads '{f.tensor}' from op {f.producer} {f.producer_op} on the Edge TPU"
    return (f"{head}; first on CPU: op {b.index} {b.op} v{b.version}: {b.status}"
            f"{f' ({b.reason})' if b.reason else ''}{source}; fix: {p.fix}; {assumed}")


def report_lines(p: Prediction) -> list:
    """One line per op (index, op, version, predicted status), then the totals."""
    lines = [f"{row.index:>4}  {row.op:<26} v{row.version:<3} {row.status}"
             + (f" ({row.reason})" if row.reason else "") for row in p.ops]
    if not p.compiled:
        lines.append(f"predicted on the Edge TPU: {p.on_edgetpu} of {len(p.ops)} ops"
                     + (f"; on the CPU: {summarize(p.cpu_ops)}" if p.cpu_ops else ""))
        lines += [f"note: {n}" for n in p.notes]
    return lines
