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

from qdeploy.edgetpu import limits
from qdeploy.edgetpu import ops as ops_table
from qdeploy.edgetpu import placement
from qdeploy.edgetpu.placement import Boundary
from qdeploy.modelfile.tflite_graph import Graph, Op, load
from qdeploy.errors import UserError

FUSED_NONE = limits.FUSED_NONE
WEIGHTS_FORMAT_DEFAULT = limits.WEIGHTS_FORMAT_DEFAULT

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
    rule: str = ""  # key of ops.EVIDENCE: the rule that decided, when not mapped
    evidence: str = ""  # ops.EVIDENCE[rule]: the log, twin or docs that show it
    fix: str = ""  # what to change in the model for this op
    stage: Optional[int] = None  # Edge TPU subgraph of a mapped op

    @property
    def mapped(self) -> bool:
        return self.status == ops_table.MAPPED


@dataclass
class Segment:
    """One part of the compiled model, in execution order: an Edge TPU subgraph (one
    edgetpu-custom-op) or a run of ops left on the CPU; with --segments, a pipeline
    segment model holding both."""

    index: int
    kind: str  # "edgetpu", "cpu" or "pipeline"
    ops: list = field(default_factory=list)  # op indices of the original model
    cpu_ops: list = field(default_factory=list)  # names of its ops left on the CPU

    @property
    def count(self) -> int:
        return len(self.ops)


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
    segments: list = field(default_factory=list)  # Segment, in execution order

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
              compiler: str = ops_table.DEFAULT_COMPILER,
              num_segments: Optional[int] = None) -> Prediction:
    """Read `model` (a .tflite, or a convert directory's int8 model) and predict the
    verdict of edgetpu_compiler version `compiler` (see the module docstring); with
    `num_segments` (the compiler's -n), also each pipeline segment."""
    version = compiler_version(compiler)
    graph = load(model_in(model))
    if any(op.name == ops_table.EDGETPU_CUSTOM_OP for op in graph.ops):
        return compiled_report(graph)
    prediction = predict(graph, multiple_subgraphs, version)
    prediction.compiler_version = str(compiler)
    if num_segments and num_segments > 1 and not prediction.refusal:
        prediction.segments = pipeline(graph, num_segments, version)
        prediction.notes.append(f"{num_segments} pipeline segments cut by parameter size "
                                "(ops.EVIDENCE['num segments'], a guess)")
    return prediction


def parameter_bytes(graph: Graph, op: Op) -> int:
    """Bytes of the constant inputs (weights, biases) an op reads."""
    return sum(len(t.data) for t in (graph.tensor(i) for i in op.inputs)
               if t is not None and t.constant)


def pipeline(graph: Graph, n: int, compiler: tuple = (16,)) -> list:
    """The compiler's -n N: N consecutive segments of about equal parameter data (a guess,
    ops.EVIDENCE['num segments']), each placed as a model of its own."""
    sizes = [parameter_bytes(graph, op) for op in graph.ops]
    total, done, chunks = sum(sizes) or 1, 0, [[]]
    for op, size in zip(graph.ops, sizes):
        left = len(graph.ops) - op.index
        if chunks[-1] and len(chunks) < n and (done >= total * len(chunks) / n
                                               or left <= n - len(chunks)):
            chunks.append([])
        chunks[-1].append(op)
        done += size
    out = []
    for i, chunk in enumerate(chunks):
        part = Graph(path=graph.path, ops=tuple(chunk), tensors=graph.tensors,
                     inputs=graph.inputs, outputs=graph.outputs)
        own = [op_status(graph, op, compiler)[0] == ops_table.MAPPED for op in chunk]
        where = placement.place(part, own)
        out.append(Segment(index=i, kind="pipeline", ops=[op.index for op in chunk],
                           cpu_ops=[op.name for op, m in zip(chunk, where.mapped) if not m]))
    return out


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
    judged = [judge(graph, op, compiler) for op in graph.ops]
    own = [(status, reason) for status, reason, _, _ in judged]
    refusal, fix = model_refusal(graph, own, compiler)
    where = placement.place(graph, [s == ops_table.MAPPED for s, _ in own],
                            multiple_subgraphs)
    rows = [row_for(op, j, cut, stage)
            for op, j, cut, stage in zip(graph.ops, judged, where.cut, where.stage)]
    mapped = [row.mapped and not refusal for row in rows]
    leaves = placement.boundary(graph, where)
    blocker = rows[leaves.op] if leaves else first_blocker(rows)
    return Prediction(
        model=str(graph.path), ops=rows, on_edgetpu=sum(mapped),
        on_cpu=len(rows) - sum(mapped), subgraphs=0 if refusal else where.subgraphs,
        refusal=refusal, fix=fix or (blocker_fix(blocker) if blocker else ""),
        first_blocker=blocker, leaves_from=None if refusal else leaves,
        multiple_subgraphs=multiple_subgraphs,
        cpu_ops=[row.op for row, m in zip(rows, mapped) if not m],
        notes=model_notes(graph, compiler),
        segments=[] if refusal else segments(rows))


