"""`qdeploy convert` of YOLO detectors as torch exports them to ONNX (tests/fixtures/onnx_yolo):
the int8 deployment's `qrun detect` finds what ONNX Runtime finds on the float graph,
the user's file is never touched, a relative path converts, and the body lands on the
Edge TPU (no TRANSPOSE around C2f blocks)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import onnx_yolo as Y

pytestmark = [pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnx2tf")),
    reason="the onnx extra is not installed (scripts/test installs it: pip install "
           "'qdeploy[onnx]' and onnx2tf --no-deps)"), pytest.mark.slow]

IMAGES = [(96, 64), (64, 64), (64, 96)]  # letterboxed into the 64x64 input
THRESHOLD, SCORE_TOLERANCE = 0.25, 0.1  # detections within the tolerance of the threshold
# may fall either side of it in int8; every other one must match


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def yolo_converted(onnx_yolo_dir, tmp_path_factory) -> dict:
    """layout -> (result, sha256 before, sha256 after); YOLOv8 converted by a relative path
    from the model's folder, as a user types it."""
    from qdeploy.quantize.convert import convert

    done = {}
    for layout in ("yolov8", "yolov5"):
        model = onnx_yolo_dir / f"{layout}.onnx"
        before = sha256(model)
        out = tmp_path_factory.mktemp(f"{layout}-out")
        if layout == "yolov8":
            here = os.getcwd()
            os.chdir(onnx_yolo_dir)
            try:
                result = convert(Path(f"{layout}.onnx"), Path("calib"), out, num_calib=24)
            finally:
                os.chdir(here)
        else:
            result = convert(model, onnx_yolo_dir / "calib", out, num_calib=24)
        done[layout] = (result, before, sha256(model))
    return done


def ort_objects(model: Path, picture, threshold=0.25, iou=0.45) -> list:
    """ONNX Runtime's detections on the image letterboxed as qrun detect does it:
    (class, score, box in image pixels), best first."""
    from PIL import Image

    from qrun.tasks import detect, letterbox

    pixels, box = letterbox.fit(picture, (Y.SIZE, Y.SIZE), centre=True,
                                fill=letterbox.ULTRALYTICS_FILL, resample=Image.BILINEAR)
    head = Y.ort_output(model, (pixels.astype(np.float32) / 255).transpose(2, 0, 1)[None])
    rows = head[0] if head.shape[1] < head.shape[2] else head[0].T  # [4 + C (+1), N]
    v5 = head.shape[1] > head.shape[2]
    scores = rows[5:] * rows[4] if v5 else rows[4:]
    ids, best = scores.argmax(0), scores.max(0)
    keep = best > threshold
    boxes = detect.xywh_to_xyxy(rows[:4, keep].T.astype(np.float64))
    kept = detect.nms(boxes, best[keep].astype(np.float64), ids[keep], iou, 100)
    mapped = letterbox.boxes_to_image(boxes[kept], box)
    return list(zip(ids[keep][kept], best[keep][kept], mapped))


@pytest.mark.parametrize("layout", ["yolov8", "yolov5"])
def test_int8_detections_match_onnx_runtime(layout, yolo_converted, onnx_yolo_dir, tmp_path):
    from PIL import Image

    from qrun.tasks.detect import detect, iou

    result = yolo_converted[layout][0]
    matched = 0
    for k, size in enumerate(IMAGES):
        path = tmp_path / f"drawn_{k}.png"
        Image.fromarray(Y.drawn_image(*size, seed=k)).save(path)
        want = ort_objects(onnx_yolo_dir / f"{layout}.onnx", Image.open(path).convert("RGB"))
        got = detect(path, model=result.out_dir, threshold=THRESHOLD).objects
        sure = [w for w in want if w[1] >= THRESHOLD + SCORE_TOLERANCE]
        assert sure, "the fixture's squares should fire"
        for cls, score, box in sure:  # each confident float detection is found in int8
            fits = [o for o in got if o.id == cls and abs(o.score - score) <= SCORE_TOLERANCE
                    and iou(np.asarray(box), np.asarray([list(o.bbox)]))[0] >= 0.7]
            assert fits, f"no int8 detection of class {cls} {box} ({score:.2f}) in {got}"
            matched += 1
        for o in got:  # and int8 finds nothing confident that float does not
            if o.score >= THRESHOLD + SCORE_TOLERANCE:
                assert any(o.id == cls and iou(np.asarray(list(o.bbox)), box[None])[0] >= 0.7
                           for cls, _, box in want), f"int8 {o} is not among {want}"
    assert matched >= len(IMAGES) + 2  # most squares found by float and int8 alike


@pytest.mark.parametrize("layout", ["yolov8", "yolov5"])
def test_manifest_records_normalised_boxes(layout, yolo_converted):
    result = yolo_converted[layout][0]
    task = result.manifest.task
    assert task.kind == "detect" and task.decoder == layout
    assert task.params["boxes"] == "normalised"
    assert any("divided by the input size" in n for n in result.notes)
    out = result.manifest.outputs[0]
    assert out.scale < 2.0 / 255  # boxes and scores share 0..1, not 0..64 pixels


