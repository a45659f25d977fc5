"""`qdeploy convert`: real TFLiteConverter conversions of small models."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from PIL import Image

from qdeploy.quantize.convert import convert
from qdeploy.quantize.deployment import INT8_NAME
from qrun.model import manifest as mf
from qrun.errors import UserError
from qrun.model.preprocess import Preprocess, parse_preprocess
from qrun.model.runtime import make_interpreter
from tests.fixtures.convert import files_in

pytestmark = pytest.mark.slow

DYNAMIC_SHAPE_OPS = {"SHAPE", "STRIDED_SLICE", "PACK"}


def op_names(path):
    interpreter = make_interpreter(path)
    return [op["op_name"] for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]


def test_int8_model_is_integer_only_with_uint8_io(converted_demo):
    out = converted_demo.out_dir
    manifest = mf.load(out)
    interpreter = make_interpreter(out / INT8_NAME)
    inp = interpreter.get_input_details()[0]
    outp = interpreter.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and outp["dtype"] == np.uint8
    io_indices = {inp["index"], outp["index"]}
    internal = {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()
                if t["index"] not in io_indices}
    assert internal <= {"int8", "int32"}, internal
    # quantization parameters in the manifest are the model's own
    assert manifest.input.scale == pytest.approx(inp["quantization"][0])
    assert manifest.input.zero_point == inp["quantization"][1]
    assert manifest.output.scale == pytest.approx(outp["quantization"][0])
    assert manifest.output.zero_point == outp["quantization"][1]
    assert manifest.input.shape == [1, 28, 28] and manifest.input.dtype == "uint8"


def test_batch_is_fixed_to_one_and_no_dynamic_shape_ops(converted_demo):
    out = converted_demo.out_dir
    assert converted_demo.conversion.batch_fixed
    ops = op_names(out / INT8_NAME)
    assert not DYNAMIC_SHAPE_OPS & set(ops), ops
    assert ops == ["QUANTIZE", "RESHAPE", "CONV_2D", "MAX_POOL_2D", "RESHAPE",
                   "FULLY_CONNECTED", "QUANTIZE"]
    interpreter = make_interpreter(out / INT8_NAME)
    assert all(-1 not in list(t["shape_signature"]) for t in interpreter.get_tensor_details())
    manifest = mf.load(out)
    assert manifest.converter.batch_fixed_to_1 is True
    assert manifest.converter.source_input_shape == [None, 28, 28]


def test_unfixed_batch_would_have_added_dynamic_shape_ops(seed_model_file, calib_npy, tmp_path):
    """The premise of fixing the batch: TF's own from_keras_model keeps it dynamic."""
    from qdeploy.quantize.tfquiet import keras as import_keras
    from qdeploy.quantize.tfquiet import quiet
    from qdeploy.quantize.tfquiet import tensorflow as import_tf

    tf, keras = import_tf(), import_keras()
    model = keras.models.load_model(seed_model_file, compile=False)
    calib = np.load(calib_npy).astype(np.float32) / 255
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([c[None]] for c in calib)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    with quiet():
        (tmp_path / "dyn.tflite").write_bytes(converter.convert())
    assert DYNAMIC_SHAPE_OPS & set(op_names(tmp_path / "dyn.tflite"))


def test_manifest_records_everything_later_steps_need(converted_demo):
    out = converted_demo.out_dir
    data = json.loads((out / "manifest.json").read_text())
    assert data["schema_version"] == mf.SCHEMA_VERSION
    assert set(data["artifacts"]) == {"float", "int8", "labels", "reference"}
    for art in data["artifacts"].values():
        path = out / art["file"]
        assert art["size"] == path.stat().st_size
        assert art["sha256"] == mf.sha256_file(path)
    assert data["preprocess"]["mean"] == 0.0 and data["preprocess"]["std"] == 255.0
    assert data["calibration"]["samples"] == 100
    assert data["converter"]["tensorflow"].startswith("2.")
    assert data["converter"]["inference_io_type"] == "uint8"
    assert data["labels"] == "labels.txt"
    assert mf.mismatches(mf.load(out), out) == []
    reference = np.load(out / data["artifacts"]["reference"]["file"])
    assert reference.shape == (8, 28, 28) and reference.dtype == np.uint8


