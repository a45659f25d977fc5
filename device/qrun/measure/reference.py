"""Reference inputs for verify: the files a deployment keeps under the role "reference".

Two forms, told apart by the suffix:
- `reference_inputs.npy` (what `qdeploy convert` writes, and `qdeploy import` for a
  single-image model): one array, [N, *input 0's shape without batch]. uint8 values are
  pixels, fed through the manifest's preprocessing as classify feeds an image; float
  values are model inputs, quantized when the input is an integer tensor.
- `reference_inputs.npz` (several inputs, or inputs that are not images): one array per
  model input, named `input_0`, `input_1`, ... in the interpreter's order, each
  [N, *that input's shape without batch] in the input's own dtype, fed as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from qrun.errors import UserError

NPY_NAME = "reference_inputs.npy"
NPZ_NAME = "reference_inputs.npz"
RERUN = "re-run qdeploy convert or qdeploy import (they store reference inputs) and push again"


@dataclass
class Reference:
    """The samples of every input: `arrays[i]` is input i's [N, ...]; `raw` for an .npz."""

    arrays: list
    raw: bool
    path: Optional[Path] = None  # the file it was read from, for messages

    @property
    def count(self) -> int:
        return len(self.arrays[0])

    def sample(self, n: int) -> list:
        """The n-th sample of every input."""
        return [a[n] for a in self.arrays]


def key(position: int) -> str:
    return f"input_{position}"


def load(path: Path) -> Reference:
    """Read a reference file of either form; a UserError for one that cannot be used."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path} is not a readable .npy/.npz array ({exc.__class__.__name__}); "
                        f"{RERUN}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        arrays, raw = npz_arrays(data, path), True
    else:
        arrays, raw = [data], False
    counts = {len(a) if a.ndim else 0 for a in arrays}
    if counts == {0} or len(counts) != 1:
        raise UserError(f"{path} holds no samples, or a different number per input; {RERUN}")
    return Reference(arrays, raw, path)


def npz_arrays(data, path: Path) -> list:
    """The arrays input_0, input_1, ... of an open .npz, in order (and the file closed)."""
    with data:
        names = [key(i) for i in range(len(data.files))]
        if sorted(data.files) != sorted(names):
            raise UserError(f"{path} holds arrays {sorted(data.files)}; it needs input_0, "
                            f"input_1, ... one per model input; {RERUN}")
        try:
            return [data[name] for name in names]
        except (OSError, ValueError, EOFError) as exc:
            raise UserError(f"{path} has an array that cannot be read without pickle "
                            f"({exc.__class__.__name__}); {RERUN}") from None


def check(reference: Reference, inputs: list) -> None:
    """Refuse reference inputs that do not fit the model's `inputs` (TensorSpec, in order).

    An .npy feeds input 0 of a single-input model (its values are converted as verify
    says); an .npz needs one array per input, each of that input's dtype and
    [N, *shape without batch] (or [N, *shape]), since its values are fed as they are.
    """
    where = reference.path or "the reference inputs"
    if not reference.raw:
        if len(inputs) != 1:
            raise UserError(f"{where} is an .npy (samples of one input), but the model has "
                            f"{len(inputs)} inputs; give an .npz with {names_of(inputs)} "
                            f"(one [N, ...] array per input), or {RERUN}")
        return
    if len(reference.arrays) != len(inputs):
        raise UserError(f"{where} holds {len(reference.arrays)} input array(s), the model has "
                        f"{len(inputs)} inputs; it needs {names_of(inputs)}; {RERUN}")
    for i, (array, spec) in enumerate(zip(reference.arrays, inputs)):
        wanted = f"{spec.dtype} [N, {', '.join(map(str, spec.shape[1:]))}]"
        fits = list(array.shape[1:]) in (list(spec.shape), list(spec.shape[1:]))
        if array.dtype.name != spec.dtype or not fits:
            raise UserError(f"{where}: {key(i)} is {array.dtype.name} {list(array.shape)}, "
                            f"model input {i} ('{spec.name}') takes {wanted}; {RERUN}")


def names_of(inputs: list) -> str:
    return ", ".join(key(i) for i in range(len(inputs)))


def save_npz(path: Path, arrays: list) -> Path:
    """Write the .npz form (one [N, ...] array per input, in order); returns the path."""
    with open(path, "wb") as f:
        np.savez(f, **{key(i): np.asarray(a) for i, a in enumerate(arrays)})
    return Path(path)
