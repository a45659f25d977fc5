"""qrun detect on detectors with known answers: SSDs ending in TFLite_Detection_PostProcess
(both output orders, imported and bare) and an Ultralytics-format YOLOv8 int8 head, on
non-square images, so the letterbox and its mapping back are exercised."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from qdeploy.modelimport.importer import import_model
from qrun.tasks import detect as qdetect

from tests.device import ssd_models
from tests.fixtures.runner import one_error
from tests.fixtures.yolo import CELL, GRID, NAMES
from tests.paths import CORAL

COCO = CORAL / "coco_labels.txt"
TIMING = {"load", "preprocess", "invoke", "postprocess", "total"}


@pytest.fixture(scope="module", params=ssd_models.ORDERS)
def ssd(request, tmp_path_factory):
    """(bare model file, its imported deployment) of one output order."""
    directory = tmp_path_factory.mktemp(f"ssd-{request.param}")
    model = ssd_models.make(directory, request.param)
    return model, import_model(model, out=directory / "dep").out_dir


@pytest.fixture(scope="module")
def yolo_dep(ultralytics_yolo, tmp_path_factory):
    return import_model(ultralytics_yolo, out=tmp_path_factory.mktemp("yolo") / "dep").out_dir


def save(tmp_path, pixels, name="image.png"):
    path = tmp_path / name
    Image.fromarray(pixels).save(path)
    return path


def check_schema(data: dict) -> None:
    assert data["kind"] == "qrun-detect" and data["schema_version"] == 1
    assert set(data["timing_ms"]) == TIMING
    assert data["timing_ms"]["total"] >= data["timing_ms"]["invoke"] > 0
    assert {"requested", "used", "reason", "fell_back"} <= set(data["device"])
    assert {"path", "variant", "decoder"} <= set(data["model"])
    for o in data["objects"]:
        assert set(o) == {"id", "label", "score", "box"}
        assert set(o["box"]) == {"xmin", "ymin", "xmax", "ymax"}


@pytest.mark.slow
def test_the_two_output_orders_put_the_roles_at_different_positions(tmp_path_factory):
    roles = []
    for order in ssd_models.ORDERS:
        directory = tmp_path_factory.mktemp(order)
        model = ssd_models.make(directory, order)
        roles.append(import_model(model, out=directory / "dep").manifest.task.outputs)
    assert roles[0] != roles[1]  # else the tests below could pass with a fixed index


@pytest.mark.parametrize("size, quadrant", [((64, 40), 1), ((40, 64), 2), ((64, 40), 0)])
@pytest.mark.parametrize("bare", [False, True], ids=["imported", "bare"])
def test_ssd_box_in_original_pixels(run_qrun, tmp_path, ssd, size, quadrant, bare):
    model, dep = ssd
    pixels, box = ssd_models.quadrant_image(*size, quadrant)
    out = run_qrun("detect", save(tmp_path, pixels), "--model", model if bare else dep,
                   "--labels", COCO, "--json")
    assert out.code == 0, out.err
    data = json.loads(out.out)
    check_schema(data)
    assert len(data["objects"]) == 1, data["objects"]  # count honoured: no padding rows
    found = data["objects"][0]
    assert found["id"] == quadrant and found["label"] == COCO.read_text().splitlines()[quadrant]
    assert found["score"] > 0.9
    got = [found["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]
    np.testing.assert_allclose(got, box, atol=1.0)
    assert data["model"]["decoder"] == "ssd_postprocess"
    assert data["model"]["layout_from"] == ("graph" if bare else "manifest")


def test_ssd_text_lines_and_annotated_png(run_qrun, tmp_path, ssd):
    _, dep = ssd
    pixels, (x0, y0, x1, y1) = ssd_models.quadrant_image(64, 40, 1)
    annotated = tmp_path / "annotated.png"
    out = run_qrun("detect", save(tmp_path, np.zeros_like(pixels) + pixels // 2), "--model",
                   dep, "--labels", COCO, "--out", annotated, "--threshold", "0.3")
    assert out.code == 0, out.err
    line = out.out.splitlines()[0]
    assert line.startswith("bicycle: 0.") and f"({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f})" in line
    assert out.out.splitlines()[-1].startswith("time: ")
    with Image.open(annotated) as img:
        assert img.format == "PNG" and img.size == (64, 40)
        drawn = np.asarray(img.convert("RGB")).astype(int)
    grey = np.zeros_like(pixels) + pixels // 2
    changed = np.any(drawn != grey, axis=2)
    assert changed[y0 + 1:y1 - 1, x0].any() or changed[y0 + 1:y1 - 1, x0 + 1].any()  # edge
    assert changed[y0:y0 + 12, x0:x0 + 12].any()  # the label, at the box's top-left
    assert not changed[y0 + 16:y1 - 4, x0 + 4:x1 - 4].any()  # below it the inside is left
    assert not changed[30:, :20].any()  # far from the box


def test_ssd_threshold_drops_the_object(run_qrun, tmp_path, ssd):
    _, dep = ssd
    pixels, _ = ssd_models.quadrant_image(64, 40, 1)
    dim = save(tmp_path, pixels // 2)  # score ~0.5
    assert len(json.loads(run_qrun("detect", dim, "--model", dep, "--json", "--threshold",
                                   "0.4").out)["objects"]) == 1
    assert json.loads(run_qrun("detect", dim, "--model", dep, "--json", "--threshold",
                               "0.6").out)["objects"] == []


def lit_image(width: int, height: int, cell: int):
    """A black width x height image with the part Ultralytics' letterbox (centred) puts in
    grid cell `cell` white; and that part's box in the image."""
    scale = min(32 / width, 32 / height)
    pad_x, pad_y = (32 - round(width * scale)) // 2, (32 - round(height * scale)) // 2
    row, col = divmod(cell, GRID)
    box = [(col * CELL - pad_x) / scale, (row * CELL - pad_y) / scale,
           ((col + 1) * CELL - pad_x) / scale, ((row + 1) * CELL - pad_y) / scale]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[y0:y1, x0:x1] = 255
    return pixels, box


