"""`qdeploy convert` and `evaluate` on models with several inputs and outputs.

The two-input, two-output model (tests/fixtures/two_io.py) is built seeded with TF
and converted for real; its Keras outputs are the expected answer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from qdeploy.quantize.convert import convert
from qdeploy.quantize.deployment import INT8_NAME, REFERENCE_NPZ_NAME
from qdeploy.quantize.evaluate import evaluate
from qrun.model import manifest as mf
from qrun.measure import reference
from qrun.errors import UserError
from qrun.model.preprocess import dequantize
from qrun.model.runtime import make_interpreter
from tests.fixtures.convert import files_in
from tests.fixtures.two_io import CLASSES, keras_answer, two_io_data

STEPS = 3  # int8 vs float: at most this many output quantization steps apart


def assert_one_line_error(code, stderr, *fragments):
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("INFO:")]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def run_int8(path, raw_inputs: list) -> list:
    """Every output of one invoke, dequantized, in the interpreter's order."""
    interpreter = make_interpreter(path)
    for details, raw in zip(interpreter.get_input_details(), raw_inputs):
        interpreter.set_tensor(details["index"], raw[None])
    interpreter.invoke()
    return [dequantize(interpreter.get_tensor(d["index"]), *d["quantization"])
            for d in interpreter.get_output_details()]


def by_name(specs) -> dict:
    return {spec.name: k for k, spec in enumerate(specs)}


def test_manifest_lists_every_input_and_output_as_the_interpreter_does(two_io_converted):
    out = two_io_converted.out_dir
    manifest = mf.load(out)
    interpreter = make_interpreter(out / INT8_NAME)
    for specs, details in ((manifest.inputs, interpreter.get_input_details()),
                           (manifest.outputs, interpreter.get_output_details())):
        assert len(specs) == len(details) == 2
        for spec, d in zip(specs, details):
            assert spec.index == d["index"]
            assert spec.shape == [int(n) for n in d["shape"]]
            assert spec.dtype == np.dtype(d["dtype"]).name == "uint8"
            assert (spec.scale, spec.zero_point) == (pytest.approx(d["quantization"][0]),
                                                     d["quantization"][1])
            assert spec.scale > 0
    # named as the Keras model names them, each name on the tensor of its shape
    shapes = {s.name: s.shape for s in manifest.inputs + manifest.outputs}
    assert shapes == {"image": [1, 8, 8, 1], "side": [1, 3], "scores": [1, CLASSES],
                      "offset": [1, 1]}


def test_task_is_classify_on_the_score_vector(two_io_converted):
    manifest = mf.load(two_io_converted.out_dir)
    assert manifest.task.kind == mf.CLASSIFY
    assert manifest.task.output(mf.SCORES) == by_name(manifest.outputs)["scores"]
    assert manifest.output.name == "scores"


def test_reference_is_an_npz_of_raw_values_per_input(two_io, two_io_converted):
    out = two_io_converted.out_dir
    manifest = mf.load(out)
    assert manifest.artifacts[mf.REFERENCE].file == REFERENCE_NPZ_NAME
    ref = reference.load(out / REFERENCE_NPZ_NAME)
    assert ref.raw and ref.count == 8 and len(ref.arrays) == 2
    calib = np.load(two_io.calib)
    for spec, array in zip(manifest.inputs, ref.arrays):
        assert array.dtype == np.dtype(spec.dtype)
        assert list(array.shape[1:]) == spec.shape[1:]
        source = calib[spec.name][:8]
        if spec.name == "image":  # pixels, /255 ("unit"), which uint8 input scale 1/255 keeps
            assert np.abs(array.astype(int) - source.astype(int)).max() <= 1
        else:  # floats quantized with the input's own parameters
            back = dequantize(array, spec.scale, spec.zero_point)
            assert np.abs(back - source).max() <= spec.scale


def int8_and_keras_outputs(two_io, out) -> list:
    """Per reference sample: (the int8 model's outputs, the Keras model's by output name) on
    the same inputs (the reference .npz's raw values, dequantized for Keras)."""
    manifest = mf.load(out)
    ref = reference.load(out / REFERENCE_NPZ_NAME)
    names = by_name(manifest.inputs)
    pairs = []
    for n in range(ref.count):
        raw = ref.sample(n)
        seen = [dequantize(r, s.scale, s.zero_point) for r, s in zip(raw, manifest.inputs)]
        want = dict(zip(("scores", "offset"),
                        keras_answer(two_io.model, seen[names["image"]][None],
                                     seen[names["side"]][None])))
        pairs.append((run_int8(out / INT8_NAME, raw), want))
    return pairs


