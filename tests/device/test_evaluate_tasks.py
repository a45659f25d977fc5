"""Evaluation of Coral's real segmenter and pose model against published ground truth:
DeepLab v3 on bird_segmentation.bmp with its mask, MoveNet on squat.bmp with libcoral's
reference keypoints; `qrun evaluate` and `qdeploy evaluate` on them; and bad data sets,
one error line each."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from qdeploy.modelimport.importer import import_model
from qrun.measure import evaluate as ev
from qrun.tasks.pose import pose
from qrun.tasks.segment import segment
from tests.paths import CORAL

DEEPLAB = CORAL / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
MOVENET = "movenet_single_pose_lightning_ptq"
BIRD = CORAL / "bird_segmentation.bmp"
SQUAT = CORAL / "squat.bmp"
WIDTH, HEIGHT = 500, 610  # squat.bmp
VISIBLE = 0.4  # libcoral's movenet test: keypoints scoring more are compared


@pytest.fixture(scope="module")
def deeplab_dep(tmp_path_factory):
    return import_model(DEEPLAB, labels=CORAL / "pascal_voc_segmentation_labels.txt",
                        out=tmp_path_factory.mktemp("deeplab") / "dep").out_dir


@pytest.fixture(scope="module")
def movenet_dep(tmp_path_factory):
    """MoveNet's Edge TPU model with its CPU twin found beside it."""
    return import_model(CORAL / f"{MOVENET}_edgetpu.tflite",
                        out=tmp_path_factory.mktemp("movenet") / "dep").out_dir


def bird_data(directory, mask_size=None):
    (directory / "images").mkdir(parents=True)
    (directory / "masks").mkdir()
    shutil.copyfile(BIRD, directory / "images" / "bird.bmp")
    with Image.open(CORAL / "bird_segmentation_mask.bmp") as m:
        m = m.convert("L")
        (m.resize(mask_size) if mask_size else m).save(directory / "masks" / "bird.png")
    return directory


def squat_data(directory):
    """COCO person-keypoints annotations of squat.bmp from libcoral's reference keypoints."""
    with open(CORAL / f"{MOVENET}_reference.csv", newline="") as f:
        rows = [(float(r["keypoint_x"]) * WIDTH, float(r["keypoint_y"]) * HEIGHT,
                 float(r["keypoint_score"])) for r in csv.DictReader(f)]
    seen = [(x, y) for x, y, s in rows if s > VISIBLE]
    xs, ys = [p[0] for p in seen], [p[1] for p in seen]
    box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    keypoints = [v for x, y, s in rows for v in ((x, y, 2) if s > VISIBLE else (0, 0, 0))]
    directory.mkdir(parents=True)
    shutil.copyfile(SQUAT, directory / "squat.bmp")
    (directory / "annotations.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "squat.bmp", "width": WIDTH, "height": HEIGHT}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "keypoints": keypoints,
                         "num_keypoints": len(seen), "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(17)],
                        "skeleton": []}]}))
    return directory


def test_deeplab_miou_and_pixel_accuracy_on_the_published_mask(deeplab_dep, tmp_path):
    doc = ev.evaluate(deeplab_dep, bird_data(tmp_path / "bird"))
    figures = doc["variants"]["int8"]
    with Image.open(CORAL / "bird_segmentation_mask.bmp") as m:
        truth = np.asarray(m.convert("L"), np.int64)
    predicted = segment(BIRD, deeplab_dep, device="cpu").class_map
    valid = truth != 255
    assert figures["pixel_accuracy"] == pytest.approx(np.mean(predicted[valid] == truth[valid]))
    assert figures["pixel_accuracy"] > 0.9  # pycoral's segment test
    ious = {c["name"]: c["iou"] for c in figures["per_class"]}
    assert ious["bird"] > 0.5 and ious["background"] > 0.9
    present = set(np.unique(truth[valid])) | set(np.unique(predicted[valid]))
    assert {c["id"] for c in figures["per_class"]} == present  # in the mask or predicted
    assert figures["miou"] == pytest.approx(np.mean(list(ious.values())))


