"""`qdeploy convert model.onnx`: seeded ONNX graphs (NCHW, dynamic batch) through onnx2tf
and TFLiteConverter, held to ONNX Runtime's answers on the same inputs."""

from __future__ import annotations

import importlib.util
from importlib import metadata
import json
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import onnx_graphs as graphs

# find_spec, not importorskip: importing onnx2tf changes process-wide TensorFlow state
# (onnx_source.imports undoes that), which would reach every test collected after this one.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnx2tf")),
    reason="the onnx extra is not installed (scripts/test installs it: pip install -e "
           "'.[onnx]')")]

STEPS = 3  # int8 vs ONNX Runtime: at most this many output quantization steps apart


@pytest.fixture(scope="module")
def calib_nchw(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx-calib") / "calib_nchw.npy"
    np.save(path, graphs.calibration_nchw(32))
    return path


@pytest.fixture(scope="module")
def small_cnn_out(tmp_path_factory, onnx_models, calib_nchw):
    """small_cnn converted once through the library entry point: (result, directory)."""
    from qdeploy.quantize.convert import convert

    out = tmp_path_factory.mktemp("onnx-out") / "small"
    return convert(onnx_models["small_cnn"], calib_nchw, out, num_calib=32)


def int8_scores(int8_path, x_nhwc: np.ndarray) -> np.ndarray:
    """The int8 model's dequantized scores for float NHWC inputs, fed as qrun does."""
    from qdeploy.quantize import datasets
    from qrun.model.preprocess import Preprocess
    from qrun.model.runtime import make_interpreter

    interpreter = make_interpreter(int8_path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    o_scale, o_zero = out["quantization"]
    scores = []
    for x in x_nhwc:
        interpreter.set_tensor(inp["index"], datasets.model_input(
            x, inp["dtype"], scale, zero, Preprocess())[None])
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"]).astype(np.float32)
        scores.append((raw.reshape(-1) - o_zero) * o_scale)
    return np.stack(scores), o_scale


def test_the_fixture_graph_is_what_onnx_runtime_runs(onnx_models):
    x = graphs.calibration_nchw(8)
    np.testing.assert_allclose(graphs.ort_run(onnx_models["small_cnn"], x),
                               graphs.numpy_cnn(x), atol=1e-5)


def test_small_cnn_int8_agrees_with_onnx_runtime(small_cnn_out, onnx_models):
    x = graphs.calibration_nchw(32)
    want = graphs.ort_run(onnx_models["small_cnn"], x)
    got, step = int8_scores(small_cnn_out.int8_path, np.moveaxis(x, 1, -1))
    assert np.abs(got - want).max() <= STEPS * step
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


def test_manifest_takes_nhwc_and_records_the_onnx_source(small_cnn_out):
    m = small_cnn_out.manifest
    assert m.input.shape == [1, 16, 16, 3] and m.input.name == "image"
    assert [o.name for o in m.outputs] == ["scores"] and m.task.kind == "classify"
    c = m.converter
    assert c.source_kind == "onnx" and c.tool.startswith("onnx2tf + ")
    assert c.source_input_shape == [None, 3, 16, 16] and c.batch_fixed_to_1
    assert c.extra["onnx_opset"] == graphs.OPSET
    assert c.extra["onnx_producer"] == " ".join(graphs.PRODUCER)
    assert c.extra["onnx2tf"] == metadata.version("onnx2tf")  # pinned by pyproject's extra
    assert c.extra["source_layout"] == "NCHW" and c.extra["model_layout"] == "NHWC"
    assert c.extra["transposed_inputs"] == ["image"]
    check = c.extra["onnxruntime_check"]
    assert check["samples"] == 16 and check["max_relative_difference"] < 1e-4
    saved = json.loads((small_cnn_out.out_dir / "manifest.json").read_text())
    assert saved["converter"]["source_layout"] == "NCHW"
    assert saved["inputs"][0]["shape"] == [1, 16, 16, 3]


def test_nchw_calibration_is_transposed_once_with_a_note(small_cnn_out, calib_nchw):
    notes = [n for n in small_cnn_out.notes if "NCHW layout" in n]
    assert len(notes) == 1 and "[3, 16, 16] -> [16, 16, 3]" in notes[0]
    reference = np.load(small_cnn_out.out_dir / "reference_inputs.npy")
    np.testing.assert_array_equal(reference, np.moveaxis(np.load(calib_nchw)[:8], 1, -1))


def test_evaluate_and_verify_run_the_onnx_deployment(small_cnn_out, onnx_models, tmp_path):
    """evaluate feeds NHWC labelled data (labels: ONNX Runtime's top-1, so the float model
    scores 100% by construction) and qrun verify runs the reference inputs."""
    from qdeploy.quantize.evaluate import evaluate
    from qrun.measure import verify

    x = graphs.calibration_nchw(32)
    labels = graphs.ort_run(onnx_models["small_cnn"], x).argmax(1)
    data = tmp_path / "labelled.npz"
    np.savez(data, x=np.moveaxis(x, 1, -1), y=labels)
    result = evaluate(small_cnn_out.out_dir, data, save=False)
    assert result.float_accuracy == 1.0 and result.int8_accuracy >= 0.9
    document = verify.verify(small_cnn_out.out_dir, device="cpu")
    variant = document["variants"][0]
    assert variant["variant"] == "int8" and len(variant["outputs"][0]["top1"]) == 8
    want = graphs.ort_run(onnx_models["small_cnn"], x[:8]).argmax(1)
    assert (np.asarray(variant["outputs"][0]["top1"]) == want).mean() >= 0.75


def test_evaluate_transposes_nchw_labelled_data_once_with_a_note(small_cnn_out, onnx_models,
                                                                  tmp_path, run_cli):
    """Labelled data in the ONNX model's NCHW layout scores what the same data in NHWC
    scores; the note says it was transposed, the stored figures keep it."""
    from qdeploy.quantize.evaluate import evaluate
    from qrun.model import manifest as mf

    assert small_cnn_out.manifest.converter.extra["nchw_inputs"] == {"image": [1, 3, 16, 16]}
    x = graphs.calibration_nchw(32)
    labels = graphs.ort_run(onnx_models["small_cnn"], x).argmax(1)
    np.savez(tmp_path / "nchw.npz", x=x, y=labels)
    np.savez(tmp_path / "nhwc.npz", x=np.moveaxis(x, 1, -1), y=labels)
    nhwc = evaluate(small_cnn_out.out_dir, tmp_path / "nhwc.npz", save=False)
    nchw = evaluate(small_cnn_out.out_dir, tmp_path / "nchw.npz", save=False)
    assert nhwc.notes == [] and len(nchw.notes) == 1
    assert "NCHW layout" in nchw.notes[0] and "[3, 16, 16] -> [16, 16, 3]" in nchw.notes[0]
    assert (nchw.float_accuracy, nchw.int8_accuracy, nchw.agreement) == \
        (nhwc.float_accuracy, nhwc.int8_accuracy, nhwc.agreement)
    assert nchw.float_accuracy == 1.0

    copy = tmp_path / "deployment"
    shutil.copytree(small_cnn_out.out_dir, copy)
    code, out, err = run_cli("evaluate", copy, "--data", tmp_path / "nchw.npz")
    assert code == 0, err
    assert "note: data" in out and "NCHW layout" in " ".join(out.split())
    assert mf.load(copy).evaluation["notes"] == nchw.notes


def test_evaluate_refuses_data_in_neither_layout(small_cnn_out, tmp_path, run_cli):
    """A shape that is neither NHWC nor NCHW: the NHWC complaint, one line."""
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 3, 8, 8), np.float32), y=np.zeros(4, int))
    code, _, err = run_cli("evaluate", small_cnn_out.out_dir, "--data", tmp_path / "bad.npz")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "the model input wants (16, 16, 3)" in lines[0]


