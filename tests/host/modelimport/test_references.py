"""The seeded random reference inputs an import writes: qrun.model.inputs.random_array, bit
for bit what qdeploy.modelimport.references drew before it used that."""

from __future__ import annotations

import numpy as np
from qdeploy.modelimport import references
from qrun.model.tensors import TensorSpec


def drawn_before(inputs, count=references.RANDOM_SAMPLES, seed=references.RANDOM_SEED):
    """random_inputs as it was written before random_array."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in inputs:
        shape = [count, *spec.shape[1:]]
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            arrays.append(rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True))
        elif dtype == np.bool_:
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        else:
            arrays.append(rng.random(shape).astype(dtype))
    return arrays


def test_random_inputs_are_the_arrays_they_were():
    inputs = [TensorSpec([1, 28, 28, 1], "uint8"), TensorSpec([1, 4], "int8"),
              TensorSpec([1, 3], "float32"), TensorSpec([1, 2], "int32"),
              TensorSpec([1, 5], "bool")]
    got, want = references.random_inputs(inputs), drawn_before(inputs)
    assert [(a.shape, a.dtype) for a in got] == [(w.shape, w.dtype) for w in want]
    assert all(a.tobytes() == w.tobytes() for a, w in zip(got, want))
    assert got[0].shape == (references.RANDOM_SAMPLES, 28, 28, 1)
