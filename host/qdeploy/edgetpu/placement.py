"""Where the Edge TPU compiler puts each op: its subgraph(s), found by graph connectivity.

Given whether each op could be mapped on its own (`qdeploy.edgetpu.preflight.op_status`),
place the ops the way the compiler does (ops.EVIDENCE["connectivity"]):

- an op that can be mapped joins the Edge TPU part when none of its inputs comes back
  from the CPU after leaving the Edge TPU. CPU ops ahead of the Edge TPU part (a
  float model's input QUANTIZE, a CAST) feed it without ending anything;
- after the first op that leaves the Edge TPU, the compiler keeps mapping ops whose
  inputs stay on the Edge TPU side (other branches, other heads); ops fed by a CPU
  result are cut off: "More than one subgraph is not supported";
- with multiple subgraphs (`-a`), every mappable op is mapped, and an Edge TPU subgraph
  holds the ops that need the same number of CPU round trips before them (a guess,
  ops.EVIDENCE["multiple subgraphs"]).

Ops are visited in the model's execution order, which TFLite keeps topological.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from qdeploy.modelfile.tflite_graph import Graph


@dataclass(frozen=True)
class Placement:
    """Per op: mapped or not, its Edge TPU subgraph (stage) and whether it was cut off."""

    mapped: tuple  # bool per op
    stage: tuple  # Edge TPU subgraph number per mapped op, None on the CPU
    cut: tuple  # bool per op: could map on its own, but an input comes back from the CPU

    @property
    def subgraphs(self) -> int:
        return len({s for s in self.stage if s is not None})


@dataclass(frozen=True)
class Boundary:
    """Where the model leaves the Edge TPU: the op, and its input that comes from there."""

    op: int
    tensor: str
    producer: int  # index of the mapped op that produced `tensor`
    producer_op: str


def place(graph: Graph, mappable: list, multiple_subgraphs: bool = False) -> Placement:
    """Place every op of `graph`; `mappable[i]` says whether op i could map on its own.

    Each tensor gets a `ready` level: the Edge TPU subgraph it comes from (for a mapped
    producer), or the number of Edge TPU subgraphs that must run before it (for a CPU
    producer; 0 for model inputs and constants). A mappable op joins subgraph
    max(ready of its inputs); a CPU op's outputs are ready one subgraph after the
    Edge TPU tensors it reads. In single-subgraph mode only subgraph 0 exists.
    """
    from_tpu, ready = {}, {}  # tensor -> producing op's stage / ready level
    mapped, stage, cut = [], [], []
    for op, can_map in zip(graph.ops, mappable):
        inputs = [t for t in op.inputs if t >= 0]
        level = max((from_tpu.get(t, ready.get(t, 0)) for t in inputs), default=0)
        if can_map and (multiple_subgraphs or level == 0):
            mapped.append(True)
            stage.append(level)
            cut.append(False)
            for t in op.outputs:
                from_tpu[t] = level
            continue
        mapped.append(False)
        stage.append(None)
        cut.append(can_map)
        after = max((from_tpu[t] + 1 if t in from_tpu else ready.get(t, 0) for t in inputs),
                    default=0)
        for t in op.outputs:
            ready[t] = after
    return Placement(tuple(mapped), tuple(stage), tuple(cut))


def producers(graph: Graph) -> dict:
    """tensor index -> index of the op that writes it."""
    return {t: op.index for op in graph.ops for t in op.outputs}


def boundary(graph: Graph, placement: Placement) -> Optional[Boundary]:
    """The first op, in execution order, that is not mapped for its own reason and reads
    a tensor the Edge TPU produced: where the user must change the model."""
    made_by = producers(graph)
    for op, mapped, cut in zip(graph.ops, placement.mapped, placement.cut):
        if mapped or cut:
            continue
        for t in op.inputs:
            producer = made_by.get(t)
            if producer is not None and placement.mapped[producer]:
                return Boundary(op.index, graph.tensor(t).name, producer,
                                graph.ops[producer].name)
    return None