@pytest.mark.parametrize("size, cell", [((96, 48), 6), ((48, 96), 9), ((32, 32), 5)])
@pytest.mark.parametrize("bare", [False, True], ids=["imported", "bare"])
def test_yolo_cell_in_original_pixels(run_qrun, tmp_path, ultralytics_yolo, yolo_dep, size,
                                      cell, bare):
    pixels, box = lit_image(*size, cell)
    out = run_qrun("detect", save(tmp_path, pixels), "--model",
                   ultralytics_yolo if bare else yolo_dep, "--json")
    assert out.code == 0, out.err
    data = json.loads(out.out)
    check_schema(data)
    lamps = [o for o in data["objects"] if o["id"] == 0]
    assert len(lamps) == 1, data["objects"]
    lamp = lamps[0]
    assert lamp["label"] == NAMES[0] and lamp["score"] > 0.9  # bare: names from its metadata
    got = [lamp["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]
    np.testing.assert_allclose(got, box, atol=1.0)
    assert data["model"]["decoder"] == "yolov8"
    scores = [o["score"] for o in data["objects"]]
    assert scores == sorted(scores, reverse=True)


def test_yolo_max_and_threshold(run_qrun, tmp_path, yolo_dep):
    image = save(tmp_path, lit_image(32, 32, 5)[0])
    everything = json.loads(run_qrun("detect", image, "--model", yolo_dep, "--json").out)
    assert len(everything["objects"]) == 16  # one box per cell: lamp once, shadow 15 times
    two = json.loads(run_qrun("detect", image, "--model", yolo_dep, "--json", "--max",
                              "2").out)
    assert two["objects"] == everything["objects"][:2]


# --- the decoders on their own ------------------------------------------------------

def test_nms_is_class_aware_and_best_first():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.8, 0.9, 0.7, 0.3])
    classes = np.array([0, 0, 1, 0])
    assert qdetect.nms(boxes, scores, classes, 0.45, 10).tolist() == [1, 2, 3]
    assert qdetect.nms(boxes, scores, classes, 0.95, 10).tolist() == [1, 0, 2, 3]
    assert qdetect.nms(boxes, scores, classes, 0.45, 2).tolist() == [1, 2]