def row_for(op: Op, judged: tuple, cut: bool, stage: Optional[int]) -> OpPrediction:
    status, reason, rule, fix = judged
    if cut:
        status, reason = placed_status((status, reason), cut)
        rule, fix = "connectivity", ""
    return OpPrediction(op.index, op.name, op.version, status, reason, rule,
                        ops_table.EVIDENCE.get(rule, "") if status != ops_table.MAPPED else "",
                        fix, stage)


def blocker_fix(row: OpPrediction) -> str:
    return row.fix or FIXES.get(row.status, "")


def segments(rows: list) -> list:
    """The compiled model's parts in execution order, as the compiler lays them out: each
    Edge TPU subgraph becomes one edgetpu-custom-op where its first op was, the ops left
    on the CPU stay in place between them."""
    out, seen = [], {}
    for row in rows:
        if row.mapped:
            if row.stage not in seen:
                seen[row.stage] = Segment(index=len(out), kind="edgetpu")
                out.append(seen[row.stage])
            seen[row.stage].ops.append(row.index)
            continue
        if not out or out[-1].kind != "cpu":
            out.append(Segment(index=len(out), kind="cpu"))
        out[-1].ops.append(row.index)
        out[-1].cpu_ops.append(row.op)
    return out


def summarize_layout(names: list) -> str:
    """[QUANTIZE, edgetpu-custom-op, ARG_MAX] -> 'QUANTIZE | Edge TPU | ARG_MAX'."""
    return " | ".join("Edge TPU" if n == ops_table.EDGETPU_CUSTOM_OP else n for n in names)


def layout(p: "Prediction") -> list:
    """The predicted compiled model's op names: edgetpu-custom-op for each Edge TPU part."""
    names = []
    for seg in p.segments:
        names += [ops_table.EDGETPU_CUSTOM_OP] if seg.kind == "edgetpu" else seg.cpu_ops
    return names


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
    status, reason, _, _ = judge(graph, op, compiler)
    return status, reason


