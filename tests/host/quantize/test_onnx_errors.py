"""Bad ONNX input to `qdeploy convert`: one `error:` line, non-zero exit, nothing in --out."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from tests.fixtures import onnx_graphs as graphs

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnx2tf")),
    reason="the onnx extra is not installed (scripts/test installs it)")


def assert_one_line_error(code, stderr, *fragments):
    assert code != 0
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in " ".join(lines[0].split()), lines[0]


def left_in(out) -> list:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.npy"
    np.save(path, graphs.calibration_nchw(8))
    return path


def test_missing_extra_says_how_to_install(run_cli, calib, tmp_path, monkeypatch):
    """onnx2tf not importable (None in sys.modules: `import onnx2tf` raises ImportError)."""
    monkeypatch.setitem(sys.modules, "onnx2tf", None)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"whatever: the extra is checked first")
    code, _, err = run_cli("convert", model, "--calib", calib, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "onnx2tf", "pip install -e '.[onnx]'")
    assert "--no-deps" not in err  # one install command: pyproject's onnx extra
    assert left_in(tmp_path / "out") == []


@needs_onnx
def test_not_an_onnx_file(run_cli, calib, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x00\x01 this is not protobuf \xff" * 8)
    code, _, err = run_cli("convert", model, "--calib", calib, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "is not an ONNX model", "torch.onnx.export")
    assert left_in(tmp_path / "out") == []


@needs_onnx
def test_graph_failing_the_checker(run_cli, calib, tmp_path):
    model = graphs.small_cnn()
    model.graph.node[0].input[1] = "no_such_weight"
    path = graphs.save(model, tmp_path / "broken.onnx")
    code, _, err = run_cli("convert", path, "--calib", calib, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "fails onnx.checker", "no_such_weight")
    assert left_in(tmp_path / "out") == []


@needs_onnx
@pytest.mark.parametrize("op,domain,opset", [("Swish", "", 24),
                                             ("Frobnicate", "com.example", graphs.OPSET)])
def test_op_onnx2tf_cannot_convert(run_cli, calib, tmp_path, op, domain, opset):
    model = graphs.with_op(op, domain=domain)
    model.opset_import[0].version = opset
    path = graphs.save(model, tmp_path / f"{op}.onnx")
    code, _, err = run_cli("convert", path, "--calib", calib, "--out", tmp_path / "out")
    assert_one_line_error(code, err, f"has no converter for op {op} (odd_op")
    assert left_in(tmp_path / "out") == []


@needs_onnx
def test_two_inputs_without_data_for_each(run_cli, calib, tmp_path):
    path = graphs.save(graphs.two_inputs(), tmp_path / "two.onnx")
    code, _, err = run_cli("convert", path, "--calib", calib, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "the model has 2 inputs", "image, extra")
    assert left_in(tmp_path / "out") == []


@needs_onnx
def test_nchw_data_declared_nhwc(run_cli, calib, tmp_path):
    path = graphs.save(graphs.small_cnn(), tmp_path / "m.onnx")
    code, _, err = run_cli("convert", path, "--calib", calib, "--out", tmp_path / "out",
                           "--input-layout", "nhwc")
    assert_one_line_error(code, err, "samples of shape (3, 16, 16)", "(16, 16, 3)")


def test_input_layout_is_checked(run_cli, calib, tmp_path):
    code, _, err = run_cli("convert", tmp_path / "m.onnx", "--calib", calib, "--out",
                           tmp_path / "out", "--input-layout", "chw")
    assert_one_line_error(code, err, "--input-layout must be nchw or nhwc")


@needs_onnx
@pytest.mark.slow
def test_op_without_int8_kernel(run_cli, calib, tmp_path):
    path = graphs.save(graphs.with_op("Sin"), tmp_path / "sin.onnx")
    code, _, err = run_cli("convert", path, "--calib", calib, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "op SIN has no int8 kernel")
    assert left_in(tmp_path / "out") == []


@needs_onnx
@pytest.mark.slow
def test_wrong_conversion_refused_with_the_figure(run_cli, calib, tmp_path, monkeypatch):
    """A deliberately wrong conversion: onnx2tf's real model of the image's transpose (H and
    W swapped, as a broken layout would) in place of the model's own. ONNX Runtime and the
    float TFLite disagree; convert refuses and prints by how much."""
    import tf_keras
    from qdeploy.quantize import onnx_source

    real = onnx_source.run_onnx2tf

    def swapped(model, calibration):
        keras_model = real(model, calibration)
        image = tf_keras.Input((16, 16, 3), batch_size=1)
        return tf_keras.Model(image, keras_model(tf_keras.layers.Permute((2, 1, 3))(image)))

    monkeypatch.setattr(onnx_source, "run_onnx2tf", swapped)
    path = graphs.save(graphs.flatten_linear(), tmp_path / "fl.onnx")
    code, _, err = run_cli("convert", path, "--calib", calib, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "onnx2tf converted fl.onnx wrongly",
                          "differs from ONNX Runtime by", "of the output range on output scores")
    figure = float(err.split("differs from ONNX Runtime by ")[1].split("%")[0])
    assert figure > 0.1  # percent of the output range, far beyond the 0.10% tolerance
    assert left_in(tmp_path / "out") == []