def test_int8_outputs_agree_with_the_keras_model(two_io, two_io_converted):
    out = two_io_converted.out_dir
    manifest = mf.load(out)
    for got, want in int8_and_keras_outputs(two_io, out):
        for spec, value in zip(manifest.outputs, got):
            assert np.abs(value - want[spec.name]).max() <= STEPS * spec.scale, spec.name


def test_multi_output_without_output_io_is_uint8_everywhere(two_io_converted):
    interpreter = make_interpreter(two_io_converted.out_dir / INT8_NAME)
    ends = interpreter.get_input_details() + interpreter.get_output_details()
    assert {np.dtype(d["dtype"]).name for d in ends} == {"uint8"}
    assert "DEQUANTIZE" not in two_io_converted.int8_ops


def test_output_io_float32_gives_float_outputs_after_uint8_inputs_and_int8_ops(
        two_io, two_io_float_outputs, two_io_converted):
    out = two_io_float_outputs.out_dir
    interpreter = make_interpreter(out / INT8_NAME)
    assert {np.dtype(d["dtype"]).name for d in interpreter.get_input_details()} == {"uint8"}
    outputs = interpreter.get_output_details()
    assert {np.dtype(d["dtype"]).name for d in outputs} == {"float32"}
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    output_indices = {d["index"] for d in outputs}
    for op in interpreter._get_ops_details():
        if op["op_name"] == "DELEGATE":
            continue
        dtypes = {np.dtype(tensors[i]["dtype"]).name
                  for i in list(op["inputs"]) + list(op["outputs"]) if i in tensors}
        if op["op_name"] == "DEQUANTIZE":  # only at the end, into a model output
            assert set(op["outputs"]) <= output_indices
        elif op["op_name"] != "QUANTIZE":
            assert dtypes <= {"int8", "int32"}, op
    manifest = mf.load(out)
    assert [s.dtype for s in manifest.outputs] == ["float32", "float32"]
    assert not any(s.quantized for s in manifest.outputs)
    assert manifest.converter.extra["inference_output_type"] == "float32"
    # the float outputs are the int8 model's values, as close to Keras as the uint8 ones
    uint8_steps = {s.name: s.scale for s in mf.load(two_io_converted.out_dir).outputs}
    for got, want in int8_and_keras_outputs(two_io, out):
        for spec, value in zip(manifest.outputs, got):
            assert value.dtype == np.float32
            assert np.abs(value - want[spec.name]).max() <= STEPS * uint8_steps[spec.name]


def test_convert_cli_prints_every_tensor_and_the_task(run_cli, two_io, tmp_path):
    code, stdout, err = run_cli("convert", two_io.path, "--calib", two_io.calib, "--out",
                                tmp_path / "out", "--num-calib", "8", "--output-io", "float32")
    assert code == 0, err
    for name in ("image", "side"):
        assert f" {name} uint8 " in stdout
    for name in ("scores", "offset"):
        assert f" {name} float32 " in stdout
    assert "task classify (scores: output" in stdout
    assert "batch fixed to 1: all 2 inputs" in stdout


