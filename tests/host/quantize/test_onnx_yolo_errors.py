"""Bad input to `qdeploy convert` of a YOLO detector from ONNX: one `error:` line, a
non-zero exit, nothing in --out; and `--input-shape` fixing a dynamic image size."""

from __future__ import annotations

import hashlib
import importlib.util

import pytest

from tests.fixtures import onnx_yolo as Y
from tests.host.quantize.test_onnx_errors import assert_one_line_error, left_in

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnx2tf")),
    reason="the onnx extra is not installed (scripts/test installs it)")


def dynamic_size(tmp_path):
    """The YOLOv8 graph exported with dynamic_axes on height and width."""
    model = Y.build("yolov8")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    return Y.save(model, tmp_path / "dynamic.onnx")


def test_a_dynamic_image_size_without_input_shape_is_refused(run_cli, tmp_path):
    model = dynamic_size(tmp_path)
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    calib = Y.calibration_images(tmp_path / "calib", count=2)
    out = tmp_path / "out"
    code, _, err = run_cli("convert", model, "--calib", calib, "--out", out)
    assert_one_line_error(code, err, "input images of dynamic.onnx has shape [1, 3, '?', '?']",
                          "--input-shape", "1,3,640,640")
    assert left_in(out) == [] and hashlib.sha256(model.read_bytes()).hexdigest() == before


def test_an_input_shape_that_does_not_fit_is_refused(run_cli, tmp_path):
    model = dynamic_size(tmp_path)
    calib = Y.calibration_images(tmp_path / "calib", count=2)
    code, _, err = run_cli("convert", model, "--calib", calib, "--out", tmp_path / "out",
                           "--input-shape", "1,1,64,64")
    assert_one_line_error(code, err, "--input-shape '1,1,64,64' does not fit input images",
                          "e.g. 1,3,640,640")
    assert left_in(tmp_path / "out") == []


@pytest.mark.slow
def test_input_shape_fixes_a_dynamic_image_size(run_cli, tmp_path):
    from qrun.model import manifest

    model = dynamic_size(tmp_path)
    calib = Y.calibration_images(tmp_path / "calib", count=4)
    code, stdout, err = run_cli("convert", model, "--calib", calib, "--out", tmp_path / "out",
                                "--input-shape", f"1,3,{Y.SIZE},{Y.SIZE}")
    assert code == 0, err
    m = manifest.load(tmp_path / "out")
    assert m.inputs[0].shape == [1, Y.SIZE, Y.SIZE, 3]
    assert m.task.decoder == "yolov8" and m.task.params["boxes"] == "normalised"


def test_a_calibration_folder_without_images_is_refused(run_cli, tmp_path):
    model = Y.save(Y.build("yolov8"), tmp_path / "yolov8.onnx")
    empty = tmp_path / "calib"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here\n")
    out = tmp_path / "out"
    code, _, err = run_cli("convert", model, "--calib", empty, "--out", out)
    assert_one_line_error(code, err, f"{empty} contains no images")
    assert left_in(out) == []


def unknown_head(tmp_path):
    """A detector (metadata task: detect) whose output [1, 6, 80, 1] no decoder reads."""
    import onnx

    model = Y.build("yolov8")
    model.graph.node[-1].output[0] = "head"
    axes = onnx.numpy_helper.from_array(__import__("numpy").array([3], "int64"), "axes")
    model.graph.initializer.append(axes)
    model.graph.node.append(onnx.helper.make_node("Unsqueeze", ["head", "axes"], ["output0"]))
    out = model.graph.output[0].type.tensor_type.shape
    out.dim.add().dim_value = 1
    return Y.save(model, tmp_path / "odd_head.onnx")


def test_a_detector_head_no_decoder_reads_is_refused_naming_shapes_and_task_raw(run_cli,
                                                                                tmp_path):
    model = unknown_head(tmp_path)
    calib = Y.calibration_images(tmp_path / "calib", count=2)
    code, _, err = run_cli("convert", model, "--calib", calib, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "odd_head.onnx is a detector", "output0 [1, 6, 80, 1]",
                          "--task raw")
    assert left_in(tmp_path / "out") == []


@pytest.mark.slow
def test_task_raw_converts_a_head_no_decoder_reads(run_cli, tmp_path):
    from qrun.model import manifest

    model = unknown_head(tmp_path)
    calib = Y.calibration_images(tmp_path / "calib", count=4)
    code, _, err = run_cli("convert", model, "--calib", calib, "--out", tmp_path / "out",
                           "--task", "raw")
    assert code == 0, err
    assert manifest.load(tmp_path / "out").task.kind == "raw"


def test_onnx2tfs_own_last_error_line_is_shown_not_its_exit_code():
    """onnx2tf prints its error in colour and then exits with a bare code (1)."""
    from qdeploy.quantize.onnx_source import last_error

    log = ("\x1b[32mINFO:\x1b[0m input_op_name: images\n"
           "\x1b[31mERROR:\x1b[0m The specified *.onnx file does not exist. "
           "input_onnx_file_path: yolov8n.onnx\n")
    assert last_error(log) == ("The specified *.onnx file does not exist. "
                               "input_onnx_file_path: yolov8n.onnx")
