"""Read a `.tflite` flatbuffer into small dataclasses, without TensorFlow.

Uses the `tflite` package (the generated flatbuffer schema), so the preflight works
wherever qdeploy's host extra installs, including machines without TensorFlow.
Only the main subgraph is read: that is what the Edge TPU compiler maps.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from qdeploy.errors import UserError

FILE_IDENTIFIER = b"TFL3"

_PARSE_ERRORS = (IndexError, struct.error, ValueError, TypeError, AttributeError,
                 UnicodeDecodeError, OverflowError)


@dataclass(frozen=True)
class Tensor:
    """One tensor of the graph. `data` is set for constants (weights, shapes, axes)."""

    index: int
    name: str
    dtype: str  # TFLite TensorType name: "UINT8", "INT8", "FLOAT32", ...
    shape: tuple
    shape_signature: tuple  # -1 marks a dynamic dimension; equals `shape` when static
    data: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    scale: float = 0.0
    zero_point: int = 0
    variable: bool = False  # state kept between invocations (an LSTM's hidden and cell state)

    @property
    def constant(self) -> bool:
        return self.data is not None

    @property
    def dynamic(self) -> bool:
        """Any -1 in the shape or its signature (a dynamic batch included)."""
        return any(d < 0 for d in self.shape_signature) or any(d < 0 for d in self.shape)

    @property
    def dynamic_beyond_batch(self) -> bool:
        """A -1 in the shape itself, or in the signature past the batch dimension: a size
        that is not known before run time. A batch of -1 over a static shape is not."""
        if any(d < 0 for d in self.shape):
            return True
        signature = self.shape_signature
        return any(d < 0 for d in (signature[1:] if len(signature) > 1 else signature))

    def values(self, dtype: str = "int32") -> np.ndarray:
        """The constant's raw bytes read as `dtype` (e.g. an axis list or a resize size)."""
        if self.data is None:
            raise ValueError(f"tensor {self.name} is not constant")
        return np.frombuffer(self.data.tobytes(), dtype=dtype)


@dataclass(frozen=True)
class Op:
    """One operator: its builtin name (or custom code), version, tensors and options."""

    index: int
    name: str
    version: int
    inputs: tuple  # tensor indices; -1 for an omitted optional input
    outputs: tuple
    options: dict = field(default_factory=dict, compare=False)
    custom: bool = False


@dataclass(frozen=True)
class Graph:
    """The main subgraph of a model: operators in execution order and their tensors."""

    path: Path
    ops: tuple
    tensors: tuple
    inputs: tuple
    outputs: tuple
    subgraph_count: int = 1

    def tensor(self, index: int) -> Optional[Tensor]:
        return self.tensors[index] if index >= 0 else None


def _enum_names(enum_class) -> dict:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_")}


def load(path: Path) -> Graph:
    """Read `path` as a TFLite model; a UserError names what is wrong with a bad file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; pass a .tflite model file")
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a .tflite model file")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise UserError(f"{path} is not a TFLite model (no 'TFL3' flatbuffer identifier); "
                        "pass the .tflite file written by qdeploy convert")
    try:
        return _read(path, data)
    except _PARSE_ERRORS as exc:
        raise UserError(f"{path} is truncated or corrupt: its flatbuffer cannot be read "
                        f"({type(exc).__name__}); copy or convert it again") from None


def _read(path: Path, data: bytes) -> Graph:
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator
    from tflite.TensorType import TensorType

    op_names = _enum_names(BuiltinOperator)
    type_names = _enum_names(TensorType)
    model = tflite.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() < 1:
        raise ValueError("the model has no subgraph")
    graph = model.Subgraphs(0)
    buffers = [_buffer_data(model.Buffers(i), data) for i in range(model.BuffersLength())]
    tensors = tuple(_tensor(graph.Tensors(i), i, buffers, type_names)
                    for i in range(graph.TensorsLength()))
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = op_names.get(builtin, f"BUILTIN_{builtin}")
        custom = name == "CUSTOM"
        if custom and code.CustomCode():
            name = code.CustomCode().decode("utf-8")
        inputs = tuple(int(op.Inputs(j)) for j in range(op.InputsLength()))
        outputs = tuple(int(op.Outputs(j)) for j in range(op.OutputsLength()))
        for t in inputs + outputs:
            if t >= len(tensors):
                raise IndexError(f"op {i} refers to tensor {t} of {len(tensors)}")
        ops.append(Op(index=i, name=name, version=max(1, code.Version()), inputs=inputs,
                      outputs=outputs, options=_options(name, op), custom=custom))
    return Graph(path=path, ops=tuple(ops), tensors=tensors,
                 inputs=tuple(int(graph.Inputs(j)) for j in range(graph.InputsLength())),
                 outputs=tuple(int(graph.Outputs(j)) for j in range(graph.OutputsLength())),
                 subgraph_count=model.SubgraphsLength())


def _buffer_data(buffer, data: bytes) -> Optional[np.ndarray]:
    """A buffer's bytes, or None when it is empty (a non-constant tensor)."""
    if buffer is None:
        return None
    offset, size = buffer.Offset(), buffer.Size()
    if offset > 1:  # large models keep buffers after the flatbuffer
        if offset + size > len(data):
            raise IndexError("buffer data runs past the end of the file")
        return np.frombuffer(data, dtype=np.uint8, count=size, offset=offset)
    length = buffer.DataLength()
    if length == 0:
        return None
    array = buffer.DataAsNumpy()
    if len(array) != length:
        raise IndexError("buffer data runs past the end of the file")
    return array