def test_evaluate_scores_the_task_s_scores_output(two_io, two_io_converted, tmp_path):
    """Labels are the Keras model's top-1 where it is clear: the float model gets them all;
    the [1, 1] offset output, argmax'd, would score only the class-0 share."""
    data = two_io_data(64, seed=99)
    image = data["image"].astype(np.float32) / 255
    scores, _ = keras_answer(two_io.model, image, data["side"])
    top2 = np.sort(scores, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.2
    assert clear.sum() >= 20
    y = scores.argmax(axis=1)[clear]
    assert len(set(y.tolist())) > 1  # not all class 0: output 0's argmax could not pass
    np.savez(tmp_path / "held.npz", image=data["image"][clear], side=data["side"][clear], y=y)
    result = evaluate(two_io_converted.out_dir, tmp_path / "held.npz", save=False)
    assert result.samples == int(clear.sum())
    assert result.float_accuracy == 1.0
    assert result.int8_accuracy >= 0.8 and result.agreement >= 0.8


def test_evaluate_of_several_inputs_names_a_missing_array(run_cli, two_io_converted, tmp_path):
    data = two_io_data(4, seed=1)
    np.savez(tmp_path / "held.npz", image=data["image"], y=np.zeros(4, int))
    code, _, err = run_cli("evaluate", two_io_converted.out_dir, "--data", tmp_path / "held.npz")
    assert_one_line_error(code, err, "has no array side", "one array per model input")


def test_calibration_for_several_inputs_must_be_an_npz_with_their_names(run_cli, two_io,
                                                                       tmp_path):
    np.save(tmp_path / "c.npy", two_io_data(4, 0)["image"])
    out = tmp_path / "out"
    code, _, err = run_cli("convert", two_io.path, "--calib", tmp_path / "c.npy", "--out", out)
    assert_one_line_error(code, err, "2 inputs", "image, side")
    np.savez(tmp_path / "wrong.npz", image=two_io_data(4, 0)["image"],
             side=np.zeros((4, 5), np.float32))
    code, _, err = run_cli("convert", two_io.path, "--calib", tmp_path / "wrong.npz", "--out",
                           out)
    assert_one_line_error(code, err, "wrong.npz[side]", "(5,)", "(3,)")
    assert files_in(out) == {}


@pytest.fixture(scope="module")
def keras():
    from qdeploy.quantize.tfquiet import keras as import_keras

    keras = import_keras()
    keras.utils.set_random_seed(3)
    return keras


def test_two_score_heads_are_task_raw_and_evaluate_refuses_them(run_cli, keras, tmp_path):
    inputs = keras.Input((8, 8, 1))
    flat = keras.layers.Flatten()(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(3, name="a")(flat),
                                 keras.layers.Dense(2, name="b")(flat)])
    model.save(tmp_path / "heads.keras")
    np.save(tmp_path / "c.npy", two_io_data(6, 0)["image"])
    out = tmp_path / "out"
    code, stdout, err = run_cli("convert", tmp_path / "heads.keras", "--calib",
                                tmp_path / "c.npy", "--out", out)
    assert code == 0, err
    assert "task raw" in stdout
    manifest = mf.load(out)
    assert manifest.task.kind == mf.RAW and manifest.task.output(mf.SCORES) is None
    assert sorted(s.shape for s in manifest.outputs) == [[1, 2], [1, 3]]
    # one input: the reference stays reference_inputs.npy, the samples as read
    assert manifest.artifacts[mf.REFERENCE].file == "reference_inputs.npy"
    np.savez(tmp_path / "held.npz", x=two_io_data(4, 1)["image"], y=np.zeros(4, int))
    before = (out / "manifest.json").read_bytes()
    code, _, err = run_cli("evaluate", out, "--data", tmp_path / "held.npz")
    assert_one_line_error(code, err, "evaluate measures classification accuracy",
                          "task is raw")
    assert (out / "manifest.json").read_bytes() == before
    with pytest.raises(UserError, match="task is raw"):
        evaluate(out, tmp_path / "held.npz", save=False)


class TestRefusals:
    """What the Edge TPU cannot take is refused, naming the tensor."""

    def test_input_with_a_dynamic_size_is_named(self, run_cli, keras, tmp_path):
        image = keras.Input((8, 8, 1), name="image")
        tokens = keras.Input((None,), name="tokens")
        joined = keras.layers.Concatenate()(
            [keras.layers.Flatten()(image), keras.layers.GlobalAveragePooling1D()(
                keras.layers.Reshape((-1, 1))(tokens))])
        keras.Model([image, tokens], keras.layers.Dense(3)(joined)).save(tmp_path / "d.keras")
        np.savez(tmp_path / "c.npz", **two_io_data(4, 0))
        code, _, err = run_cli("convert", tmp_path / "d.keras", "--calib", tmp_path / "c.npz",
                               "--out", tmp_path / "out")
        assert_one_line_error(code, err, "input tokens of d.keras has input shape [None, None]",
                              "fixed input size")

    def test_an_integer_output_is_named(self, run_cli, tmp_path):
        from qdeploy.quantize.tfquiet import tensorflow as import_tf

        tf = import_tf()

        class ScoresAndLabel(tf.Module):
            def __init__(self):
                self.w = tf.Variable(tf.random.stateless_normal([64, 4], seed=[1, 2]))

            @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
            def __call__(self, x):
                scores = tf.nn.softmax(tf.reshape(x, [-1, 64]) @ self.w)
                return {"scores": scores, "label": tf.argmax(scores, axis=-1)}

        module = ScoresAndLabel()
        tf.saved_model.save(module, str(tmp_path / "sm"),
                            signatures={"serving_default": module.__call__})
        np.save(tmp_path / "c.npy", two_io_data(6, 0)["image"])
        out = tmp_path / "out"
        code, _, err = run_cli("convert", tmp_path / "sm", "--calib", tmp_path / "c.npy",
                               "--out", out)
        assert_one_line_error(code, err, "output label is int64", "not uint8", "argmax")
        assert files_in(out) == {}

    def test_bad_output_io_is_one_line(self, run_cli, two_io, tmp_path):
        code, _, err = run_cli("convert", two_io.path, "--calib", two_io.calib, "--out",
                               tmp_path / "out", "--output-io", "float16")
        assert_one_line_error(code, err, "--output-io must be one of uint8, int8, float32")