@pytest.mark.parametrize("layout", ["yolov8", "yolov5"])
def test_the_users_onnx_file_is_never_modified(layout, yolo_converted):
    _, before, after = yolo_converted[layout]
    assert before == after


def test_a_relative_path_converts(yolo_converted):
    result = yolo_converted["yolov8"][0]
    assert result.manifest.converter.source_model == "yolov8.onnx"
    assert result.int8_path.is_file()


def test_preflight_puts_the_body_on_the_edge_tpu(yolo_converted):
    """One subgraph; everything before the head's reshapes is mapped, and no TRANSPOSE
    is left in the body (C2f blocks, residual Adds)."""
    from qdeploy.edgetpu.preflight import preflight
    from qdeploy.modelfile import tflite_graph

    result = yolo_converted["yolov8"][0]
    p = preflight(result.out_dir)
    ops = [op.name for op in tflite_graph.load(result.int8_path).ops]
    assert p.subgraphs == 1
    assert p.on_edgetpu >= 0.75 * len(ops), (p.on_edgetpu, len(ops), p.cpu_ops)
    # Every TRANSPOSE left is the head's own layout step, right before its RESHAPE to
    # [1, 4+C, N] or its SOFTMAX over the 16 DFL bins (onnx2tf 1.28 interleaves the levels'
    # heads with the body; 1.29 after it): none sits between the body's convolutions,
    # slices, residual Adds (Sub/Mul) and concatenations.
    transposes = [i for i, op in enumerate(ops) if op == "TRANSPOSE"]
    assert transposes and all(ops[i + 1] in ("RESHAPE", "SOFTMAX") for i in transposes), ops
    body = ops[:transposes[0]]
    assert body.count("CONV_2D") >= 10 and body.count("CONCATENATION") >= 3
    # the first op left on the CPU is in the head: its TRANSPOSE under compiler 15; under 16,
    # which maps TRANSPOSEs, slices and the DFL's SOFTMAX of this small head's sizes (the
    # YOLOv8n exports of logs 34 and 37 refuse them only from 40x40 grids), none is left
    assert p.first_blocker is None and p.on_edgetpu == len(ops), p.cpu_ops
    p15 = preflight(result.out_dir, compiler="15")
    assert p15.first_blocker is not None and p15.first_blocker.op == "TRANSPOSE"
    assert p15.first_blocker.index == transposes[0]


def test_a_c2f_block_with_a_residual_add_leaves_no_transpose(tmp_path):
    """A C2f block (Split, bottleneck with a residual Add, Concat) through onnx2tf:
    the next onnx2tf release cannot bring TRANSPOSE ops back unseen."""
    import onnx

    from qdeploy.modelfile import tflite_graph
    from qdeploy.quantize.convert import convert

    g = Y.Graph(np.random.default_rng(3))
    x = g.cbs("images", 3, 16, 3, 2)
    x = g.c2f(x, 16, 16, 2)
    g.nodes.append(g.helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    g.nodes.append(g.helper.make_node("Flatten", ["pooled"], ["features"]))
    graph = g.helper.make_graph(
        g.nodes, "c2f",
        [g.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 32, 48])],
        [g.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [1, 16])],
        g.inits)
    model = g.helper.make_model(graph, opset_imports=[g.helper.make_opsetid("", Y.OPSET)])
    model.ir_version = 8
    path = Y.save(model, tmp_path / "c2f.onnx")
    calib = np.random.default_rng(0).random((8, 3, 32, 48), dtype=np.float32)
    np.save(tmp_path / "calib.npy", calib)
    result = convert(path, tmp_path / "calib.npy", tmp_path / "out", num_calib=8)
    ops = [op.name for op in tflite_graph.load(result.int8_path).ops]
    assert "TRANSPOSE" not in ops, ops
    assert "CONCATENATION" in ops and "STRIDED_SLICE" in ops or "SPLIT" in ops


def test_calibration_images_are_letterboxed_as_qrun_detect_feeds_them(yolo_converted):
    """The 96x64 calibration images sit centred in the 64x64 input, padded with 114, as
    qrun detect letterboxes a YOLO head's input; the manifest says so."""
    result = yolo_converted["yolov8"][0]
    assert result.manifest.calibration["resize"] == "letterbox"
    reference = np.load(result.out_dir / "reference_inputs.npy")  # the samples as read
    assert reference.shape[1:] == (Y.SIZE, Y.SIZE, 3)
    pad = (Y.SIZE - round(64 * Y.SIZE / 96)) // 2
    assert pad > 0 and (reference[:, :pad] == 114).all() and (reference[:, -pad:] == 114).all()
    assert (reference[:, pad:-pad] != 114).any()