def _tensor(t, index: int, buffers: list, type_names: dict) -> Tensor:
    shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    signature = (tuple(int(d) for d in t.ShapeSignatureAsNumpy())
                 if t.ShapeSignatureLength() else shape)
    buffer = t.Buffer()
    if buffer == 0 and not buffers:  # buffer 0 is the empty sentinel, may be omitted
        buffers = [None]
    if buffer >= len(buffers):
        raise IndexError(f"tensor {index} refers to buffer {buffer} of {len(buffers)}")
    scale, zero_point = 0.0, 0
    q = t.Quantization()
    if q is not None and q.ScaleLength():
        scale = float(q.Scale(0))
        zero_point = int(q.ZeroPoint(0)) if q.ZeroPointLength() else 0
    return Tensor(index=index, name=(t.Name() or b"").decode("utf-8", "replace"),
                  dtype=type_names.get(t.Type(), f"TYPE_{t.Type()}"), shape=shape,
                  shape_signature=signature, data=buffers[buffer], scale=scale,
                  zero_point=zero_point, variable=bool(t.IsVariable()))


def _options(name: str, op) -> dict:
    """The builtin options the preflight's limits look at, as a plain dict."""
    table = op.BuiltinOptions()
    if table is None:
        return {}
    reader = _OPTION_READERS.get(name)
    return reader(table) if reader else {}


def _init(cls, table):
    obj = cls()
    obj.Init(table.Bytes, table.Pos)
    return obj


def _activation(cls):
    return lambda t: {"fused_activation": _init(cls, t).FusedActivationFunction()}


def _fully_connected(t) -> dict:
    from tflite.FullyConnectedOptions import FullyConnectedOptions
    o = _init(FullyConnectedOptions, t)
    return {"fused_activation": o.FusedActivationFunction(), "weights_format": o.WeightsFormat()}


def _resize(cls):
    def read(t):
        o = _init(cls, t)
        return {"align_corners": bool(o.AlignCorners()),
                "half_pixel_centers": bool(o.HalfPixelCenters())}
    return read


def _strided_slice(t) -> dict:
    from tflite.StridedSliceOptions import StridedSliceOptions
    o = _init(StridedSliceOptions, t)
    return {"ellipsis_mask": o.EllipsisMask(), "new_axis_mask": o.NewAxisMask()}


def _squeeze(t) -> dict:
    from tflite.SqueezeOptions import SqueezeOptions
    o = _init(SqueezeOptions, t)
    dims = [int(d) for d in o.SqueezeDimsAsNumpy()] if o.SqueezeDimsLength() else []
    return {"squeeze_dims": dims}


def _convolution(cls):
    def read(t):
        o = _init(cls, t)
        return {"fused_activation": o.FusedActivationFunction(),
                "dilation_h": o.DilationHFactor(), "dilation_w": o.DilationWFactor()}
    return read


def _pack(t) -> dict:
    from tflite.PackOptions import PackOptions
    return {"axis": _init(PackOptions, t).Axis()}


def _option_readers() -> dict:
    from tflite.ConcatenationOptions import ConcatenationOptions
    from tflite.Conv2DOptions import Conv2DOptions
    from tflite.DepthwiseConv2DOptions import DepthwiseConv2DOptions
    from tflite.Pool2DOptions import Pool2DOptions
    from tflite.ResizeBilinearOptions import ResizeBilinearOptions
    from tflite.ResizeNearestNeighborOptions import ResizeNearestNeighborOptions

    return {
        "AVERAGE_POOL_2D": _activation(Pool2DOptions),
        "MAX_POOL_2D": _activation(Pool2DOptions),
        "CONCATENATION": _activation(ConcatenationOptions),
        "FULLY_CONNECTED": _fully_connected,
        "RESIZE_BILINEAR": _resize(ResizeBilinearOptions),
        "RESIZE_NEAREST_NEIGHBOR": _resize(ResizeNearestNeighborOptions),
        "STRIDED_SLICE": _strided_slice,
        "SQUEEZE": _squeeze,
        "CONV_2D": _convolution(Conv2DOptions),
        "DEPTHWISE_CONV_2D": _convolution(DepthwiseConv2DOptions),
        "PACK": _pack,
    }


_OPTION_READERS = _option_readers()
