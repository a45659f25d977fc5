"""Bad input to `qdeploy convert` and `qdeploy evaluate`: one line, non-zero exit, nothing lost."""

from __future__ import annotations

import json

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


@pytest.fixture(scope="module")
def keras():
    from qdeploy.quantize.tfquiet import keras as import_keras

    return import_keras()


def tiny_calib(path, n=6):
    np.save(path, np.random.default_rng(0).integers(0, 255, (n, 8, 8, 1), dtype=np.uint8))
    return path


def test_dynamic_height_and_width_are_refused_before_any_work(run_cli, keras, tmp_path):
    model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(2, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    model.save(tmp_path / "dyn.keras")
    code, _, err = run_cli("convert", tmp_path / "dyn.keras", "--calib",
                           tiny_calib(tmp_path / "c.npy"), "--out", tmp_path / "out")
    assert_one_line_error(code, err, "dyn.keras has input shape [None, None, None, 1]",
                          "fixed input size")


def test_savedmodel_without_builtin_ops_or_float_input_is_one_line(run_cli, tmp_path):
    from qdeploy.quantize.tfquiet import tensorflow as import_tf

    tf = import_tf()

    class Inverse(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4, 4], tf.float32)])
        def __call__(self, x):
            return {"out": tf.linalg.inv(x + tf.eye(4) * 3.0)}

    class Pixels(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.uint8)])
        def __call__(self, x):
            return {"out": tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2])}

    for name, module in (("inv_sm", Inverse()), ("u8_sm", Pixels())):
        tf.saved_model.save(module, str(tmp_path / name),
                            signatures={"serving_default": module.__call__})
    np.save(tmp_path / "c44.npy", np.random.default_rng(0).random((4, 4, 4), np.float32))
    out = tmp_path / "out"
    code, _, err = run_cli("convert", tmp_path / "inv_sm", "--calib", tmp_path / "c44.npy",
                           "--out", out)
    assert_one_line_error(code, err, "float conversion failed", "MatrixInverse")
    assert files_in(out) == {}
    code, _, err = run_cli("convert", tmp_path / "u8_sm", "--calib",
                           tiny_calib(tmp_path / "c.npy"), "--out", out)
    assert_one_line_error(code, err, "u8_sm takes uint8 input", "float")


def test_nan_calibration_data_is_refused_naming_the_file(run_cli, seed_model_file, tmp_path):
    x = np.random.default_rng(0).random((5, 28, 28), np.float32)
    x[2, 3, 4] = np.nan
    np.save(tmp_path / "nan.npy", x)
    code, _, err = run_cli("convert", seed_model_file, "--calib", tmp_path / "nan.npy",
                           "--out", tmp_path / "out")
    assert_one_line_error(code, err, "nan.npy holds NaN or infinite values (1 of 5")


def test_labels_that_do_not_fit_the_output_are_not_shipped(run_cli, seed_model_file, calib_npy,
                                                           tmp_path):
    (tmp_path / "labels.txt").write_text("".join(f"class{i}\n" for i in range(5)))
    out = tmp_path / "out"
    code, _, err = run_cli("convert", seed_model_file, "--calib", calib_npy, "--out", out,
                           "--num-calib", "2", "--labels", tmp_path / "labels.txt")
    assert_one_line_error(code, err, "labels.txt has 5 labels but the model outputs 10 scores")
    assert files_in(out) == {}


def test_batch_fixed_at_four_is_fixed_to_one_and_said(run_cli, keras, tmp_path):
    inputs = keras.Input((8, 8, 1), batch_size=4)
    x = keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(tmp_path / "b4.keras")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli("convert", tmp_path / "b4.keras", "--calib",
                                tiny_calib(tmp_path / "c.npy"), "--out", out,
                                "--labels", tmp_path / "labels.txt")
    assert code == 0, err
    assert "batch fixed to 1: input [1, 8, 8, 1] (the source model's batch was 4)" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["converter"]["batch_fixed_to_1"] is True
    assert manifest["converter"]["source_input_shape"] == [4, 8, 8, 1]
    assert (out / "labels.txt").read_text() == "a\nb\nc\n"
