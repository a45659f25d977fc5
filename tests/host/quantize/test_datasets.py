"""Bad calibration and evaluation data: one UserError line naming the file, never a traceback.

These call `qdeploy.quantize.datasets` directly on tiny arrays: no model, no TensorFlow.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from qdeploy.quantize import datasets
from qrun.errors import UserError
from qrun.model.preprocess import Preprocess

SHAPE = (1, 4, 4, 1)
PRE = Preprocess()


def pixels(n=3):
    return np.arange(n * 16, dtype=np.uint8).reshape(n, 4, 4, 1)


def labelled(path, **kw):
    return datasets.load_labelled(path, SHAPE, PRE, **kw)


@pytest.mark.parametrize("y,fragment", [
    (np.eye(3, dtype=np.int64), "shape (3, 3)"),  # one-hot: used to broadcast to 0.667
    (np.zeros((3, 1), np.int64), "shape (3, 1)"),
    (np.array(["cat", "dog", "cat"]), "text"),
    (np.array([0.0, 1.5, 2.0]), "not whole numbers"),
    (np.array([0, -1, 2]), "-1"),
])
def test_labels_must_be_one_class_index_per_sample(tmp_path, y, fragment):
    np.savez(tmp_path / "d.npz", x=pixels(3), y=y)
    with pytest.raises(UserError) as err:
        labelled(tmp_path / "d.npz")
    assert fragment in str(err.value) and "d.npz" in str(err.value)
    assert "argmax" in str(err.value)


def test_one_hot_labels_with_other_count_are_refused_not_a_traceback(tmp_path):
    np.savez(tmp_path / "d.npz", x=pixels(5), y=np.eye(3, dtype=np.int64)[[0, 1, 2, 0, 1]])
    with pytest.raises(UserError, match=r"shape \(5, 3\)"):
        labelled(tmp_path / "d.npz")


def test_whole_float_labels_are_class_indices(tmp_path):
    np.savez(tmp_path / "d.npz", x=pixels(3), y=np.array([2.0, 0.0, 1.0]))
    samples = labelled(tmp_path / "d.npz")
    assert samples.labels.dtype == np.int64 and samples.labels.tolist() == [2, 0, 1]


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_below_one_is_refused(tmp_path, limit):
    np.savez(tmp_path / "d.npz", x=pixels(5), y=np.arange(5))
    with pytest.raises(UserError, match="--limit must be at least 1"):
        labelled(tmp_path / "d.npz", limit=limit)
    assert len(labelled(tmp_path / "d.npz", limit=2)) == 2


def test_non_finite_float_calibration_data_is_refused_naming_the_file(tmp_path):
    x = np.random.default_rng(0).random((4, 4, 4, 1), dtype=np.float32)
    x[1, 0, 0, 0] = np.nan
    x[3, 2, 1, 0] = np.inf
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(UserError, match=r"nan\.npy holds NaN or infinite values \(2 of 4"):
        datasets.load_calibration(tmp_path / "nan.npy", SHAPE, PRE)


def test_corrupt_and_pickled_arrays_are_one_line(tmp_path):
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "obj.npz", x=pixels(2), y=np.array([{"a": 1}, None], dtype=object))
    for name in ("corrupt.npy", "corrupt.npz", "obj.npy"):
        with pytest.raises(UserError, match="is not a readable .npy/.npz array"):
            datasets.load_calibration(tmp_path / name, SHAPE, PRE)
    with pytest.raises(UserError, match=r"obj\.npz is not a readable .npy/.npz array"):
        labelled(tmp_path / "obj.npz")


def test_corrupt_gzip_idx_is_one_line(tmp_path):
    good = gzip.compress(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02\x00\x00\x00\x04" * 1
                         + b"\x00\x00\x00\x04" + bytes(32))
    bad = good[:12] + bytes(b ^ 0x5A for b in good[12:-8]) + good[-8:]
    path = tmp_path / "corrupt-images-idx3-ubyte.gz"
    path.write_bytes(bad)
    with pytest.raises(UserError, match="cannot read idx file .*corrupt-images"):
        datasets.read_idx(path)
