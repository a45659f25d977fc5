"""`qdeploy evaluate --layers`: the culprit first, with its reason; clean models near rounding
noise; imported float/int8 pairs matched by name; the store, the plot and the page; bad input
as one error line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from qrun.errors import UserError

pytestmark = pytest.mark.slow  # converts three small models once per session


@pytest.fixture(scope="module")
def reports_of(layer_models):
    from qdeploy.quantize.layers import analyse

    return {kind: analyse(directory) for kind, (_, directory) in layer_models.items()}


def test_concatenation_of_a_scaled_branch_comes_first_with_its_inputs(reports_of):
    report = reports_of["concat"]
    first = report.worst_first()[0]
    concat = next(r for r in report.rows if r.op == "CONCATENATION")
    assert first.position in (concat.position, concat.position + 1)
    assert first.flag == "concat"
    assert "normal" in first.reason and "big" in first.reason  # both inputs, with ranges
    assert "normalise" in first.fix
    # The debugger ran from the recorded source and representative dataset.
    assert report.per_layer.startswith("QuantizationDebugger")
    # Downstream of the concatenation the int8 model is far from float; before it, not.
    after = next(r for r in report.rows if r.position == concat.position + 1)
    assert after.cumulative_rmse_scale > 5
    normal = next(r for r in report.rows if "normal" in r.tensor)
    assert normal.cumulative_rmse_scale < 0.5


def test_activation_with_an_outlier_range_is_flagged_first(reports_of):
    report = reports_of["outlier"]
    first = report.worst_first()[0]
    assert first.flag == "wide" and "spike" in first.tensor, first
    assert "clip the activation" in first.fix
    after = report.rows[first.position + 1]  # the 1x1 conv that scales channel 0 back
    assert first.range > 100 * after.range and first.severity > 100
    # What it costs: the next layer, fed the coarse steps, loses far beyond rounding.
    assert after.rmse_scale > 5 and after.cumulative_rmse_scale > 5
    assert first.rmse_scale < 0.5  # while the wide tensor itself only rounds


def test_clean_model_rows_stay_near_rounding_noise(reports_of):
    report = reports_of["clean"]
    assert [r.flag for r in report.rows if r.flag] == []
    per_layer = {r.op: r.rmse_scale for r in report.rows
                 if r.op in ("CONV_2D", "FULLY_CONNECTED")}
    assert len(per_layer) == 2 and all(0.2 < e < 0.5 for e in per_layer.values()), per_layer
    assert abs(report.rows[1].rmse_scale - 0.29) < 0.05  # the first conv: rounding alone
    cumulative = [r.cumulative_rmse_scale for r in report.rows
                  if r.cumulative_rmse_scale is not None]
    assert np.median(cumulative) < 1.0, cumulative


def test_softmax_fed_a_wide_range_is_flagged(reports_of):
    report = reports_of["softmax"]
    first = report.worst_first()[0]
    assert (first.op, first.flag) == ("SOFTMAX", "fixed-scale"), first
    assert first.scale == pytest.approx(1 / 256) and "more than the 64" in first.reason


def test_compare_per_tensor_converts_again(layer_models):
    from qdeploy.quantize.layers import analyse

    report = analyse(layer_models["outlier"][1], compare="per-tensor")
    weighted = [r for r in report.rows if r.op in ("CONV_2D", "FULLY_CONNECTED")]
    assert all(r.per_tensor_rmse_scale is not None for r in weighted)
    # One scale for the spike channel and the others: the next conv's weights lose most.
    assert max(r.per_tensor_rmse_scale - r.rmse_scale for r in weighted) > 0.05


def test_cli_stores_prints_and_draws(layer_models, run_cli, tmp_path):
    from PIL import Image

    from qdeploy.reports import layers as layer_store
    from qdeploy.reports.store import open_store

    directory = layer_models["concat"][1]
    plot, page = tmp_path / "layers.png", tmp_path / "layers.html"
    code, out, err = run_cli("evaluate", directory, "--layers", "--reports", tmp_path / "rep",
                             "--plot", plot, "--html", page)
    assert code == 0, err
    assert "concat" in out and "fix: normalise" in out and "of 9 int8 tensors matched" in out
    with open_store(tmp_path / "rep", create=False) as store:
        stored = layer_store.latest_layer_reports(store)
    assert [r.model for r in stored] == ["concat"]
    assert stored[0].worst_first()[0].flag == "concat"
    assert 'class="layers-plot"' in page.read_text()
    check_plot(Image.open(plot), stored[0])
    code, out, _ = run_cli("evaluate", directory, "--layers", "--json", "--reports",
                           tmp_path / "rep")
    data = json.loads(out[out.index("{"):])
    assert data["rows"][data["worst_first"][0]]["flag"] == "concat"


def check_plot(image, report) -> None:
    """Size, not blank, and red bars exactly at the flagged layers' x positions."""
    rgb = np.asarray(image.convert("RGB")).astype(int)
    assert image.size == (1200, 500)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20
    dark = (rgb.sum(axis=2) < 100)
    columns = np.flatnonzero(dark.sum(axis=0) > 0.5 * rgb.shape[0] * 0.5)  # the axes' spines
    left, right = columns.min(), columns.max()
    bottom = np.flatnonzero(dark[:, left + 5:right - 5].all(axis=1)).max()
    n = len(report.rows)
    red = (abs(rgb[..., 0] - 0xD6) < 12) & (abs(rgb[..., 1] - 0x27) < 12) & \
        (abs(rgb[..., 2] - 0x28) < 12)
    for r in report.rows:
        x = int(left + (r.position + 0.7) / n * (right - left))
        is_red = red[bottom - 4, x - 2:x + 3].any()
        if r.flag:
            assert is_red, f"flagged layer {r.position} not red at x={x}"
        elif r.error > 0.5:
            assert not is_red and (rgb[bottom - 4, x] != 255).any(), r.position


