"""Bad input to `qdeploy convert` and `qdeploy evaluate`: one line, non-zero exit, nothing lost."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures.convert import files_in

pytestmark = pytest.mark.slow


def assert_one_line_error(code, stderr, *fragments):
    assert code != 0
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_model(run_cli, calib_npy, tmp_path):
    code, _, err = run_cli("convert", tmp_path / "nope.keras", "--calib", calib_npy,
                           "--out", tmp_path / "out")
    assert_one_line_error(code, err, "model not found", "nope.keras")


def test_tflite_given_instead_of_source_model(run_cli, calib_npy, coral_dir, tmp_path):
    code, _, err = run_cli("convert", coral_dir / "mobilenet_v1_0.25_128_quant.tflite",
                           "--calib", calib_npy, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "already a TFLite model", "source model")


@pytest.mark.parametrize("name,content", [("garbage.keras", b"not a zip"),
                                          ("notes.txt", b"hello")])
def test_file_that_is_not_a_model(run_cli, calib_npy, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    code, _, err = run_cli("convert", path, "--calib", calib_npy, "--out", tmp_path / "out")
    assert_one_line_error(code, err, name)


def test_directory_that_is_not_a_savedmodel(run_cli, calib_npy, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("convert", tmp_path / "empty", "--calib", calib_npy,
                           "--out", tmp_path / "out")
    assert_one_line_error(code, err, "saved_model.pb")


def test_empty_calibration_folder(run_cli, seed_model_file, tmp_path):
    (tmp_path / "calib").mkdir()
    code, _, err = run_cli("convert", seed_model_file, "--calib", tmp_path / "calib",
                           "--out", tmp_path / "out")
    assert_one_line_error(code, err, "no images")


def test_calibration_shape_does_not_fit(run_cli, seed_model_file, tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((4, 32, 32), np.uint8))
    code, _, err = run_cli("convert", seed_model_file, "--calib", tmp_path / "wrong.npy",
                           "--out", tmp_path / "out")
    assert_one_line_error(code, err, "(32, 32)", "(28, 28)")


def test_unwritable_out(run_cli, seed_model_file, calib_npy, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli("convert", seed_model_file, "--calib", calib_npy,
                           "--out", blocker / "out")
    assert_one_line_error(code, err, "cannot write to --out")


def test_bad_preprocess_and_io(run_cli, seed_model_file, calib_npy, tmp_path):
    code, _, err = run_cli("convert", seed_model_file, "--calib", calib_npy,
                           "--out", tmp_path / "out", "--preprocess", "mean=abc")
    assert_one_line_error(code, err, "--preprocess")
    code, _, err = run_cli("convert", seed_model_file, "--calib", calib_npy,
                           "--out", tmp_path / "out", "--io", "float32")
    assert_one_line_error(code, err, "--io")


def test_failed_run_keeps_the_previous_good_result(run_cli, seed_model_file, calib_npy,
                                                   tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli("convert", seed_model_file, "--calib", calib_npy,
                                "--out", out, "--num-calib", "5")
    assert code == 0, err
    assert "batch fixed to 1" in stdout
    before = files_in(out)
    assert set(before) >= {"model_float.tflite", "model_int8.tflite", "manifest.json"}
    np.save(tmp_path / "wrong.npy", np.zeros((4, 10, 10), np.uint8))
    code, _, err = run_cli("convert", seed_model_file, "--calib", tmp_path / "wrong.npy",
                           "--out", out)
    assert code != 0
    assert files_in(out) == before  # nothing clobbered, no staging directory left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_evaluate_errors(run_cli, converted_demo, tmp_path):
    code, _, err = run_cli("evaluate", tmp_path, "--data", tmp_path)
    assert_one_line_error(code, err, "manifest.json", "qdeploy convert")
    np.save(tmp_path / "x.npy", np.zeros((3, 28, 28), np.uint8))
    code, _, err = run_cli("evaluate", converted_demo.out_dir, "--data", tmp_path / "x.npy")
    assert_one_line_error(code, err, "no labels")
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 28, 28), np.uint8), y=np.zeros(2))
    code, _, err = run_cli("evaluate", converted_demo.out_dir, "--data", tmp_path / "bad.npz")
    assert_one_line_error(code, err, "3 samples but 2 labels")
    np.savez(tmp_path / "onehot.npz", x=np.zeros((3, 28, 28), np.uint8), y=np.eye(3))
    code, _, err = run_cli("evaluate", converted_demo.out_dir, "--data", tmp_path / "onehot.npz")
    assert_one_line_error(code, err, "onehot.npz", "shape (3, 3)", "argmax")
    code, _, err = run_cli("evaluate", converted_demo.out_dir, "--data", tmp_path / "bad.npz",
                           "--limit", "-3")
    assert_one_line_error(code, err, "--limit must be at least 1")
