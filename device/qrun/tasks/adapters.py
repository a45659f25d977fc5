"""Small functions over an interpreter: input geometry, feeding an image, reading classes.

Modelled on pycoral's `adapters/common.py` and `adapters/classify.py`, without
pycoral: each function takes the interpreter (from qrun.model.runtime) and does one thing.
Ties between equal scores are broken by the lower class id, so results never
depend on sort stability or the runtime's kernels. An output is named by its
position in the interpreter's outputs (what the manifest's `task.outputs` records),
0 by default: a single-output classifier's scores.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from qrun.model import preprocess
from qrun.errors import UserError
from qrun.model.tensors import TensorSpec


class Class(NamedTuple):
    """One classification result: class id, its label ("" if none) and its score."""

    id: int
    label: str
    score: float


def input_details(interpreter, index: int = 0) -> dict:
    """The runtime's details dict of input tensor `index`."""
    return interpreter.get_input_details()[index]


def output_details(interpreter, position: int = 0) -> dict:
    """The runtime's details dict of the output at `position` (0: the first)."""
    return interpreter.get_output_details()[position]


def input_size(interpreter) -> tuple[int, int]:
    """(width, height) the image input wants, as PIL's resize takes it."""
    height, width, _ = preprocess.image_geometry(input_details(interpreter)["shape"])
    return width, height


def prepare_image(interpreter, image_path, pre: preprocess.Preprocess) -> np.ndarray:
    """Read `image_path` and turn it into a batch of one for input 0 (LANCZOS, Coral's rules)."""
    spec = TensorSpec.from_details(input_details(interpreter))
    pixels = preprocess.load_image(image_path, spec.shape, pre)
    return preprocess.to_input(pixels, pre, spec.dtype, spec.scale, spec.zero_point)[None, ...]


def set_input(interpreter, data: np.ndarray) -> None:
    """Copy `data` (already of the input's dtype and shape) into input 0."""
    interpreter.set_tensor(input_details(interpreter)["index"], data)


def output_scores(interpreter, position: int = 0) -> np.ndarray:
    """The output at `position` as a flat float vector, dequantized ``scale * (q - zero_point)``."""
    details = output_details(interpreter, position)
    raw = interpreter.get_tensor(details["index"])
    check_scores_shape(raw.shape)
    spec = TensorSpec.from_details(details)
    return preprocess.dequantize(raw.reshape(-1), spec.scale, spec.zero_point)


def check_scores_shape(shape) -> None:
    """Refuse an output that is not one score per class ([1, N], [N], [1, 1, N], ...)."""
    if sum(1 for d in shape if d != 1) > 1:
        raise UserError(f"the model's output has shape {[int(d) for d in shape]}, not one "
                        "score per class; classify needs a classification model (output [1, N])")


def num_classes(interpreter, position: int = 0) -> int:
    """How many scores the output at `position` holds."""
    return int(np.prod(output_details(interpreter, position)["shape"]))


def get_classes_from_scores(scores: np.ndarray, top_k: int = 1, threshold: float = -np.inf,
                            labels: Optional[dict] = None) -> list[Class]:
    """The `top_k` classes scoring at least `threshold`, best first, ties by lower id.

    Args:
      scores: one float per class.
      top_k: how many to return at most.
      threshold: minimum score to keep.
      labels: id -> label; ids without a label get "".
    Returns:
      A list of Class.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    ids = np.arange(scores.size)
    order = np.lexsort((ids, -scores))  # last key first: score descending, then id ascending
    labels = labels or {}
    picked = [i for i in order[:max(int(top_k), 0)] if scores[i] >= threshold]
    return [Class(int(i), labels.get(int(i), ""), float(scores[i])) for i in picked]


def get_classes(interpreter, top_k: int = 1, threshold: float = -np.inf,
                labels: Optional[dict] = None, position: int = 0) -> list[Class]:
    """The classes of the last invoke, read from the output at `position`, as
    `get_classes_from_scores` orders them."""
    return get_classes_from_scores(output_scores(interpreter, position), top_k, threshold,
                                   labels)
