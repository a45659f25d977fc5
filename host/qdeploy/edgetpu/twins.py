"""Score the preflight against compiled twins: `X.tflite` beside `X_edgetpu.tflite`.

A twin is what the real compiler wrote: each Edge TPU subgraph became one
`edgetpu-custom-op`, ops left for the CPU stayed builtin ops. So the compiler mapped
(ops of X) - (builtin ops left in the twin), and the first builtin op after the first
custom op is where the model left the Edge TPU. Used by scripts/score_preflight.py,
by `qdeploy compile` (prediction against the compile it just ran) and by the tests.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from qdeploy.edgetpu import ops as ops_table
from qdeploy.edgetpu import preflight
from qdeploy.modelfile import tflite_graph

TWIN_SUFFIX = "_edgetpu.tflite"


@dataclass
class Compiled:
    """What a compiled twin shows."""

    cpu_ops: list  # builtin ops left on the CPU, in order
    subgraphs: int  # edgetpu-custom-op count
    first_cpu_op: Optional[str]  # first builtin op after the first custom op
    layout: list = field(default_factory=list)  # op names in order, custom ops included
    parts: list = field(default_factory=list)  # ops each custom op replaced (None: unknown)


@dataclass
class Score:
    """The preflight's prediction for one model against its compiled twin."""

    model: str
    ops: int
    mapped: int  # by the real compiler
    predicted: int
    predicted_first_cpu_op: Optional[str]
    compiled_first_cpu_op: Optional[str]
    differences: list = field(default_factory=list)  # "RESHAPE: 2 predicted on CPU, 1 ..."

    @property
    def off_by(self) -> int:
        return self.predicted - self.mapped

    @property
    def exact(self) -> bool:
        return not self.differences


def read_twin(path: Path, model: Optional[Path] = None) -> Compiled:
    """What the compiled twin shows; with the uncompiled `model`, also how many of its ops
    each edgetpu-custom-op replaced (`replaced_ops`)."""
    twin = tflite_graph.load(path)
    names = [op.name for op in twin.ops]
    custom = ops_table.EDGETPU_CUSTOM_OP
    after = names[names.index(custom) + 1:] if custom in names else names
    parts = []
    if model is not None:
        original = tflite_graph.load(model)
        parts = [replaced_ops(original, twin, op) for op in twin.ops if op.name == custom]
    return Compiled(cpu_ops=[n for n in names if n != custom], subgraphs=names.count(custom),
                    first_cpu_op=next((n for n in after if n != custom), None),
                    layout=names, parts=parts)


def replaced_ops(original: tflite_graph.Graph, twin: tflite_graph.Graph,
                 custom: tflite_graph.Op) -> Optional[int]:
    """How many ops of `original` one edgetpu-custom-op of `twin` replaced: the compiler
    keeps tensor names, so walk back from the custom op's outputs through the original
    graph until its inputs. None when the names do not match the original."""
    by_name = {t.name: t.index for t in original.tensors}
    inputs = {by_name.get(twin.tensor(i).name) for i in custom.inputs if i >= 0}
    outputs = [by_name.get(twin.tensor(i).name) for i in custom.outputs]
    if None in outputs:
        return None
    made_by = {t: op.index for op in original.ops for t in op.outputs}
    seen, todo = set(), [made_by.get(t) for t in outputs]
    while todo:
        index = todo.pop()
        if index is None or index in seen:
            continue
        seen.add(index)
        todo += [made_by.get(t) for t in original.ops[index].inputs
                 if t >= 0 and t not in inputs]
    return len(seen)


def compare_segments(prediction: preflight.Prediction, compiled: Compiled) -> list:
    """Edge TPU subgraph by subgraph, in execution order: ops each one holds and the CPU
    ops between them, predicted against the compiled twin (empty: the same)."""
    predicted = preflight.layout(prediction)
    parts = [seg.count for seg in prediction.segments if seg.kind == "edgetpu"]
    lines = []
    if predicted != compiled.layout:
        lines.append(f"segments: predicted {preflight.summarize_layout(predicted)}, compiler "
                     f"{preflight.summarize_layout(compiled.layout)}")
    for i, (mine, theirs) in enumerate(zip(parts, compiled.parts)):
        if theirs is not None and mine != theirs:
            lines.append(f"Edge TPU subgraph {i}: predicted {mine} ops, compiler {theirs}")
    return lines