def test_depthwise_cnn_converts_and_agrees(onnx_models, calib_nchw, tmp_path):
    from qdeploy.quantize.convert import convert

    result = convert(onnx_models["depthwise_cnn"], calib_nchw, tmp_path / "out")
    assert "DEPTHWISE_CONV_2D" in result.int8_ops and "TRANSPOSE" not in result.int8_ops
    x = graphs.calibration_nchw(32)
    got, step = int8_scores(result.int8_path, np.moveaxis(x, 1, -1))
    assert np.abs(got - graphs.ort_run(onnx_models["depthwise_cnn"], x)).max() <= STEPS * step


def test_flatten_into_linear_names_the_transpose(onnx_models, calib_nchw, tmp_path, run_cli):
    from qdeploy.edgetpu import preflight

    code, out, err = run_cli("convert", onnx_models["flatten_linear"], "--calib", calib_nchw,
                             "--out", tmp_path / "out")
    assert code == 0, err
    text = " ".join(out.split())
    assert "1 TRANSPOSE op left by onnx2tf; from Flatten flatten of a [1, 4, 8, 8] NCHW map" \
        in text
    # compiler 15 has no TRANSPOSE (log 27); compiler 16 maps one this small (log 34)
    prediction = preflight.preflight(tmp_path / "out" / "model_int8.tflite", compiler="15")
    assert prediction.first_blocker.op == "TRANSPOSE"


def test_image_folder_calibration_and_a_fixed_batch(tmp_path):
    """NCHW model with batch 1 fixed in the graph, calibrated on a folder of PNGs: the
    images are pixels (HWC) whatever the model's layout, and nothing is transposed."""
    from qdeploy.quantize.convert import convert

    model = graphs.save(graphs.small_cnn(batch=1), tmp_path / "fixed.onnx")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for k in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"{k:02d}.png")
    result = convert(model, folder, tmp_path / "out")
    m = result.manifest
    assert m.calibration["kind"] == "images" and m.calibration["samples"] == 12
    assert not result.batch_fixed and m.converter.source_input_shape == [1, 3, 16, 16]
    assert not [n for n in result.notes if "NCHW layout" in n]
    pixels = np.stack([np.asarray(Image.open(folder / f"{k:02d}.png")) for k in range(12)])
    got, step = int8_scores(result.int8_path, pixels)
    want = graphs.ort_run(model, np.moveaxis(pixels.astype(np.float32) / 255, -1, 1))
    assert np.abs(got - want).max() <= STEPS * step


def test_no_network_is_attempted(calib_nchw, tmp_path, monkeypatch):
    """onnx2tf downloads its sample file when it is not in its working directory (for a
    3-channel input of fixed batch, as torch.onnx.export writes without dynamic_axes);
    convert never lets it: with every socket connection refused (and recorded) it converts."""
    model = graphs.save(graphs.depthwise_cnn(batch=1), tmp_path / "batch1.onnx")
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    from qdeploy.quantize.convert import convert

    result = convert(model, calib_nchw, tmp_path / "out")
    assert result.int8_path.is_file() and attempts == []

    import requests
    from qdeploy.quantize import onnx_source

    _, _, onnx2tf = onnx_source.imports()  # what the guard prevents: onnx2tf alone tries

    monkeypatch.chdir(tmp_path)
    with pytest.raises(requests.exceptions.ConnectionError):
        onnx2tf.convert(input_onnx_file_path=str(model), disable_model_save=True,
                        non_verbose=True)
    assert attempts
