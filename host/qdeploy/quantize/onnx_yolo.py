"""Rewrites of an ONNX graph before onnx2tf, so its int8 form works on the Edge TPU.

Two, each found by the graph's structure and shapes (ONNX shape inference), never by
node names (torch exports name nodes as it likes):

- `normalise_boxes`: an Ultralytics head (YOLOv8/v11 output [1, 4 + C, N], YOLOv5
  [1, N, 5 + C]) has box centres and sizes in input pixels (0..640) and class scores in
  0..1 in one tensor. Full-integer quantization gives that tensor, and the CONCATENATION
  that makes it, one scale (about 640 / 255 = 2.5), so every score rounds to 0. The
  rewrite divides the box branch by the input's width and height just before the
  Concat that joins boxes to scores, as Ultralytics' own TFLite export does: boxes and
  scores then share a 0..1 range and one scale of 1/255. The Concat is found walking up
  from the output through layout ops (Concat across levels, Reshape, Transpose): the
  one whose axis is the head's 4 + C (5 + C) axis and whose first inputs add up to the
  four box coordinates. The manifest's task records `boxes: normalised`.
- `residual_adds`: onnx2tf 1.29.17 and later add a shape "rescue" to their Add
  converter that compares the NHWC result with the ONNX NCHW shape and transposes the
  operands to NCHW when they differ, leaving TRANSPOSE ops around every residual Add of
  4-D maps (C2f and bottleneck blocks) that the Edge TPU then runs on the CPU. `a + b`
  is written `a - (b * -1)` (Sub and Mul have no such rescue; both map to the Edge
  TPU), which onnx2tf converts in NHWC throughout. A test converts a C2f block and
  fails on any TRANSPOSE, so an onnx2tf release that changes this is seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from qrun.tasks import roles

LAYOUT_OPS = ("Concat", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")
BOX_COORDINATES = 4  # x, y, w, h


@dataclass
class Head:
    """A YOLO head found in the graph: what the decoder needs and what was rewritten."""

    output: str  # the graph output's name
    shape: list
    decoder: str
    classes: int
    anchors: int
    joins: list = field(default_factory=list)  # the box/score Concat nodes' names
    normalised: bool = False  # boxes divided by the input size before the joins

    @property
    def params(self) -> dict:
        """What the manifest's task.params records about the boxes."""
        return {roles.BOX_UNITS: roles.NORMALISED if self.normalised else roles.PIXELS}


