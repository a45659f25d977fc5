"""`qdeploy evaluate` and the data readers it shares with convert."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from PIL import Image

from qdeploy.quantize import datasets
from qdeploy.quantize.evaluate import evaluate, score
from qrun.errors import UserError
from qrun.model.preprocess import Preprocess

pytestmark = pytest.mark.slow


def write_idx(path, array):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_score_arithmetic():
    labels = np.array([0, 1, 2, 3])
    e = score(np.array([0, 1, 2, 0]), np.array([0, 1, 1, 0]), labels, 400, 100, "x")
    assert e.float_accuracy == 0.75 and e.int8_accuracy == 0.5
    assert e.delta_pp == -25.0
    assert e.agreement == 0.75
    assert e.size_ratio == 4.0


def test_evaluate_on_three_data_layouts_agrees(converted_demo, demo_split, tmp_path):
    """An image-folder tree, an .npz and an idx pair of the same 40 images give one answer."""
    picks = np.concatenate([np.flatnonzero(demo_split.y_heldout == d)[:4] for d in range(10)])
    x, y = demo_split.x_heldout[picks], demo_split.y_heldout[picks]
    for i, (pixels, label) in enumerate(zip(x, y)):
        folder = tmp_path / "tree" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    np.savez(tmp_path / "held.npz", x=x, y=y)
    write_idx(tmp_path / "held-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "held-labels-idx1-ubyte.gz", y.astype(np.uint8))
    out = converted_demo.out_dir
    npz = evaluate(out, tmp_path / "held.npz", save=False)
    idx = evaluate(out, tmp_path / "held-images-idx3-ubyte.gz", save=False)
    tree = evaluate(out, tmp_path / "tree", save=False)
    assert npz.samples == idx.samples == 40
    assert (npz.float_accuracy, npz.int8_accuracy) == (idx.float_accuracy, idx.int8_accuracy)
    # the tree's class ids are its sorted folder names "0".."9": the same ids as the labels
    assert (tree.float_accuracy, tree.int8_accuracy) == (npz.float_accuracy, npz.int8_accuracy)
    assert tree.samples == 40


def test_evaluate_cli_json(run_cli, converted_demo, demo_split, tmp_path):
    np.savez(tmp_path / "held.npz", x=demo_split.x_heldout[:100], y=demo_split.y_heldout[:100])
    code, out, err = run_cli("evaluate", converted_demo.out_dir, "--data",
                             tmp_path / "held.npz", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["samples"] == 100
    assert set(data) >= {"float_accuracy", "int8_accuracy", "delta_pp", "agreement",
                         "float_size", "int8_size", "size_ratio"}
    assert data["delta_pp"] == pytest.approx((data["int8_accuracy"]
                                              - data["float_accuracy"]) * 100, abs=1e-3)


def test_idx_reader_rejects_truncated_and_foreign_files(tmp_path):
    write_idx(tmp_path / "ok-images-idx3-ubyte.gz", np.zeros((2, 3, 3), np.uint8))
    assert datasets.read_idx(tmp_path / "ok-images-idx3-ubyte.gz").shape == (2, 3, 3)
    raw = gzip.open(tmp_path / "ok-images-idx3-ubyte.gz").read()
    (tmp_path / "cut-images-idx3-ubyte").write_bytes(raw[:-3])
    with pytest.raises(UserError, match="truncated"):
        datasets.read_idx(tmp_path / "cut-images-idx3-ubyte")
    (tmp_path / "png-images-idx3-ubyte").write_bytes(b"\x89PNG\r\n\x1a\n....")
    with pytest.raises(UserError, match="not an idx file"):
        datasets.read_idx(tmp_path / "png-images-idx3-ubyte")


def test_rgb_folder_is_resized_with_the_model_geometry(tmp_path):
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "a.jpg")
    samples = datasets.load_calibration(tmp_path, [1, 32, 32, 3], Preprocess())
    assert samples.data.shape == (1, 32, 32, 3) and samples.are_pixels
    assert abs(int(samples.data[0, 16, 16, 0]) - 200) <= 3
    floats = datasets.float_inputs(samples, Preprocess(127.5, 127.5))
    assert floats.dtype == np.float32 and -1.0 <= floats.min() <= floats.max() <= 1.0


def run_read_only(directory, *argv):
    """`python -m qdeploy ARGV` with `directory` bind-mounted read-only (a private namespace).

    Root ignores file modes, so a read-only mount is the way to make a directory unwritable.
    """
    import os
    import shutil
    import subprocess
    import sys

    if not shutil.which("unshare"):
        pytest.skip("needs util-linux's unshare")
    cmd = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
    prefix = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix.insert(1, "--map-root-user")
    result = subprocess.run([*prefix, "sh", "-c", cmd, "sh", str(directory), sys.executable,
                             "-m", "qdeploy", *map(str, argv)],
                            capture_output=True, text=True, timeout=120)
    if "mount:" in result.stderr or "unshare:" in result.stderr:
        pytest.skip(f"cannot make a read-only mount here: {result.stderr.strip()}")
    return result


def test_unwritable_directory_is_refused_before_evaluating(converted_demo, demo_split,
                                                           tmp_path):
    import shutil

    out = tmp_path / "ro"
    shutil.copytree(converted_demo.out_dir, out)
    np.savez(tmp_path / "held.npz", x=demo_split.x_heldout[:5], y=demo_split.y_heldout[:5])
    before = (out / "manifest.json").read_bytes()
    result = run_read_only(out, "evaluate", out, "--data", tmp_path / "held.npz")
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot write in ") and "manifest.json" in lines[0]
    assert "Read-only file system" in lines[0]
    assert (out / "manifest.json").read_bytes() == before