def test_movenet_oks_ap_is_what_pycocotools_computes(movenet_dep, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = squat_data(tmp_path / "squat")
    doc = ev.evaluate(movenet_dep, data)
    assert list(doc["variants"]) == ["int8"]  # the Edge TPU model: skipped, no TPU here
    assert doc["skipped"] and doc["skipped"][0]["variant"] == "edgetpu"
    found = pose(SQUAT, movenet_dep, device="cpu").keypoints
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data / "annotations.json"))
        result = {"image_id": 7, "category_id": 1, "score": float(np.mean([k.score for k in found])),
                  "keypoints": [v for k in found for v in (k.x, k.y, 1)]}
        e = COCOeval(gt, gt.loadRes([result]), "keypoints")
        e.evaluate(), e.accumulate(), e.summarize()
    assert doc["variants"]["int8"]["oks_ap"] == pytest.approx(e.stats[0], abs=1e-12)
    assert doc["variants"]["int8"]["oks_ap"] > 0.5  # the model agrees with libcoral's


def test_qrun_evaluate_prints_figures_and_json(run_qrun, deeplab_dep, tmp_path):
    data = bird_data(tmp_path / "bird")
    text = run_qrun("evaluate", data, "--model", deeplab_dep)
    assert text.code == 0, text.err
    assert "segment on 1 images (masks layout)" in text.out and "mIoU" in text.out
    out = run_qrun("evaluate", data, "--model", deeplab_dep, "--json")
    doc = json.loads(out.out)
    assert doc["kind"] == "qrun-evaluate" and doc["metric"] == "miou"
    assert doc["variants"]["int8"]["device"] == "cpu"


def test_qdeploy_evaluate_table_json_and_manifest(run_cli, movenet_dep, tmp_path):
    data = squat_data(tmp_path / "squat")
    code, out, err = run_cli("evaluate", movenet_dep, "--data", data, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc["variants"]["int8"]) >= {"oks_ap", "oks_ap50", "device", "images_per_s"}
    assert any("CPU twin" in n for n in doc["notes"])
    stored = json.loads((movenet_dep / "manifest.json").read_text())["evaluation"]
    assert stored["variants"]["int8"]["oks_ap"] == doc["variants"]["int8"]["oks_ap"]
    code, out, err = run_cli("evaluate", movenet_dep, "--data", data)
    assert code == 0 and "OKS AP" in out and f"{doc['variants']['int8']['oks_ap']:.4f}" in out


def one_line(run_cli, *args) -> str:
    code, _, err = run_cli(*args)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_data_sets_are_one_error_line_each(run_cli, deeplab_dep, movenet_dep, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is empty" in one_line(run_cli, "evaluate", movenet_dep, "--data", empty)

    other = tmp_path / "other"
    (other / "pictures").mkdir(parents=True)
    (other / "notes.txt").write_text("x")
    line = one_line(run_cli, "evaluate", deeplab_dep, "--data", other)
    assert "expected images/ with masks/*.png" in line
    line = one_line(run_cli, "evaluate", movenet_dep, "--data", other)
    assert "expected annotations.json (COCO person keypoints)" in line

    data = squat_data(tmp_path / "squat")
    (data / "squat.bmp").unlink()
    line = one_line(run_cli, "evaluate", movenet_dep, "--data", data)
    assert "names 1 image(s) not in" in line and "squat.bmp" in line

    wrong = bird_data(tmp_path / "wrong", mask_size=(100, 80))
    line = one_line(run_cli, "evaluate", deeplab_dep, "--data", wrong)
    assert "is 100x80 but its image bird.bmp is 513x513" in line


def test_against_float_without_a_float_model_says_so(run_cli, deeplab_dep, tmp_path):
    data = tmp_path / "plain"
    data.mkdir()
    shutil.copyfile(BIRD, data / "bird.bmp")
    line = one_line(run_cli, "evaluate", deeplab_dep, "--data", data, "--against", "float")
    assert "needs the deployment's float model" in line
