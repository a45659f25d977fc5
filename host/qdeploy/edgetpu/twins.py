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


def read_twin(path: Path) -> Compiled:
    names = [op.name for op in tflite_graph.load(path).ops]
    custom = ops_table.EDGETPU_CUSTOM_OP
    after = names[names.index(custom) + 1:] if custom in names else names
    return Compiled(cpu_ops=[n for n in names if n != custom], subgraphs=names.count(custom),
                    first_cpu_op=next((n for n in after if n != custom), None))


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
    return lines


def score(model: Path, twin: Path, multiple_subgraphs: bool = False,
          compiler: str = ops_table.DEFAULT_COMPILER) -> Score:
    prediction = preflight.preflight(model, multiple_subgraphs, compiler)
    compiled = read_twin(twin)
    return Score(model=Path(model).name, ops=len(prediction.ops),
                 mapped=len(prediction.ops) - len(compiled.cpu_ops),
                 predicted=prediction.on_edgetpu,
                 predicted_first_cpu_op=(prediction.first_blocker.op
                                         if prediction.first_blocker else None),
                 compiled_first_cpu_op=compiled.first_cpu_op,
                 differences=compare(prediction, compiled))