def judge(graph: Graph, op: Op, compiler: tuple = (16,)) -> tuple:
    """(status, reason, rule, fix) of one op on its own; `rule` keys ops.EVIDENCE."""
    rejected = rejected_version(op, compiler)
    if rejected and op.version >= rejected:
        name = ".".join(str(p) for p in compiler)
        return (ops_table.VERSION_NOT_SUPPORTED, f"compiler {name} parses {op.name} only "
                f"below version {rejected}", "op versions", "")
    acts = activations(graph, op)
    dynamic = dynamic_status(graph, op, compiler)
    if dynamic:
        return ops_table.DYNAMIC_SHAPE, dynamic, "dynamic size", ""
    float_tensors = [t for t in acts if t.dtype not in ops_table.QUANTIZED_DTYPES]
    if float_tensors:
        t = float_tensors[0]
        if op.name == "QUANTIZE" and all(o.dtype in ops_table.QUANTIZED_DTYPES
                                         for o in acts if o.index in op.outputs):
            return (ops_table.LIMITATION, f"quantizes a {t.dtype} input (float model I/O)",
                    "float io", "convert with uint8/int8 input and output to map it too")
        return (ops_table.UNSUPPORTED_DTYPE, f"tensor '{t.name}' is {t.dtype}", "float io",
                "")
    if op.custom or op.name not in ops_table.SUPPORTED_OPS:
        return (ops_table.NOT_SUPPORTED, f"{op.name} is not in the Edge TPU op table",
                "custom op" if op.custom else "op table", "")
    if compiler < (2, 0, 291256449) and op.name in ops_table.ADDED_IN_2_0_291256449:
        return (ops_table.NOT_SUPPORTED, f"{op.name} is not in the op table of compilers "
                "before 2.0.291256449", "op table", "compile with edgetpu_compiler 16")
    if compiler < (16,) and op.name in ops_table.ADDED_IN_16:
        rule = "transpose before 16" if op.name == "TRANSPOSE" else "added in 16"
        return (ops_table.NOT_SUPPORTED, f"compiler {compiler[0]} has no {op.name}; "
                "compiler 16 maps it", rule, "compile with edgetpu_compiler 16, or replace "
                f"the {op.name}")
    for position in ops_table.PARAM_INPUTS.get(op.name, ()):
        t = graph.tensor(op.inputs[position]) if position < len(op.inputs) else None
        if t is not None and not t.constant:
            return (ops_table.NOT_CONSTANT, f"input {position} ('{t.name}') is computed at "
                    "run time", "not constant", "")
    for t in acts:
        if not rank_ok(t.shape):
            return (ops_table.UNSUPPORTED_RANK, f"tensor '{t.name}' has shape "
                    f"{list(t.shape)}", "rank", "")
    refusal = limits.check(graph, op, compiler)
    if refusal:
        return refusal.status, refusal.reason, refusal.rule, refusal.fix
    return ops_table.MAPPED, "", "", ""


def rank_ok(shape: tuple) -> bool:
    """Only the 3 innermost dimensions may exceed 1."""
    return all(d == 1 for d in shape[:-ops_table.INNERMOST_DIMS]) if len(shape) > 3 else True


def non_unit_dims(shape: tuple) -> int:
    return limits.non_unit_dims(shape)


def limit_status(graph: Graph, op: Op, compiler: tuple = (16,)) -> tuple:
    """(status, reason) from the op's documented limits; MAPPED when within them."""
    refusal = limits.check(graph, op, compiler)
    return (refusal.status, refusal.reason) if refusal else (ops_table.MAPPED, "")


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
    rule = f"; rule: {b.rule} ({citation(b.evidence)})" if b.rule and b.evidence else ""
    return (f"{head}; first on CPU: op {b.index} {b.op} v{b.version}: {b.status}"
            f"{f' ({b.reason})' if b.reason else ''}{source}{rule}; fix: {p.fix}; {assumed}")


def citation(evidence: str) -> str:
    """The sources an ops.EVIDENCE text cites, short: 'twin movenet_..., logs 35 and 06'."""
    import re
    found = re.findall(r"\blogs? \d\d(?:(?:,| and) \d\d)*|\btwins? [\w.*]+|\bdocs\b|\bguess\b",
                       evidence)
    return ", ".join(dict.fromkeys(found)) or evidence


def report_lines(p: Prediction) -> list:
    """One line per op (index, op, version, predicted status), then the totals."""
    lines = [f"{row.index:>4}  {row.op:<26} v{row.version:<3} {row.status}"
             + (f" ({row.reason})" if row.reason else "") for row in p.ops]
    if not p.compiled:
        lines.append(f"predicted on the Edge TPU: {p.on_edgetpu} of {len(p.ops)} ops"
                     + (f"; on the CPU: {summarize(p.cpu_ops)}" if p.cpu_ops else ""))
        lines += [f"segment {seg.index}: {segment_line(seg)}" for seg in p.segments
                  if len(p.segments) > 1]
        lines += [f"note: {n}" for n in p.notes]
    return lines


def segment_line(seg: Segment) -> str:
    if seg.kind == "edgetpu":
        return f"Edge TPU subgraph of {seg.count} ops (ops {seg.ops[0]}-{seg.ops[-1]})"
    if seg.kind == "cpu":
        return f"CPU: {summarize(seg.cpu_ops)}"
    cpu = f"; on the CPU: {summarize(seg.cpu_ops)}" if seg.cpu_ops else ""
    return (f"pipeline segment of ops {seg.ops[0]}-{seg.ops[-1]}, "
            f"{seg.count - len(seg.cpu_ops)} of {seg.count} on the Edge TPU{cpu}")