def compare_pipeline(prediction: preflight.Prediction, segments: list) -> list:
    """--segments N: each segment model the compiler wrote against the predicted segment
    (its ops left on the CPU, its Edge TPU subgraphs)."""
    lines = []
    predicted = [seg for seg in prediction.segments if seg.kind == "pipeline"]
    if len(predicted) != len(segments):
        return [f"segments: predicted {len(predicted)}, compiler wrote {len(segments)}"]
    for seg, compiled in zip(predicted, segments):
        mapped = seg.count - len(seg.cpu_ops)
        if Counter(seg.cpu_ops) != Counter(compiled.cpu_ops):
            lines.append(f"segment {seg.index}: CPU ops predicted "
                         f"[{preflight.summarize(seg.cpu_ops)}], compiler "
                         f"[{preflight.summarize(compiled.cpu_ops)}]")
        if (mapped > 0) != (compiled.subgraphs > 0):
            lines.append(f"segment {seg.index}: predicted {mapped} ops on the Edge TPU, "
                         f"compiler {compiled.subgraphs} Edge TPU subgraphs")
    return lines


def pairs(folder: Path) -> list:
    """(model, twin) for every `X_edgetpu.tflite` in `folder` with its `X.tflite`."""
    out = []
    for twin in sorted(Path(folder).glob(f"*{TWIN_SUFFIX}")):
        model = twin.with_name(twin.name[:-len(TWIN_SUFFIX)] + ".tflite")
        if model.is_file():
            out.append((model, twin))
    return out


def compare(prediction: preflight.Prediction, compiled: Compiled) -> list:
    """Where the prediction and the compiler differ, one line each (empty: exact)."""
    lines = []
    mapped = len(prediction.ops) - len(compiled.cpu_ops)
    if prediction.on_edgetpu != mapped:
        lines.append(f"ops on the Edge TPU: predicted {prediction.on_edgetpu}, compiler "
                     f"{mapped} of {len(prediction.ops)}")
    predicted, actual = Counter(prediction.cpu_ops), Counter(compiled.cpu_ops)
    for name in dict.fromkeys(prediction.cpu_ops + compiled.cpu_ops):
        if predicted[name] != actual[name]:
            lines.append(f"{name} on the CPU: predicted {predicted[name]}, compiler "
                         f"{actual[name]}")
    if not lines and prediction.cpu_ops != compiled.cpu_ops:
        lines.append(f"CPU ops in another order: predicted {prediction.cpu_ops}, compiler "
                     f"{compiled.cpu_ops}")
    blocker = prediction.first_blocker.op if prediction.first_blocker else None
    if compiled.cpu_ops and blocker != compiled.first_cpu_op:
        lines.append(f"first op after the Edge TPU part: predicted {blocker}, compiler "
                     f"{compiled.first_cpu_op}")
    if compiled.layout and max(prediction.subgraphs, compiled.subgraphs) > 1:
        lines += compare_segments(prediction, compiled)
    return lines


def score(model: Path, twin: Path, multiple_subgraphs: bool = False,
          compiler: str = ops_table.DEFAULT_COMPILER) -> Score:
    prediction = preflight.preflight(model, multiple_subgraphs, compiler)
    compiled = read_twin(twin, model)
    return Score(model=Path(model).name, ops=len(prediction.ops),
                 mapped=len(prediction.ops) - len(compiled.cpu_ops),
                 predicted=prediction.on_edgetpu,
                 predicted_first_cpu_op=(prediction.first_blocker.op
                                         if prediction.first_blocker else None),
                 compiled_first_cpu_op=compiled.first_cpu_op,
                 differences=compare(prediction, compiled))
