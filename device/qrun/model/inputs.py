"""Seeded random model inputs: one array of a shape and dtype, drawn from a numpy Generator.

What `qrun bench` feeds (qrun.measure.bench.fill_inputs, as TFLite's benchmark_model does)
and the reference inputs `qdeploy import` writes when none are given
(qdeploy.modelimport.references.random_inputs). Each caller owns its Generator and seed and
draws its inputs in order from it, so the arrays depend on the seed and on what was drawn
before; this module only says how one array is drawn.
"""

from __future__ import annotations

import numpy as np


def random_array(shape, dtype, rng: np.random.Generator) -> np.ndarray:
    """Random values of `dtype` (a numpy dtype or its name) in `shape`: integers over the
    dtype's whole range (both ends included), booleans, floats in [0, 1)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    return rng.random(size=shape).astype(dtype)