def test_report_html_links_the_layer_table_and_plot(layer_models, run_cli, tmp_path,
                                                    int8_report):
    from qdeploy.reports.store import open_store

    reports = tmp_path / "rep"
    with open_store(reports) as store:
        store.add_report(int8_report, "local", tmp_path / "bench.json", model_name="concat")
    code, _, err = run_cli("evaluate", layer_models["concat"][1], "--layers", "--reports",
                           reports)
    assert code == 0, err
    code, _, err = run_cli("report", "--reports", reports, "--html", tmp_path / "r.html")
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert 'href="#layers-concat"' in page and 'id="layers-concat"' in page
    assert page.count("data:image/png;base64,") == 2 and "CONCATENATION" in page


@pytest.fixture(scope="module")
def imported_pair(tmp_path_factory, layer_calib):
    """A float and an int8 .tflite converted elsewhere (TF directly, not qdeploy), the int8
    one imported with qdeploy import."""
    from qdeploy.modelimport.importer import import_model
    from qdeploy.quantize import converter, sources
    from tests.fixtures.layers import build

    root = tmp_path_factory.mktemp("imported-pair")
    build("concat").save(root / "m.keras")
    source = sources.load_source_model(root / "m.keras")
    calib = {"x": np.load(layer_calib)}
    saved = converter.export_fixed_batch(source, root / "saved", calib)
    (root / "m_float.tflite").write_bytes(converter.convert_float(saved))
    (root / "m_int8.tflite").write_bytes(converter.convert_int8(
        saved, calib, converter.IOTypes("uint8", "uint8")))
    import_model(root / "m_int8.tflite", out=root / "deployment")
    return root


def test_imported_pair_is_matched_by_name(imported_pair, layer_calib, run_cli, tmp_path):
    code, out, err = run_cli("evaluate", imported_pair / "deployment", "--layers", "--float",
                             imported_pair / "m_float.tflite", "--data", layer_calib,
                             "--reports", tmp_path, "--json")
    assert code == 0, err
    data = json.loads(out[out.index("{"):])
    assert data["matched"] == 8 and data["int8_tensors"] == 9
    assert data["per_layer"].startswith("output quantization")
    assert data["rows"][data["worst_first"][0]]["flag"] == "concat"