def test_accuracy_cost_is_within_target(converted_demo):
    """Issue targets on the held-out 2,000 images: |Δ| ≤ 0.1 pp, agreement ≥ 99.5%, ≥ 3.3x smaller."""
    e = converted_demo.evaluation
    assert e.samples == 2000
    assert e.float_accuracy > 0.9
    assert abs(e.delta_pp) <= 0.1
    assert e.agreement >= 0.995
    assert e.size_ratio >= 3.3
    assert mf.load(converted_demo.out_dir).evaluation["agreement"] == e.agreement


def test_int8_io_and_savedmodel_and_h5_sources(seed_model_file, calib_npy, tmp_path):
    from qdeploy.quantize.tfquiet import keras as import_keras

    keras = import_keras()
    model = keras.models.load_model(seed_model_file, compile=False)
    saved = tmp_path / "saved"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    h5 = tmp_path / "seed.h5"
    model.save(h5)
    for source, io_type in ((saved, "int8"), (h5, "uint8")):
        out = tmp_path / f"out-{source.name}"
        result = convert(source, calib_npy, out, num_calib=10, io_type=io_type)
        interpreter = make_interpreter(out / INT8_NAME)
        assert interpreter.get_input_details()[0]["dtype"] == np.dtype(io_type)
        assert list(interpreter.get_input_details()[0]["shape"]) == [1, 28, 28]
        assert result.manifest.converter.source_kind == ("saved_model" if source == saved
                                                         else "keras")
        assert result.calibration_samples == 10


def test_calibration_sources_agree(seed_model_file, demo_split, tmp_path):
    """Image folder (recursive), .npz and gzipped idx give the same calibration."""
    pixels = demo_split.x_train[:6]
    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"{i}.png")
    np.savez(tmp_path / "calib.npz", x=pixels)
    idx = tmp_path / "calib-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in pixels.shape)
    with gzip.open(idx, "wb") as f:
        f.write(header + pixels.tobytes())
    models = {}
    for name, calib in (("folder", tmp_path / "images"), ("npz", tmp_path / "calib.npz"),
                        ("idx", idx)):
        out = tmp_path / f"out-{name}"
        convert(seed_model_file, calib, out, num_calib=100)
        manifest = mf.load(out)
        assert manifest.calibration["samples"] == 6
        models[name] = (manifest.input.scale, manifest.output.scale, manifest.output.zero_point)
    assert models["folder"] == models["npz"] == models["idx"]


def test_preprocess_is_stored_and_changes_input_quantization(seed_model_file, calib_npy,
                                                              tmp_path):
    result = convert(seed_model_file, calib_npy, tmp_path / "sym", num_calib=10,
                     preprocess=parse_preprocess("symmetric"))
    m = result.manifest
    assert m.preprocess == Preprocess(127.5, 127.5)
    assert mf.load(tmp_path / "sym").preprocess == Preprocess(127.5, 127.5)
    # [-1, 1] inputs quantize with scale 2/255 and zero point near 128 (uint8)
    assert m.input.scale == pytest.approx(2 / 255, rel=1e-3)
    assert abs(m.input.zero_point - 128) <= 1


def test_op_without_int8_kernel_is_refused_by_name(calib_npy, tmp_path):
    from qdeploy.quantize.tfquiet import keras as import_keras
    from qdeploy.quantize.tfquiet import tensorflow as import_tf

    tf, keras = import_tf(), import_keras()
    model = keras.Sequential([keras.layers.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(8), keras.layers.Lambda(tf.math.cos),
                              keras.layers.Dense(2)])
    path = tmp_path / "cos_savedmodel"
    model.export(str(path), format="tf_saved_model", verbose=False)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="op COS has no int8 kernel"):
        convert(path, calib_npy, out, num_calib=5)
    assert files_in(out) == {}