def test_ssd_rows_past_count_are_padding():
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [-0.1, 0, 1.2, 1], [0, 0, 1, 1]], np.float32)
    ids, scores, xyxy = qdetect.ssd_objects(boxes, np.array([3., 1., 7.]),
                                            np.array([0.9, 0.5, 0.99]), np.array([2.]), 0.4)
    assert ids.tolist() == [3, 1] and scores.tolist() == pytest.approx([0.9, 0.5])
    np.testing.assert_allclose(xyxy, [[0.2, 0.1, 0.6, 0.5], [0, 0, 1, 1]], atol=1e-6)


@pytest.mark.parametrize("decoder", ["yolov8", "yolov5"])
def test_yolo_threshold_on_quantized_scores(decoder):
    from qrun.model.tensors import TensorSpec

    spec = TensorSpec(shape=[1, 6, 3], dtype="int8", scale=1 / 255, zero_point=-128)
    # three anchors: x, y, w, h (normalised), class 0, class 1 (yolov5: objectness first)
    real = np.array([[0.5, 0.5, 0.2, 0.2, 0.9, 0.1],
                     [0.2, 0.2, 0.1, 0.1, 0.1, 0.26],
                     [0.8, 0.8, 0.1, 0.1, 0.2, 0.0]])
    if decoder == "yolov5":
        real = np.insert(real, 4, 1.0, axis=1)
        spec = TensorSpec(shape=[1, 3, 7], dtype="int8", scale=1 / 255, zero_point=-128)
    q = (np.round(real * 255) - 128).astype(np.int8)
    head = q.T[None] if decoder == "yolov8" else q[None]
    xywh, ids, scores = qdetect.yolo_candidates(head, spec, decoder, 0.25)
    assert ids.tolist() == [0, 1]  # the third anchor's best score 0.2 is below 0.25
    np.testing.assert_allclose(xywh[0], [0.5, 0.5, 0.2, 0.2], atol=1 / 255)
    assert scores[0] == pytest.approx(0.9, abs=1 / 255)
    floor = qdetect.score_floor(0.25, 1 / 255, -128, np.int8)
    assert (floor + 128) / 255 > 0.25 >= (floor - 1 + 128) / 255


# --- bad input -----------------------------------------------------------------------

def test_wrong_task_names_the_command(run_qrun, tmp_path, yolo_dep):
    image = save(tmp_path, lit_image(32, 32, 5)[0])
    one_error(run_qrun("classify", image, "--model", yolo_dep),
              "task is detect", "run it with qrun detect")
    one_error(run_qrun("segment", image, "--model", yolo_dep),
              "task is detect", "not segment", "run it with qrun detect")
    one_error(run_qrun("pose", image, "--model", yolo_dep), "run it with qrun detect")


@pytest.mark.parametrize("args, needles", [
    (("--threshold", "1.5"), ("--threshold must be between 0 and 1", "1.5")),
    (("--iou", "-0.1"), ("--iou must be between 0 and 1",)),
    (("--max", "0"), ("--max must be at least 1",)),
    (("--out", "/nonexistent-dir/x.png"), ("directory /nonexistent-dir does not exist",)),
])
def test_bad_options_are_one_line(run_qrun, tmp_path, yolo_dep, args, needles):
    image = save(tmp_path, lit_image(32, 32, 5)[0])
    one_error(run_qrun("detect", image, "--model", yolo_dep, *args), *needles)


def test_a_file_that_is_not_an_image(run_qrun, tmp_path, yolo_dep):
    fake = tmp_path / "photo.jpg"
    fake.write_text("not a picture")
    one_error(run_qrun("detect", fake, "--model", yolo_dep), "photo.jpg is not a readable image")


def test_labels_that_do_not_fit_the_classes(run_qrun, tmp_path, yolo_dep):
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    one_error(run_qrun("detect", save(tmp_path, lit_image(32, 32, 5)[0]), "--model", yolo_dep,
                       "--labels", labels), "has 3 labels", "outputs 2 scores")


def test_an_unknown_layout_names_the_shapes_and_raw(run_qrun, tmp_path):
    classifier = CORAL / "mobilenet_v1_0.25_128_quant.tflite"
    line = one_error(run_qrun("detect", CORAL / "cat.bmp", "--model", classifier),
                     "[[1, 1001]]", "--task raw")
    assert "no detection decoder" in line




