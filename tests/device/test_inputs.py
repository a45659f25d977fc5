"""qrun.model.inputs.random_array: the one seeded random-input maker, bit for bit what qrun
bench's fill_inputs and qdeploy import's random reference inputs drew before it."""

from __future__ import annotations

import numpy as np
import pytest

from qrun.model.inputs import random_array

DTYPES = ("uint8", "int8", "int16", "int32", "int64", "uint64", "bool", "float32", "float16")


def drawn_before(rng, shape, dtype):
    """fill_inputs' own drawing, as it was written before random_array."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    return rng.random(size=shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_array_draws_what_fill_inputs_drew(dtype):
    shape = np.array([1, 4, 3], np.int32)  # as the interpreter's details give it
    mine, theirs = np.random.default_rng(0), np.random.default_rng(0)
    for _ in range(2):  # and leaves the Generator where the old code left it
        got, want = random_array(shape, dtype, mine), drawn_before(theirs, shape, dtype)
        assert got.dtype == np.dtype(dtype) and got.shape == (1, 4, 3)
        assert got.tobytes() == want.tobytes()


def test_random_array_covers_the_dtype():
    rng = np.random.default_rng(0)
    small = random_array([4096], "int8", rng)
    assert (small.min(), small.max()) == (-128, 127)  # both ends included
    unit = random_array([4096], "float32", rng)
    assert 0.0 <= unit.min() and unit.max() < 1.0
    assert set(np.unique(random_array([64], np.bool_, rng))) == {False, True}


class Interpreter:
    """The part of a TFLite interpreter fill_inputs uses."""

    def __init__(self, details):
        self.details, self.tensors = details, {}

    def get_input_details(self):
        return self.details

    def set_tensor(self, index, value):
        self.tensors[index] = value


def test_fill_inputs_draws_every_input_from_one_generator_of_seed_0():
    from qrun.measure.bench import fill_inputs

    details = [{"index": 3, "shape": np.array([1, 8], np.int32), "dtype": np.float32},
               {"index": 1, "shape": np.array([1, 2, 2], np.int32), "dtype": np.uint8}]
    interpreter = Interpreter(details)
    fill_inputs(interpreter)
    rng = np.random.default_rng(0)
    for d in details:
        want = drawn_before(rng, d["shape"], d["dtype"])
        assert interpreter.tensors[d["index"]].tobytes() == want.tobytes()
