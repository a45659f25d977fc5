"""The per-op caveats of Coral's supported-operations table, and the size limits real
compiles show, as checks on one op of a `.tflite` graph.

Each check returns None (within the limit) or a `Refusal`: why, the rule's key in
`ops.EVIDENCE` (what shows it) and what to change in the model. Rules that differ
between compiler versions take the version as a tuple ((16,), (15, 0), (2, 0, 267685300)).
Where real compiles only bracket a size limit, a size inside the bracket is predicted
refused and the reason says "likely" and what the bracket is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from qdeploy.edgetpu import ops as ops_table
from qdeploy.modelfile.tflite_graph import Graph, Op

FUSED_NONE = 0
WEIGHTS_FORMAT_DEFAULT = 0


@dataclass(frozen=True)
class Refusal:
    """Why the compiler leaves an op on the CPU, which rule says so, and the fix."""

    reason: str
    rule: str
    fix: str
    status: str = ops_table.LIMITATION


def elements(shape: tuple) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def dims(shape: tuple) -> str:
    return "x".join(str(d) for d in shape)


def non_unit_dims(shape: tuple) -> int:
    return sum(1 for d in shape if d != 1)


def _shape(graph: Graph, index: int) -> tuple:
    t = graph.tensor(index)
    return tuple(t.shape) if t is not None else ()


def _ints(graph: Graph, op: Op, position: int) -> Optional[np.ndarray]:
    t = graph.tensor(op.inputs[position]) if position < len(op.inputs) else None
    if t is None or not t.constant:
        return None
    return t.values("int64" if t.dtype == "INT64" else "int32")


def spatial_axes(rank: int) -> set:
    """Axes of y and x: (1, 2) for NHWC, (0, 1) for HWC."""
    return {rank - 3, rank - 2} if rank >= 3 else set()


def batch_axis(rank: int) -> set:
    return {0} if rank >= 4 else set()


def fused_activation(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    if op.options.get("fused_activation", FUSED_NONE) != FUSED_NONE:
        return Refusal(f"{op.name} has a fused activation; the Edge TPU needs none here",
                       "fused activation", "apply the activation as its own layer")
    return None


def row(shape: tuple) -> int:
    """The product of the two innermost dimensions: x times z of the y, x, z the Edge TPU
    maps (ops.SIZE_LIMITS)."""
    return elements(tuple(shape)[-2:])


FIXES = {
    "TRANSPOSE": "{smaller} so the transposed map stays within {mapped:,} elements, or end "
                 "the model before the transpose and decode the head on the CPU",
    "STRIDED_SLICE": "end the model at the head's convolutions and split boxes from scores "
                     "on the CPU, or {smaller}",
    "CONCATENATION": "end the model before the head's last concatenation (concatenate the "
                     "levels on the CPU), or {smaller}",
    "LOGISTIC": "apply the scores' sigmoid on the CPU after the model (end the model at the "
                "head's convolutions), or {smaller}",
}
FIXES["QUANTIZE"] = FIXES["CONCATENATION"]  # the output QUANTIZE of the same tensor
SIDE_STEP = 32  # input sides a detector exports at are multiples of its largest stride


def smaller_input(graph: Graph, size: int, limit: int) -> str:
    """The input side at which a tensor that grows with the input's area (a head's grid,
    its anchors) shrinks from `size` to `limit`: "export at 160 instead of 320", rounded
    down to a multiple of 32; a general phrase when the model has no square image input."""
    shape = _shape(graph, graph.inputs[0]) if graph.inputs else ()
    if len(shape) == 4 and shape[1] == shape[2] and shape[1] >= 2 * SIDE_STEP and size > 0:
        side = int(shape[1] * (limit / size) ** 0.5) // SIDE_STEP * SIDE_STEP
        if 0 < side < shape[1]:
            return f"export at {side} instead of {shape[1]}"
    return "export at a smaller input"


RULES = {"TRANSPOSE": "transpose size", "STRIDED_SLICE": "slice size",
         "CONCATENATION": "join size", "QUANTIZE": "quantize size", "LOGISTIC": "logistic size"}


def sized(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    """The op's size limit (ops.SIZE_LIMITS) on its first input (the output for a
    CONCATENATION): within it, None; past the last size seen mapped, refused, "likely"
    until the first size seen refused."""
    limit = ops_table.SIZE_LIMITS[op.name]
    shape = _shape(graph, op.outputs[0] if op.name == "CONCATENATION" else op.inputs[0])
    n = elements(shape) if limit.measure == "elements" else row(shape)
    if n <= limit.mapped_up_to:
        return None
    likely = "" if n >= limit.refused_from else "likely "
    unit = "elements" if limit.measure == "elements" else "in a row"
    return Refusal(f"{op.name} of {dims(shape)} ({n:,} {unit}) {likely}refused: "
                   f"{limit.bracket}", RULES[op.name],
                   FIXES[op.name].format(mapped=limit.mapped_up_to,
                                         smaller=smaller_input(graph, n, limit.mapped_up_to)))


def concatenation(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    refusal = fused_activation(graph, op, compiler) or sized(graph, op, compiler)
    if refusal:
        return refusal
    constants = [graph.tensor(i) for i in op.inputs if graph.tensor(i) is not None
                 and graph.tensor(i).constant]
    if constants and (len(op.inputs) != 2 or any(c.data.any() for c in constants)):
        return Refusal("a constant input is allowed only with exactly 2 inputs and all "
                       "zeros", "concatenation constant",
                       "concatenate only computed tensors (add constants with ADD)")
    return None


def fully_connected(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    if op.options.get("weights_format", WEIGHTS_FORMAT_DEFAULT) != WEIGHTS_FORMAT_DEFAULT:
        return Refusal("weights are not in the default format", "fully connected",
                       "convert without shuffled weights")
    out = _shape(graph, op.outputs[0])
    if non_unit_dims(out) > 1:
        return Refusal(f"2-D output {list(out)}: the output must be 1-dimensional",
                       "fully connected", "re-convert with batch 1 so the output is "
                       "1-dimensional", ops_table.TWO_D_OUTPUT)
    return None


def softmax(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    """The table: a 1-D input of at most 16,000 elements. Compiler 16 finds a SOFTMAX of
    1x4x2100x16 along its last axis mappable (log 34), so there the 16,000 bound the
    softmax axis and more dimensions are allowed."""
    shape = _shape(graph, op.inputs[0])
    fix = "apply the softmax on the CPU after the model, or over a 1-D input"
    if compiler >= (16,):
        n = shape[-1] if shape else 1
        if n > ops_table.SOFTMAX_MAX_ELEMENTS:
            return Refusal(f"a softmax axis of {n:,} values, more than "
                           f"{ops_table.SOFTMAX_MAX_ELEMENTS:,}", "softmax", fix)
        return None
    if non_unit_dims(shape) > 1:
        return Refusal(f"2-D input {list(shape)}: the input must be 1-dimensional",
                       "softmax", fix)
    if elements(shape) > ops_table.SOFTMAX_MAX_ELEMENTS:
        return Refusal(f"{elements(shape)} elements, more than "
                       f"{ops_table.SOFTMAX_MAX_ELEMENTS}", "softmax", fix)
    return None


def _reduction_axes(graph: Graph, op: Op) -> tuple:
    rank = len(_shape(graph, op.inputs[0]))
    values = _ints(graph, op, 1)
    axes = {int(a) % rank for a in values} if rank and values is not None else set()
    return rank, axes


def mean(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    """MEAN and SUM: compiler 16's table allows z when z is a multiple of 4, never batch;
    the 2019 table (older compilers) only x and/or y."""
    rank, axes = _reduction_axes(graph, op)
    fix = "reduce over height and width only (global pooling), keep batch and channels"
    if axes & batch_axis(rank):
        return Refusal(f"reduces along the batch axis ({sorted(axes)})", "mean axes", fix)
    z = rank - 1
    if z in axes and rank:
        depth = _shape(graph, op.inputs[0])[z]
        if compiler < (16,):
            return Refusal(f"reduces along axes {sorted(axes)}; compilers before 16 reduce "
                           "only x and/or y", "mean axes", fix)
        if depth % ops_table.MEAN_Z_MULTIPLE:
            return Refusal(f"reduces along channels of depth {depth}, not a multiple of "
                           f"{ops_table.MEAN_Z_MULTIPLE}", "mean axes", fix)
    return None


def not_along_batch(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    """PACK, SPLIT, REDUCE_MAX, REDUCE_MIN: never along the batch axis."""
    if op.name == "SPLIT":
        values, rank = _ints(graph, op, 0), len(_shape(graph, op.inputs[1]))
        axes = {int(values[0]) % rank} if values is not None and rank else set()
    elif op.name == "PACK":
        rank = len(_shape(graph, op.outputs[0]))
        axes = {int(op.options.get("axis", 1)) % rank} if rank else set()
    else:
        rank, axes = _reduction_axes(graph, op)
    if axes & batch_axis(rank):
        return Refusal(f"{op.name} along the batch axis", "batch axis",
                       "keep the batch axis out of it (batch 1)")
    return None


def pad(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    """Compilers 15 and 16 pad along channels too (log 36), never along batch; the 2019
    table (older compilers) only along x and y."""
    rank = len(_shape(graph, op.inputs[0]))
    values = _ints(graph, op, 1)
    if values is None:
        return None
    padded = {i for i, row in enumerate(values.reshape(-1, 2)) if row.any()}
    if padded & batch_axis(rank):
        return Refusal(f"pads along the batch axis ({sorted(padded)})", "pad channels",
                       "do not pad the batch axis")
    if compiler < (15,) and not padded <= spatial_axes(rank):
        return Refusal(f"pads along axes {sorted(padded)}; compilers before 15 pad only x "
                       "and/or y", "pad before 15",
                       "compile with edgetpu_compiler 15 or 16, or grow channels with a "
                       "1x1 convolution instead of a channel pad")
    return None


def prelu(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    alpha = _shape(graph, op.inputs[1]) if len(op.inputs) > 1 else ()
    if non_unit_dims(alpha[:-1]):
        return Refusal(f"alpha has shape {list(alpha)}: one value per element, not per "
                       "channel", "prelu alpha",
                       "replace PRELU's per-element alpha with shared axes (Keras "
                       "PReLU(shared_axes=[1, 2]))")
    return None


def convolution(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    h = op.options.get("dilation_h", 1)
    w = op.options.get("dilation_w", 1)
    if h != w:
        return Refusal(f"dilation {h}x{w}: x and y must be the same", "dilation",
                       "use the same dilation rate along height and width")
    return None


def resize_bilinear(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    """Heuristic for "may stay unmapped to avoid precision loss": the scale from input to
    output must be a whole number (align_corners: (out-1)/(in-1)). It reproduces the
    real compiler on Coral's deeplabv3 twin (1x1 -> 33x33 with align_corners stays on
    the CPU). No twin or log shows a bilinear resize mapped or refused for its size
    alone: the table's "depending on input/output size" is not modelled beyond this."""
    src, dst = _shape(graph, op.inputs[0]), _shape(graph, op.outputs[0])
    if len(src) < 3 or len(dst) < 3:
        return None
    align = op.options.get("align_corners", False)
    for i, o in zip(src[-3:-1], dst[-3:-1]):
        whole = (i > 1 and (o - 1) % (i - 1) == 0) if align else (o % i == 0)
        if not whole:
            return Refusal(f"resizes {list(src[-3:-1])} to {list(dst[-3:-1])}: not a whole "
                           "scale factor (refused: 1x1 -> 33x33 with align_corners, twin "
                           "deeplabv3)", "resize precision",
                           "resize by a whole factor (e.g. 2x, or 33 -> 513 with "
                           "align_corners), or resize on the CPU after the model")
    return None


