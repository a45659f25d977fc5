"""`TensorSpec`: name, position, shape, dtype and quantization of a model input or output.

The manifest stores one per input and per output, in the interpreter's order;
`from_details` reads one from the TFLite runtime's details dict
(`get_input_details()[i]`), so the unpacking of ``details["quantization"]`` and
``details["quantization_parameters"]`` is written once. Kept apart from qrun.model.manifest
(which re-exports it) so classifying a bare model file does not load the manifest module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class PerAxis:
    """Per-axis (per-channel) quantization: one scale and zero point along `axis`."""

    axis: int
    scales: tuple
    zero_points: tuple

    def to_dict(self) -> dict:
        return {"axis": self.axis, "scales": list(self.scales),
                "zero_points": list(self.zero_points)}


@dataclass
class TensorSpec:
    """Shape, dtype and quantization of a model input or output, and which one it is.

    Two specs are equal when shape, dtype and quantization are: `name` and `index`
    say where the tensor sits in one file, and a compiled twin may number it otherwise.
    """

    shape: list
    dtype: str  # numpy's name: "uint8", "int8", "float32", ...
    scale: float = 0.0  # 0.0: not quantized (per-tensor; per_axis holds per-channel ones)
    zero_point: int = 0
    name: str = field(default="", compare=False)  # the tensor's name in the model
    index: Optional[int] = field(default=None, compare=False)  # its tensor index
    per_axis: Optional[PerAxis] = None

    @property
    def quantized(self) -> bool:
        return bool(self.scale) or self.per_axis is not None

    def to_dict(self) -> dict:
        """The manifest's JSON object; per_axis only when the tensor has it."""
        d = {"name": self.name, "index": self.index, "shape": list(self.shape),
             "dtype": self.dtype, "scale": self.scale, "zero_point": self.zero_point}
        if self.per_axis is not None:
            d["per_axis"] = self.per_axis.to_dict()
        return d

    @classmethod
    def from_details(cls, details: dict) -> "TensorSpec":
        """The spec of a tensor from the runtime's details dict; scale 0.0 when not quantized."""
        import numpy as np

        scale, zero_point = details.get("quantization", (0.0, 0))
        params = details.get("quantization_parameters") or {}
        scales = [float(s) for s in np.asarray(params.get("scales", [])).reshape(-1)]
        per_axis = None
        if len(scales) > 1:
            zero_points = [int(z) for z in np.asarray(params.get("zero_points", [])).reshape(-1)]
            per_axis = PerAxis(int(params.get("quantized_dimension", 0)), tuple(scales),
                               tuple(zero_points))
        index = details.get("index")
        return cls([int(d) for d in details["shape"]], np.dtype(details["dtype"]).name,
                   float(scale), int(zero_point), name=str(details.get("name", "")),
                   index=None if index is None else int(index), per_axis=per_axis)
