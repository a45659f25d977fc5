"""`TensorSpec`: shape, dtype and quantization of a model input or output.

The manifest stores one for the input and one for the output; `from_details` reads
one from the TFLite runtime's details dict (`get_input_details()[i]`), so the
unpacking of ``details["quantization"]`` is written once. Kept apart from
qrun.manifest (which re-exports it) so classifying a bare model file does not load
the manifest module.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TensorSpec:
    """Shape, dtype and quantization of a model input or output."""

    shape: list
    dtype: str  # numpy's name: "uint8", "int8", "float32", ...
    scale: float = 0.0  # 0.0: not quantized
    zero_point: int = 0

    @classmethod
    def from_details(cls, details: dict) -> "TensorSpec":
        """The spec of a tensor from the runtime's details dict; scale 0.0 when not quantized."""
        import numpy as np

        scale, zero_point = details.get("quantization", (0.0, 0))
        return cls([int(d) for d in details["shape"]], np.dtype(details["dtype"]).name,
                   float(scale), int(zero_point))
