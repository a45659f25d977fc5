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

    @property
    def count(self) -> int:
        return int(len(self.arrays[0]))

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
        with data:
            names = [key(i) for i in range(len(data.files))]
            if sorted(data.files) != sorted(names):
                raise UserError(f"{path} holds arrays {sorted(data.files)}; it needs input_0, "
                                f"input_1, ... one per model input; {RERUN}")
            arrays = [data[name] for name in names]
        raw = True
    else:
        arrays, raw = [data], False
    counts = {len(a) if a.ndim else 0 for a in arrays}
    if counts == {0} or len(counts) != 1:
        raise UserError(f"{path} holds no samples, or a different number per input; {RERUN}")
    return Reference(arrays, raw)


def save_npz(path: Path, arrays: list) -> Path:
    """Write the .npz form (one [N, ...] array per input, in order); returns the path."""
    with open(path, "wb") as f:
        np.savez(f, **{key(i): np.asarray(a) for i, a in enumerate(arrays)})
    return Path(path)