def test_float_and_int8_models_list_tensors_in_one_order(two_io_converted):
    """Verify feeds the reference to both by position: their orders must agree."""
    from qdeploy.quantize import signature

    out = two_io_converted.out_dir
    orders = []
    for name in ("model_float.tflite", INT8_NAME):
        inputs, outputs = signature.specs(make_interpreter(out / name), out / name)
        orders.append(([s.name for s in inputs], [s.name for s in outputs]))
    assert orders[0] == orders[1]


def test_manifest_json_is_schema_2_with_both_inputs(two_io_converted):
    data = json.loads((two_io_converted.out_dir / "manifest.json").read_text())
    assert data["schema_version"] == 2
    assert [t["name"] for t in data["inputs"]] == [s.name for s in
                                                   mf.load(two_io_converted.out_dir).inputs]
    assert data["converter"]["source_inputs"] == [{"name": "image", "shape": [None, 8, 8, 1]},
                                                  {"name": "side", "shape": [None, 3]}]


def test_convert_api_refuses_an_unknown_output_io(two_io, tmp_path):
    with pytest.raises(UserError, match="--output-io"):
        convert(two_io.path, two_io.calib, tmp_path / "o", output_io="int4")


def test_labels_are_checked_against_the_scores_output(run_cli, two_io, tmp_path):
    (tmp_path / "four.txt").write_text("a\nb\nc\nd\n")
    out = tmp_path / "out"
    code, _, err = run_cli("convert", two_io.path, "--calib", two_io.calib, "--out", out,
                           "--num-calib", "4", "--labels", tmp_path / "four.txt")
    assert_one_line_error(code, err, "four.txt has 4 labels but the model outputs 5 scores")
    assert files_in(out) == {}
    (tmp_path / "five.txt").write_text("a\nb\nc\nd\ne\n")
    code, _, err = run_cli("convert", two_io.path, "--calib", two_io.calib, "--out", out,
                           "--num-calib", "4", "--labels", tmp_path / "five.txt")
    assert code == 0, err
    manifest = mf.load(out)
    assert manifest.task.labels == mf.LABELS and manifest.labels == "labels.txt"


def test_npz_inputs_of_different_counts_are_refused(tmp_path):
    from qdeploy.quantize import datasets
    from qrun.model.preprocess import Preprocess

    data = two_io_data(4, 0)
    np.savez(tmp_path / "c.npz", image=data["image"], side=data["side"][:3])
    with pytest.raises(UserError, match="holds 4 image, 3 side samples"):
        datasets.load_calibration_inputs(tmp_path / "c.npz", [("image", [1, 8, 8, 1]),
                                                              ("side", [1, 3])], Preprocess())


def test_savedmodel_with_two_inputs_and_outputs_keeps_its_signature_names(tmp_path):
    from qdeploy.quantize.tfquiet import tensorflow as import_tf

    tf = import_tf()

    class TwoByTwo(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.random.stateless_normal([67, 4], seed=[3, 4]))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32),
                                      tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, pixels, extra):
            joined = tf.concat([tf.reshape(pixels, [-1, 64]), extra], axis=1) @ self.w
            return {"probabilities": tf.nn.softmax(joined), "total": tf.reduce_sum(
                joined, axis=1, keepdims=True)}

    module = TwoByTwo()
    tf.saved_model.save(module, str(tmp_path / "sm"),
                        signatures={"serving_default": module.__call__})
    data = two_io_data(8, 2)
    np.savez(tmp_path / "c.npz", pixels=data["image"], extra=data["side"])
    result = convert(tmp_path / "sm", tmp_path / "c.npz", tmp_path / "out", num_calib=8)
    manifest = result.manifest
    assert {s.name: s.shape for s in manifest.inputs} == {"pixels": [1, 8, 8, 1],
                                                          "extra": [1, 3]}
    assert {s.name: s.shape for s in manifest.outputs} == {"probabilities": [1, 4],
                                                           "total": [1, 1]}
    assert manifest.task.kind == mf.CLASSIFY
    assert manifest.outputs[manifest.task.output(mf.SCORES)].name == "probabilities"
    assert manifest.converter.source_kind == "saved_model"