def one_error(run_cli, *args) -> str:
    code, out, err = run_cli(*args)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("Running")]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), (code, out, err)
    assert "Traceback" not in err
    return lines[0]


def test_bad_input_is_one_error_line(imported_pair, layer_models, run_cli, tmp_path):
    # An int8-only import: no float model, no source to rebuild one.
    line = one_error(run_cli, "evaluate", imported_pair / "deployment", "--layers",
                     "--reports", tmp_path)
    assert "no float model and no source model" in line and "--float" in line
    # Data of another shape.
    np.save(tmp_path / "wrong.npy", np.zeros((4, 5, 5, 1), np.float32))
    line = one_error(run_cli, "evaluate", layer_models["clean"][1], "--layers", "--data",
                     tmp_path / "wrong.npy", "--reports", tmp_path)
    assert "(5, 5, 1)" in line
    # The layer report's options without --layers; evaluate without --data.
    line = one_error(run_cli, "evaluate", layer_models["clean"][1], "--plot", tmp_path / "p.png",
                     "--compare", "per-tensor")
    assert "--compare, --plot need --layers" in line
    assert "--data is needed" in one_error(run_cli, "evaluate", layer_models["clean"][1])
    # A float model with nothing in common with the int8 one.
    line = one_error(run_cli, "evaluate", imported_pair / "deployment", "--layers",
                     "--float", unrelated_float(tmp_path), "--reports", tmp_path)
    assert "no tensor names in common: 0 of 9 quantized int8 tensors" in line
    assert "the 3 float tensors" in line  # conv, reshape, fully connected


def unrelated_float(tmp_path: Path) -> Path:
    """The float .tflite of another model on the same input: other layer names, 5 outputs."""
    from qdeploy.quantize import converter, sources
    from qdeploy.quantize.tfquiet import keras as import_keras

    keras = import_keras()
    keras.utils.set_random_seed(1)
    x = keras.Input((8, 8, 1), name="x")
    y = keras.layers.Dense(5, name="other_head")(keras.layers.Flatten(name="other_flat")(
        keras.layers.Conv2D(2, 3, name="other_conv")(x)))
    keras.Model(x, y).save(tmp_path / "other.keras")
    source = sources.load_source_model(tmp_path / "other.keras")
    saved = converter.export_fixed_batch(source, tmp_path / "other-saved")
    path = tmp_path / "other_float.tflite"
    path.write_bytes(converter.convert_float(saved))
    return path


def test_onnx_deployment_is_explained_through_its_float_tflite(onnx_models, tmp_path):
    """small_cnn (Conv, BatchNorm, Relu, pools, Gemm, Softmax) converted from ONNX with its
    calibration data in NCHW: --layers reads that data again (transposed) and matches
    tensors by name with the float TFLite onnx2tf made."""
    from importlib.util import find_spec

    if find_spec("onnx2tf") is None or find_spec("onnxruntime") is None:
        pytest.skip("onnx2tf/onnxruntime missing: install the onnx extra (scripts/test does)")
    from qdeploy.quantize.convert import convert
    from qdeploy.quantize.layers import PER_LAYER_REQUANTIZED, analyse
    from tests.fixtures import onnx_graphs

    calib = tmp_path / "calib_nchw.npy"
    np.save(calib, onnx_graphs.calibration_nchw(16))
    model = tmp_path / "small_cnn.onnx"  # a copy: the session's file stays as other tests
    shutil.copyfile(onnx_models["small_cnn"], model)  # expect it (onnx2tf rewrites it)
    convert(model, calib, tmp_path / "out", num_calib=16)
    report = analyse(tmp_path / "out")
    assert report.per_layer == PER_LAYER_REQUANTIZED and report.samples == 16
    assert any("ONNX" in note for note in report.notes)
    assert report.matched >= report.int8_tensors - 2, (report.matched, report.int8_tensors)
    softmax = next(r for r in report.rows if r.op == "SOFTMAX")
    assert softmax.scale == pytest.approx(1 / 256)
    assert softmax.cumulative_rmse_scale is not None
