"""Why a layer loses: the known causes of int8 loss, read from the graph, the scales and the
float ranges the trace saw, each with its reason and, where a model change is the usual
fix, that fix in one line.

- `concat`: a concatenation (or an output) whose inputs have very different float ranges
  but, in int8, share one scale: the narrow input keeps a few of the 255 steps.
- `wide`: a tensor whose range is far wider than its neighbours' (its inputs' and its
  consumers'): an activation with an outlier range.
- `few-steps`: a tensor whose float values use only a few steps of its scale (the scale was
  set by a wider tensor it shares it with, or by the op after it).
- `fixed-scale`: SOFTMAX, LOGISTIC and TANH have a fixed output scale (1/256, 1/128): fed a
  wide input range, their input steps are too coarse for the curve.
- `per-tensor`: weights with one scale for all output channels, where some channels use
  only a few levels (per-channel weights would keep them).
- `output-channels`: one model output whose channels have very different ranges (boxes in
  pixels beside scores in [0, 1]) sharing one scale.
- `clipped`: the data reaches beyond the range calibration gave the tensor.

A row gets the first cause that applies, in that order; `severity` is the ratio that made
it (how many times wider, how many times fewer levels), and orders the flagged rows.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from qdeploy.modelfile import tflite_graph
from qdeploy.quantize import layer_trace

KINDS = ("concat", "wide", "few-steps", "fixed-scale", "per-tensor", "output-channels",
         "clipped")
CONCAT_RATIO = 10.0  # widest / narrowest input span that shares one scale
WIDE_RATIO = 8.0  # a range this many times wider than every neighbour's
FEW_STEPS = 8.0  # float values spanning fewer steps of the tensor's scale
FIXED_SCALE = {"SOFTMAX": 64.0, "LOGISTIC": 64.0, "TANH": 64.0}  # widest input range kept
WEIGHT_LEVELS = 16  # a per-tensor weight channel using fewer than ±this many of ±127
OUTPUT_RATIO = 20.0  # widest / median channel span of one output
CLIP_MARGIN = 0.05  # data beyond the tensor's range by more than this fraction of it
WEIGHTED = {"CONV_2D": 0, "FULLY_CONNECTED": 0, "DEPTHWISE_CONV_2D": 3, "TRANSPOSE_CONV": 0}

FIXES = {
    "concat": "normalise each branch before the concatenation (BatchNormalization or a "
              "fixed scale), or split the heads into separate outputs",
    "wide": "clip the activation (ReLU6, or a BatchNormalization before it) so one outlier "
            "channel or sample does not set the scale",
    "few-steps": "fold the factor that widens the range into the weights of the layer "
                 "before it, or normalise so the tensors sharing the scale have similar "
                 "ranges",
    "fixed-scale": "keep its input in a narrow range (normalise the logits, or leave the "
                   "activation to the host on a float output)",
    "per-tensor": "convert with per-channel weights (the TFLiteConverter default); "
                  "--compare per-tensor shows what each layer gains",
    "output-channels": "split the heads: one output per kind of value, each gets its own scale",
    "clipped": "calibrate on more (and more representative) data",
}


def flag(rows: list, graph: tflite_graph.Graph, trace: layer_trace.Trace) -> None:
    """Set flag, reason, fix and severity on the rows a known cause explains."""
    by_name = {r.tensor: r for r in rows}
    spans = float_spans(graph, trace)
    consumers = {}
    for op in graph.ops:
        for t in op.inputs:
            consumers.setdefault(t, []).append(op)
    checks = (concat_reason, wide_reason, few_steps_reason, fixed_scale_reason, per_tensor_reason,
              output_reason, clipped_reason)
    for op in graph.ops:
        for t in op.outputs:
            row = by_name.get(graph.tensors[t].name) if t >= 0 else None
            if row is None or row.flag:
                continue
            for kind, check in zip(KINDS, checks):
                found = check(op, t, graph, trace, spans, consumers)
                if found:
                    row.flag, row.severity, row.reason = kind, found[0], found[1]
                    row.fix = FIXES[kind]
                    break


def float_spans(graph: tflite_graph.Graph, trace: layer_trace.Trace) -> dict:
    """int8 tensor index -> (min, max) the float model's tensor of that name took."""
    return {q: (tr.float_min, tr.float_max) for q, tr in trace.tensors.items()}


def _span(lo_hi) -> float:
    return float(lo_hi[1] - lo_hi[0])


def _fmt(lo_hi) -> str:
    return f"[{lo_hi[0]:.3g}, {lo_hi[1]:.3g}]"


def concat_reason(op, t, graph, trace, spans, consumers) -> Optional[tuple]:
    if op.name != "CONCATENATION":
        return None
    parts = [(graph.tensors[i].name, spans[i]) for i in op.inputs
             if i >= 0 and i in spans and _span(spans[i]) > 0]
    if len(parts) < 2:
        return None
    widest = max(_span(s) for _, s in parts)
    narrowest = min(_span(s) for _, s in parts)
    ratio = widest / narrowest
    if ratio < CONCAT_RATIO:
        return None
    out = graph.tensors[t]
    steps = narrowest / out.scale
    listed = ", ".join(f"{name} {_fmt(s)}" for name, s in parts)
    return ratio, (f"inputs with ranges {ratio:.0f}x apart share one scale {out.scale:.3g} "
                   f"(range {255 * out.scale:.3g}): {listed}; the narrowest keeps "
                   f"{steps:.0f} of 255 steps")


