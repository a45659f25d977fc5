"""Run the float and the int8 model side by side with every tensor kept, and measure how far
each int8 tensor is from the float tensor of the same name.

Both interpreters are made with `experimental_preserve_all_tensors=True` (the TFLite
debugging option), fed the same samples, and every quantized tensor an op of the int8
model writes is matched to the float model's tensor by name (TFLite keeps the source
graph's names; where the int8 model adds a requantizing op behind an output, the
converter's numeric suffix is dropped to find the float twin). For each matched tensor
the trace keeps, over all samples:

- the cumulative error, `dequantize(int8) - float`: what the int8 model carries at that
  point against the float model, every earlier layer's loss included;
- the output-quantization error, `dequantize(quantize(float)) - float` with the int8
  tensor's own scale and zero point: what that tensor alone loses (rounding, clipping);
- the float values' range, and per channel (last axis) for the model's outputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qdeploy.modelfile import tflite_graph
from qrun.errors import UserError
from qrun.model.preprocess import dequantize
from qrun.model.runtime import announcements_dropped, interpreter_module

QUANTIZED = {"INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16}
CHUNK_ELEMENTS = 1 << 22  # values held before they are added up (16 MiB of float32)


@dataclass
class ErrorStats:
    """Running sums of one error (a difference array per sample)."""

    count: int = 0
    total: float = 0.0
    squares: float = 0.0
    max_abs: float = 0.0

    def add(self, d: np.ndarray) -> None:
        d = d.ravel()  # float32: the sums are accurate to ~1e-6 relative, plenty here
        if not d.size:
            return
        self.count += d.size
        self.total += float(d.sum(dtype=np.float64))
        self.squares += float(np.dot(d, d))
        self.max_abs = max(self.max_abs, float(d.max()), -float(d.min()))

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def rmse(self) -> float:
        return float(np.sqrt(self.squares / self.count)) if self.count else 0.0


@dataclass
class TensorTrace:
    """What the trace saw at one int8 tensor matched to a float one."""

    int8_index: int
    float_index: int
    name: str
    cumulative: ErrorStats = field(default_factory=ErrorStats)
    requantized: ErrorStats = field(default_factory=ErrorStats)
    float_min: float = np.inf
    float_max: float = -np.inf
    channel_min: Optional[np.ndarray] = None  # model outputs: per last-axis channel
    channel_max: Optional[np.ndarray] = None


@dataclass
class Trace:
    """The matched tensors by int8 tensor index, and the counts the report states."""

    tensors: dict  # int8 tensor index -> TensorTrace
    int8_quantized: int  # quantized tensors written by the int8 model's ops
    float_tensors: int  # tensors written by the float model's ops
    samples: int


def preserving_interpreter(path: Path):
    """An interpreter that keeps every intermediate tensor (for debugging, as TF says)."""
    module = interpreter_module()
    try:
        with announcements_dropped(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "intended for debugging purposes": it is
            interpreter = module.Interpreter(model_path=str(path),
                                             experimental_preserve_all_tensors=True)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"{path} cannot be loaded with all tensors kept: "
                        f"{str(exc).splitlines()[0]}") from None
    return interpreter


def written_tensors(graph: tflite_graph.Graph) -> list:
    """(op, tensor) for every tensor an op writes, in execution order."""
    return [(op, graph.tensors[t]) for op in graph.ops for t in op.outputs if t >= 0]


def match_by_name(int8_graph: tflite_graph.Graph, float_graph: tflite_graph.Graph) -> dict:
    """int8 tensor index -> float tensor index, for the int8 model's quantized op outputs
    whose name (or that name without the converter's trailing digit) a float op writes
    with the same shape."""
    float_by_name = {t.name: t for _, t in written_tensors(float_graph)}
    pairs = {}
    for _, t in written_tensors(int8_graph):
        if t.dtype not in QUANTIZED or t.scale == 0:
            continue
        for name in (t.name, t.name[:-1] if t.name[-1:].isdigit() else None):
            twin = float_by_name.get(name) if name else None
            if twin is not None and tuple(twin.shape) == tuple(t.shape):
                pairs[t.index] = twin.index
                break
    return pairs


def requantized(f: np.ndarray, t: tflite_graph.Tensor) -> np.ndarray:
    """`f` quantized with the tensor's scale and zero point, as TFLite's QUANTIZE does it
    (qrun.model.preprocess.quantize: rounded half to even, clipped), and dequantized; in
    float32 throughout (the levels are exact there)."""
    info = np.iinfo(QUANTIZED[t.dtype])
    inverse = np.float32(1) / np.float32(t.scale)
    q = np.clip(np.rint(f * inverse) + np.float32(t.zero_point), info.min, info.max)
    return (q - np.float32(t.zero_point)) * np.float32(t.scale)


def add_up(tr: TensorTrace, t: tflite_graph.Tensor, floats: list, ints: list,
           output: bool) -> None:
    """Add the held samples of one tensor to its trace."""
    if not floats:
        return
    f = np.stack(floats).astype(np.float32, copy=False)
    tr.cumulative.add(dequantize(np.stack(ints), t.scale, t.zero_point) - f)
    tr.requantized.add(requantized(f, t) - f)
    tr.float_min = min(tr.float_min, float(f.min()))
    tr.float_max = max(tr.float_max, float(f.max()))
    if output and f.ndim >= 2:
        flat = f.reshape(-1, f.shape[-1])
        lo, hi = flat.min(axis=0), flat.max(axis=0)
        tr.channel_min = lo if tr.channel_min is None else np.minimum(tr.channel_min, lo)
        tr.channel_max = hi if tr.channel_max is None else np.maximum(tr.channel_max, hi)


def run(float_path: Path, int8_path: Path, feed: Callable, count: int,
        progress: Optional[Callable[[int, int], None]] = None) -> Trace:
    """Trace `count` samples; `feed(interpreter, path, i)` sets sample i's inputs."""
    int8_graph, float_graph = tflite_graph.load(int8_path), tflite_graph.load(float_path)
    pairs = match_by_name(int8_graph, float_graph)
    quantized = sum(1 for _, t in written_tensors(int8_graph)
                    if t.dtype in QUANTIZED and t.scale)
    float_it, int8_it = preserving_interpreter(float_path), preserving_interpreter(int8_path)
    outputs = set(int8_graph.outputs)
    traces = {q: TensorTrace(q, f, int8_graph.tensors[q].name) for q, f in pairs.items()}
    held = {q: ([], []) for q in traces}  # float and int8 values not yet added up
    elements = 0
    for i in range(count):
        feed(float_it, float_path, i)
        feed(int8_it, int8_path, i)
        float_it.invoke()
        int8_it.invoke()
        for q, tr in traces.items():
            held[q][0].append(float_it.get_tensor(tr.float_index))
            held[q][1].append(int8_it.get_tensor(q))
            elements += held[q][0][-1].size
        if elements >= CHUNK_ELEMENTS or i == count - 1:  # many small tensors: one numpy pass
            for q, tr in traces.items():
                add_up(tr, int8_graph.tensors[q], *held[q], q in outputs)
                held[q] = ([], [])
            elements = 0
        if progress:
            progress(i + 1, count)
    return Trace(traces, quantized, len(written_tensors(float_graph)), count)
