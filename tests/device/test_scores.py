"""Scores as qrun reports them: negative logits are kept, and inputs are quantized as TFLite does.

The models are real: the demo's network (Dense(10) logits, no softmax) converted by
qdeploy convert, and a tiny float-input model whose first op is TFLite's QUANTIZE.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from qrun.tasks import adapters
from qrun.model import runtime
from qrun.model.preprocess import Preprocess, quantize, to_float
from qrun.model.tensors import TensorSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def logits_model(seed_model_file, calib_npy, tmp_path_factory):
    """The demo network (untrained, seed 1) converted to a uint8 model: its scores are logits."""
    from qdeploy.quantize.convert import convert

    out = tmp_path_factory.mktemp("logits")
    convert(seed_model_file, calib_npy, out, num_calib=20, io_type="uint8")
    return out / "model_int8.tflite"


@pytest.fixture(scope="module")
def white_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("white") / "white.png"
    Image.new("L", (28, 28), 255).save(path)
    return path


def test_default_threshold_keeps_negative_scores(run_qrun, logits_model, white_png):
    """Without --threshold, classify prints the top-k classes whatever the sign of their scores."""
    interpreter = runtime.make_interpreter(logits_model)
    classes = adapters.num_classes(interpreter)
    out = run_qrun("classify", white_png, "--model", logits_model, "--json",
                   "--top-k", classes)
    assert out.code == 0, out.err
    scores = json.loads(out.out)["scores"]
    assert len(scores) == classes
    assert min(scores) < 0  # the model really has negative scores: the case being tested
    assert scores == sorted(scores, reverse=True)
    text = run_qrun("classify", white_png, "--model", logits_model, "--top-k", 3)
    assert text.code == 0, text.err
    assert len([ln for ln in text.out.splitlines() if not ln.startswith("invoke")]) == 3


def test_an_explicit_threshold_still_filters(run_qrun, logits_model, white_png):
    interpreter = runtime.make_interpreter(logits_model)
    out = run_qrun("classify", white_png, "--model", logits_model, "--json",
                   "--top-k", adapters.num_classes(interpreter), "--threshold", "0")
    assert out.code == 0, out.err
    all_scores = json.loads(run_qrun("classify", white_png, "--model", logits_model, "--json",
                                     "--top-k", adapters.num_classes(interpreter)).out)["scores"]
    assert json.loads(out.out)["scores"] == [s for s in all_scores if s >= 0]


def quantize_model(path, calibration: np.ndarray) -> None:
    """Write a float-input model whose first op is TFLite's QUANTIZE: float [1, N] in,
    the same values as uint8 [1, N] out (int8 inside, so its zero point is odd)."""
    from qdeploy.quantize.tfquiet import quiet, tensorflow

    tf = tensorflow()
    size = calibration.shape[-1]

    @tf.function(input_signature=[tf.TensorSpec([1, size], tf.float32)])
    def reshape(x):
        return tf.reshape(x, [1, 1, size])

    def representative_dataset():
        for row in calibration:
            yield [row[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [reshape.get_concrete_function()], reshape)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_output_type = tf.uint8
    with quiet():
        path.write_bytes(converter.convert())


@pytest.mark.parametrize("pre", [Preprocess(127.5, 127.5), Preprocess(0.0, 255.0)],
                         ids=["symmetric", "unit"])
def test_quantize_matches_the_runtime_quantize_op(pre, tmp_path):
    """qrun's quantize gives, for every pixel value, what TFLite's own QUANTIZE op gives."""
    pixels = np.arange(256, dtype=np.uint8)
    x = to_float(pixels, pre)
    model = tmp_path / "quantize.tflite"
    quantize_model(model, np.stack([x, x[::-1]]))
    interpreter = runtime.make_interpreter(model)
    inp = adapters.input_details(interpreter)
    out = adapters.output_details(interpreter)
    assert np.dtype(inp["dtype"]) == np.float32 and np.dtype(out["dtype"]) == np.uint8
    interpreter.set_tensor(inp["index"], x[None])
    interpreter.invoke()
    expected = interpreter.get_tensor(out["index"]).reshape(-1)
    spec = TensorSpec.from_details(out)
    ours = quantize(x, spec.scale, spec.zero_point, np.uint8)
    assert np.array_equal(ours, expected), np.flatnonzero(ours != expected)