def squeeze(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    src, dst = _shape(graph, op.inputs[0]), _shape(graph, op.outputs[0])
    if tuple(src[len(src) - len(dst):]) != tuple(dst):
        return Refusal(f"squeezes {list(src)} to {list(dst)}: only leading 1s can be "
                       "dropped", "squeeze", "squeeze only leading 1s, or use RESHAPE")
    return None


def strided_slice(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    fix = "slice with strides 1 and no ellipsis or new axis"
    if op.options.get("ellipsis_mask", 0) or op.options.get("new_axis_mask", 0):
        return Refusal("ellipsis or new-axis mask is set", "strided slice", fix)
    strides = _ints(graph, op, 3)
    if strides is not None and (strides != 1).any():
        return Refusal("strides other than 1", "strided slice", fix)
    return sized(graph, op, compiler)


def reshape(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    """Compiler 16 refuses a reshape that moves data with a dimension of 2100 or more and
    33,600 elements or more; it maps one with no dimension above 1600, or of at most
    8,400 elements; in between: predicted refused, "likely" (ops.RESHAPE_BRACKET). Adding
    or dropping leading 1s moves no data and is never refused (log 37)."""
    src, dst = _shape(graph, op.inputs[0]), _shape(graph, op.outputs[0])
    if tuple(src[-3:]) == tuple(dst[-3:]) and elements(src) == elements(dst):
        return None
    largest, n = max(src + dst, default=0), elements(dst)
    if largest <= ops_table.RESHAPE_MAX_DIM or n <= ops_table.RESHAPE_MAX_ELEMENTS:
        return None
    certain = (largest >= ops_table.RESHAPE_REFUSED_DIM
               and n >= ops_table.RESHAPE_REFUSED_ELEMENTS)
    likely = "" if certain else "likely "
    return Refusal(f"RESHAPE {list(src)} -> {list(dst)} (a dimension of {largest}, "
                   f"{n:,} elements) {likely}refused: {ops_table.RESHAPE_BRACKET}",
                   "reshape size",
                   "move the reshape after the head (end the model at the head's "
                   "convolutions and reshape on the CPU), or "
                   f"{smaller_input(graph, largest, ops_table.RESHAPE_MAX_DIM)} so no "
                   f"dimension passes {ops_table.RESHAPE_MAX_DIM}")


LIMITS = {
    "AVERAGE_POOL_2D": fused_activation,
    "MAX_POOL_2D": fused_activation,
    "CONCATENATION": concatenation,
    "CONV_2D": convolution,
    "DEPTHWISE_CONV_2D": convolution,
    "FULLY_CONNECTED": fully_connected,
    "SOFTMAX": softmax,
    "MEAN": mean,
    "SUM": mean,
    "PACK": not_along_batch,
    "SPLIT": not_along_batch,
    "REDUCE_MAX": not_along_batch,
    "REDUCE_MIN": not_along_batch,
    "PAD": pad,
    "QUANTIZE": sized,
    "LOGISTIC": sized,
    "PRELU": prelu,
    "RESHAPE": reshape,
    "RESIZE_BILINEAR": resize_bilinear,
    "SQUEEZE": squeeze,
    "STRIDED_SLICE": strided_slice,
    "TRANSPOSE": sized,
}


def check(graph: Graph, op: Op, compiler: tuple) -> Optional[Refusal]:
    """The op's table caveats and size limits for this compiler; None when within them."""
    checker = LIMITS.get(op.name)
    return checker(graph, op, compiler) if checker else None
