"""The realistic ONNX case: a classifier trained here, exported to ONNX by tf2onnx, through
`qdeploy convert` and `qdeploy evaluate`, its accuracy known from the Keras side.

The model is the demo's (Conv2D 12 3x3 relu, MaxPool 2x2, Flatten, Dense 10) with a
4-D input, trained for a few seeded epochs on the training part of the bundled MNIST
split. `model.export()` writes a SavedModel, `tf2onnx --saved-model ... --inputs-as-nchw`
makes it the ONNX file a PyTorch user would have (input [N, 1, 28, 28], NCHW), and
qdeploy converts that with NCHW calibration pixels. The issue's targets on the held-out
2,000 images: the float TFLite within 0.1 pp of ONNX Runtime, int8 within 1 pp of float.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

MISSING = [m for m in ("onnx", "onnxruntime", "onnx2tf", "tf2onnx")
           if importlib.util.find_spec(m) is None]
# find_spec, not importorskip: importing onnx2tf changes process-wide TensorFlow state.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed (the onnx extra; scripts/test "
                          "installs it)")]

EPOCHS = 3
SEED = 0
CALIB = 100
INPUT = "image"
TF2ONNX_DEADLINE = 300  # seconds: tf2onnx imports TensorFlow in its own process


@pytest.fixture(scope="module")
def mnist_onnx(tmp_path_factory, demo_split):
    """(onnx path, Keras top-1 on the held-out images): trained, exported, converted."""
    from qdeploy.quantize.tfquiet import keras as import_keras

    keras = import_keras()
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential([
        keras.layers.Input((28, 28, 1), name=INPUT),
        keras.layers.Conv2D(12, (3, 3), activation="relu"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(demo_split.x_train[..., None].astype(np.float32) / 255, demo_split.y_train,
              epochs=EPOCHS, batch_size=32, verbose=0)
    keras_top1 = model.predict(demo_split.x_heldout[..., None].astype(np.float32) / 255,
                               verbose=0).argmax(1)

    root = tmp_path_factory.mktemp("mnist-onnx")
    saved = root / "savedmodel"
    model.export(str(saved), verbose=False)
    path = root / "mnist.onnx"
    run = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved),
                          "--output", str(path), "--inputs-as-nchw", INPUT, "--opset", "13"],
                         capture_output=True, text=True, timeout=TF2ONNX_DEADLINE)
    assert run.returncode == 0, run.stderr[-2000:]
    return path, keras_top1


def ort_top1(path, x_nchw: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: x_nchw.astype(np.float32) / 255})[0].argmax(1)


def test_tf2onnx_wrote_an_nchw_model_that_computes_what_keras_does(mnist_onnx, demo_split):
    import onnx

    path, keras_top1 = mnist_onnx
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or None for d in dims] == [None, 1, 28, 28]
    assert proto.producer_name == "tf2onnx"
    top1 = ort_top1(path, demo_split.x_heldout[:, None])
    assert (top1 == keras_top1).mean() >= 0.999
    assert (keras_top1 == demo_split.y_heldout).mean() >= 0.9  # it learned


def test_convert_and_evaluate_meet_the_accuracy_targets(mnist_onnx, demo_split, tmp_path,
                                                        run_cli):
    path, keras_top1 = mnist_onnx
    calib = tmp_path / "calib_nchw.npy"
    np.save(calib, demo_split.x_train[:CALIB, None])  # uint8 pixels, NCHW
    heldout = tmp_path / "heldout_nchw.npz"
    np.savez(heldout, x=demo_split.x_heldout[:, None], y=demo_split.y_heldout)
    out = tmp_path / "out"

    code, text, err = run_cli("convert", path, "--calib", calib, "--out", out)
    assert code == 0, err
    text = " ".join(text.split())
    assert "NCHW layout: transposed once" in text and "float TFLite vs ONNX Runtime" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 28, 28, 1]
    assert manifest["converter"]["source_input_shape"] == [None, 1, 28, 28]
    assert manifest["converter"]["onnx_producer"].startswith("tf2onnx")
    assert manifest["calibration"]["samples"] == CALIB
    # tf2onnx keeps Keras's NHWC Flatten with a Transpose; onnx2tf folds it away again,
    # so nothing keeps the Edge TPU from mapping the whole graph
    from qdeploy.modelfile import tflite_graph

    ops = {op.name for op in tflite_graph.load(out / "model_int8.tflite").ops}
    assert "TRANSPOSE" not in ops and {"CONV_2D", "FULLY_CONNECTED"} <= ops

    code, text, err = run_cli("evaluate", out, "--data", heldout, "--json")
    assert code == 0, err
    e = json.loads(text)
    assert e["samples"] == len(demo_split.y_heldout)
    assert len(e["notes"]) == 1 and "NCHW layout" in e["notes"][0]
    ort_accuracy = (ort_top1(path, demo_split.x_heldout[:, None]) == demo_split.y_heldout).mean()
    keras_accuracy = (keras_top1 == demo_split.y_heldout).mean()
    assert abs(e["float_accuracy"] - ort_accuracy) <= 0.001
    assert abs(e["float_accuracy"] - keras_accuracy) <= 0.001
    assert abs(e["int8_accuracy"] - e["float_accuracy"]) <= 0.01
    assert e["float_accuracy"] >= 0.9