def neighbour_ranges(op, t, graph, consumers) -> tuple:
    """(ranges of the op's quantized non-constant inputs, ranges of its consumers' outputs)."""
    def rng(i):
        x = graph.tensors[i]
        return 255 * x.scale if x.dtype in layer_trace.QUANTIZED and x.scale else None

    before = [rng(i) for i in op.inputs if i >= 0 and not graph.tensors[i].constant]
    after = [rng(o) for c in consumers.get(t, []) if c.name not in FIXED_SCALE
             for o in c.outputs if o >= 0]  # a fixed output scale says nothing of the input
    return [r for r in before if r], [r for r in after if r]


def wide_reason(op, t, graph, trace, spans, consumers) -> Optional[tuple]:
    own = 255 * graph.tensors[t].scale
    before, after = neighbour_ranges(op, t, graph, consumers)
    if not before or not after:
        return None
    ratio = own / max(before + after)
    if ratio < WIDE_RATIO:
        return None
    seen = f"; the float model reaches {_fmt(spans[t])}" if t in spans else ""
    return ratio, (f"range {own:.3g} is {ratio:.0f}x wider than its neighbours' (inputs "
                   f"{', '.join(f'{r:.3g}' for r in before)}; next "
                   f"{', '.join(f'{r:.3g}' for r in after)}){seen}: every other value "
                   "shares the coarse steps")


def few_steps_reason(op, t, graph, trace, spans, consumers) -> Optional[tuple]:
    if t not in spans or _span(spans[t]) <= 0:
        return None
    if any(c.name == "CONCATENATION" for c in consumers.get(t, [])):
        return None  # the concatenation's reason says why
    x = graph.tensors[t]
    steps = _span(spans[t]) / x.scale
    if steps >= FEW_STEPS:
        return None
    return 255 / max(steps, 1.0), (f"its values span {_fmt(spans[t])} but its scale "
                                   f"{x.scale:.3g} (range {255 * x.scale:.3g}) gives them "
                                   f"{steps:.1f} of 255 steps")


def fixed_scale_reason(op, t, graph, trace, spans, consumers) -> Optional[tuple]:
    limit = FIXED_SCALE.get(op.name)
    if limit is None or not op.inputs:
        return None
    x = graph.tensors[op.inputs[0]]
    width = _span(spans[x.index]) if x.index in spans else 255 * x.scale
    if width <= limit:
        return None
    out = graph.tensors[t]
    return width / limit, (f"{op.name} has a fixed output scale {out.scale:.3g}; its input "
                           f"spans {width:.3g} (steps of {x.scale:.3g}), more than the "
                           f"{limit:.0f} it can resolve: the curve is sampled coarsely and "
                           "saturates")


def per_tensor_reason(op, t, graph, trace, spans, consumers) -> Optional[tuple]:
    axis = WEIGHTED.get(op.name)
    if axis is None or len(op.inputs) < 2 or op.inputs[1] < 0:
        return None
    w = graph.tensors[op.inputs[1]]
    if not w.constant or w.dtype not in ("INT8", "UINT8") or scale_count(graph, w.index) != 1:
        return None
    q = w.values("int8" if w.dtype == "INT8" else "uint8").astype(np.int32) - w.zero_point
    q = np.moveaxis(q.reshape(w.shape), axis, 0).reshape(w.shape[axis], -1)
    levels = np.abs(q).max(axis=1)
    if len(levels) < 2 or levels.min() >= WEIGHT_LEVELS:
        return None
    k = int(levels.argmin())
    ratio = float(levels.max()) / max(float(levels.min()), 1.0)
    return ratio, (f"per-tensor weights {w.name}: output channel {k} uses ±{levels.min()} "
                   f"of ±{levels.max()} levels (one scale {w.scale:.3g} for "
                   f"{len(levels)} channels)")


def scale_count(graph: tflite_graph.Graph, index: int) -> int:
    """How many scales tensor `index` has (several: quantized per channel)."""
    import tflite

    model = tflite.Model.GetRootAsModel(graph.path.read_bytes(), 0)
    q = model.Subgraphs(0).Tensors(index).Quantization()
    return q.ScaleLength() if q is not None else 0


def output_reason(op, t, graph, trace, spans, consumers) -> Optional[tuple]:
    tr = trace.tensors.get(t)
    if t not in graph.outputs or tr is None or tr.channel_min is None:
        return None
    width = tr.channel_max - tr.channel_min
    if len(width) < 2 or np.median(width) <= 0:
        return None
    ratio = float(width.max() / np.median(width))
    if ratio < OUTPUT_RATIO:
        return None
    wide = np.flatnonzero(width > np.median(width) * OUTPUT_RATIO / 2)
    return ratio, (f"output channels {', '.join(map(str, wide[:6]))} span up to "
                   f"{width.max():.3g}, the median channel {np.median(width):.3g}: one scale "
                   f"{graph.tensors[t].scale:.3g} for both")


def clipped_reason(op, t, graph, trace, spans, consumers) -> Optional[tuple]:
    if t not in spans:
        return None
    x = graph.tensors[t]
    info = np.iinfo(layer_trace.QUANTIZED[x.dtype])
    lo, hi = (info.min - x.zero_point) * x.scale, (info.max - x.zero_point) * x.scale
    fmin, fmax = spans[t]
    beyond = max(lo - fmin, fmax - hi, 0.0)
    if beyond <= CLIP_MARGIN * (hi - lo):
        return None
    return 1 + beyond / (hi - lo), (f"the data reaches {_fmt(spans[t])}, the tensor holds "
                                    f"[{lo:.3g}, {hi:.3g}]: values beyond are clipped")