def shapes_of(proto) -> dict:
    """Tensor name -> shape (ints; None where unknown), by ONNX shape inference."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:
        inferred = proto
    values = (list(inferred.graph.value_info) + list(inferred.graph.input) +
              list(inferred.graph.output))
    shapes = {}
    for v in values:
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for init in proto.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def find_head(proto, shapes: Optional[dict] = None) -> Optional[Head]:
    """The first graph output shaped like an Ultralytics head, with the Concat nodes that
    join its boxes to its scores; None when no output is shaped like one."""
    shapes = shapes if shapes is not None else shapes_of(proto)
    producers = {out: node for node in proto.graph.node for out in node.output}
    for output in proto.graph.output:
        shape = shapes.get(output.name)
        head = roles.yolo_head(shape) if shape and None not in shape else None
        if head is None:
            continue
        decoder, classes, anchors = head
        width = BOX_COORDINATES + classes + (1 if decoder == roles.YOLOV5 else 0)
        joins = box_joins(output.name, width, producers, shapes)
        return Head(output.name, shape, decoder, classes, anchors, joins)
    return None


def box_joins(tensor: str, width: int, producers: dict, shapes: dict) -> list:
    """The Concat nodes above `tensor`, through layout ops only, that join four box
    coordinates to the scores along an axis of size `width`."""
    found, todo, seen = [], [tensor], set()
    while todo:
        name = todo.pop()
        node = producers.get(name)
        if node is None or node.name in seen or node.op_type not in LAYOUT_OPS:
            continue
        seen.add(node.name)
        if node.op_type == "Concat" and joins_boxes(node, width, shapes):
            found.append(node)
            continue
        todo.extend(i for i in (node.input[:1] if node.op_type != "Concat" else node.input))
    return found


def concat_axis(node, rank: int) -> int:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return axis + rank if axis < 0 else axis


def joins_boxes(node, width: int, shapes: dict) -> bool:
    """A Concat of width `width` whose first inputs hold exactly the 4 box coordinates."""
    out = shapes.get(node.output[0])
    if not out:
        return False
    axis = concat_axis(node, len(out))
    if out[axis] != width:
        return False
    total = 0
    for name in node.input:
        shape = shapes.get(name)
        if not shape or shape[axis] is None:
            return False
        total += shape[axis]
        if total == BOX_COORDINATES:
            return True
        if total > BOX_COORDINATES:
            return False
    return False


def check_known_head(proto, name: str) -> None:
    """Refuse a model that says it detects (its metadata) whose outputs no YOLO decoder
    reads, naming the shapes; `--task raw` keeps it undecoded."""
    from qrun.errors import UserError

    shapes = shapes_of(proto)
    if find_head(proto, shapes) is not None:
        return
    outputs = ", ".join(f"{o.name} {['?' if d is None else d for d in shapes.get(o.name) or []]}"
                        for o in proto.graph.output)
    raise UserError(f"{name} is a detector (its metadata says task: detect) but no detection "
                    f"decoder reads its outputs ({outputs}): qrun detect reads a YOLOv8 "
                    "[1, 4+C, N] or a YOLOv5 [1, N, 5+C] head; convert it with --task raw "
                    "to run it with qrun bench and qrun verify")


def input_size(proto, shapes: dict) -> Optional[tuple]:
    """(width, height) of the first NCHW image input."""
    inits = {i.name for i in proto.graph.initializer}
    for value in proto.graph.input:
        shape = shapes.get(value.name)
        if value.name not in inits and shape and len(shape) == 4 and None not in shape[2:]:
            return shape[3], shape[2]
    return None


def normalise_boxes(proto, head: Head, shapes: dict):
    """Divide the box inputs of each join by the input's (W, H, W, H); True when done."""
    from onnx import helper, numpy_helper

    size = input_size(proto, shapes)
    if size is None or not head.joins:
        return False
    width, height = size
    for node in head.joins:
        rank = len(shapes[node.output[0]])
        axis = concat_axis(node, rank)
        start = 0
        for k, name in enumerate(list(node.input)):
            count = shapes[name][axis]
            if start >= BOX_COORDINATES:
                break
            divisor = [width if (start + j) % 2 == 0 else height for j in range(count)]
            const_shape = [1] * rank
            const_shape[axis] = count
            const = f"{node.name}/qdeploy_box_size_{k}"
            proto.graph.initializer.append(numpy_helper.from_array(
                np.asarray(divisor, np.float32).reshape(const_shape), const))
            scaled = f"{name}/qdeploy_normalised"
            proto.graph.node.insert(list(proto.graph.node).index(node), helper.make_node(
                "Div", [name, const], [scaled], name=f"{node.name}/qdeploy_normalise_{k}"))
            node.input[k] = scaled
            start += count
    head.normalised = True
    return True


def residual_adds(proto, shapes: dict) -> int:
    """Rewrite each Add of two computed 4-D maps of one shape as Sub(a, Mul(b, -1));
    returns how many."""
    from onnx import helper, numpy_helper

    inits = {i.name for i in proto.graph.initializer}
    nodes, count, minus_one = [], 0, "qdeploy/minus_one"
    for node in proto.graph.node:
        a, b = (list(node.input) + [None, None])[:2] if node.op_type == "Add" else (None, None)
        sa, sb = shapes.get(a), shapes.get(b)
        if (node.op_type == "Add" and len(node.input) == 2 and a not in inits and
                b not in inits and sa and len(sa) == 4 and sa == sb and None not in sa):
            negated = f"{node.output[0]}/qdeploy_negated"
            nodes.append(helper.make_node("Mul", [b, minus_one], [negated],
                                          name=f"{node.name}/qdeploy_negate"))
            nodes.append(helper.make_node("Sub", [a, negated], list(node.output),
                                          name=node.name))
            count += 1
        else:
            nodes.append(node)
    if count:
        proto.graph.initializer.append(numpy_helper.from_array(np.array(-1.0, np.float32),
                                                               minus_one))
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    return count


def prepare(proto) -> tuple:
    """(head or None, notes): the graph rewritten in place for onnx2tf and the Edge TPU."""
    shapes = shapes_of(proto)
    notes = []
    head = find_head(proto, shapes)
    if head is not None:
        if normalise_boxes(proto, head, shapes):
            layout = roles.yolo_text(head.decoder, head.classes, head.anchors)
            notes.append(f"{head.output} {head.shape} is a {layout} head: its boxes are "
                         "divided by the input size before they join the scores (as "
                         "Ultralytics' TFLite export does), so int8 keeps the scores; the "
                         "manifest records boxes: normalised")
        else:
            notes.append(f"{head.output} {head.shape} looks like a YOLO head but qdeploy "
                         "found no Concat joining its 4 box coordinates to its scores; its "
                         "boxes stay in pixels and share one int8 scale with the scores")
    adds = residual_adds(proto, shapes)
    if adds:
        notes.append(f"{adds} residual Add{'s' if adds > 1 else ''} written as Sub/Mul so "
                     "onnx2tf keeps them NHWC (no TRANSPOSE for the Edge TPU to leave on "
                     "the CPU)")
    return head, notes
