"""Evaluation of detectors whose boxes are known by construction: the YOLOv8-format cell
model (tests/fixtures/yolo.py, with its float model beside the int8 one) and the SSD
quadrant model (tests/device/ssd_models.py). Ground truth equal to the planted boxes gives
mAP 1.0; moved boxes give what pycocotools computes on the same predictions; COCO and
YOLO layouts of the same data give the same figures."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qdeploy.modelimport.importer import import_model
from qrun.measure import evaluate as ev
from qrun.tasks.detect import detect
from tests.device import ssd_models
from tests.fixtures import detectors as quad
from tests.fixtures import yolo
from tests.fixtures.evalsets import LIT, coco_data, write_images, yolo_data

pytest.importorskip("pycocotools", reason="the eval extra (pycocotools) is "
                                  "what evaluate scores with")


def direct_map(model: Path, data: Path) -> tuple:
    """mAP50-95 and mAP50 by a direct pycocotools call on what qrun detect finds at
    evaluate's settings (score 0.001, IoU 0.7, 300 per image)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data / "annotations.json"))
        results = []
        for image in gt.dataset["images"]:
            found = detect(data / "images" / image["file_name"], model, threshold=0.001,
                           iou_threshold=0.7, max_objects=300, device="cpu")
            results += [{"image_id": image["id"], "category_id": o.id + 1, "score": o.score,
                         "bbox": [o.bbox.xmin, o.bbox.ymin, o.bbox.xmax - o.bbox.xmin,
                                  o.bbox.ymax - o.bbox.ymin]} for o in found.objects]
        e = COCOeval(gt, gt.loadRes(results), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats[0], e.stats[1]


def test_planted_boxes_give_map_one_for_every_variant(yolo_eval_dep, tmp_path):
    doc = ev.evaluate(yolo_eval_dep, coco_data(tmp_path / "coco"))
    assert doc["task"] == "detect" and doc["data"]["layout"] == "coco"
    assert sorted(doc["variants"]) == ["float", "int8"]
    for figures in doc["variants"].values():
        assert figures["map50_95"] == pytest.approx(1.0) and figures["map50"] == 1.0
        assert {c["name"]: c["instances"] for c in figures["per_class"]} == {
            "lamp": len(LIT), "shadow": len(LIT) * (yolo.ANCHORS - 1)}


def test_moved_boxes_score_what_pycocotools_computes(yolo_eval_dep, tmp_path):
    data = coco_data(tmp_path / "coco", shift=2.0)
    doc = ev.evaluate(yolo_eval_dep, data)
    for variant, model in (("int8", "model_int8.tflite"), ("float", "model_float.tflite")):
        expected = direct_map(yolo_eval_dep / model, data)
        got = doc["variants"][variant]
        assert (got["map50_95"], got["map50"]) == pytest.approx(expected, abs=1e-12)
    lamp = next(c for c in doc["variants"]["int8"]["per_class"] if c["name"] == "lamp")
    assert lamp["ap50_95"] < 0.9  # 2 px off an 8 px box: IoU 0.53


def test_coco_and_yolo_layouts_give_the_same_figures(yolo_eval_dep, tmp_path):
    coco = ev.evaluate(yolo_eval_dep, coco_data(tmp_path / "coco", shift=1.0))
    yolo_doc = ev.evaluate(yolo_eval_dep, yolo_data(tmp_path / "yolo", shift=1.0))
    assert yolo_doc["data"]["layout"] == "yolo"
    for variant in ("float", "int8"):
        for key in ("map50_95", "map50"):
            assert yolo_doc["variants"][variant][key] == pytest.approx(
                coco["variants"][variant][key], abs=1e-9)


def test_against_float_scores_int8_on_the_float_detections(yolo_eval_dep, tmp_path):
    data = tmp_path / "plain"
    write_images(data)
    doc = ev.evaluate(yolo_eval_dep, data, against="float")
    assert list(doc["variants"]) == ["int8"] and doc["data"]["against"] == "float"
    assert doc["variants"]["int8"]["map50"] == 1.0  # the same cells, the same classes


@pytest.fixture(scope="module")
def ssd_dep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ssd-eval")
    model = ssd_models.make(root, "op_order")
    labels = root / "labels.txt"
    labels.write_text("".join(f"{q} quadrant{q}\n" for q in range(quad.CLASSES)))
    return import_model(model, labels=labels, out=root / "dep").out_dir


def test_ssd_planted_quadrants_give_map_one_and_moved_ones_pycocotools_value(ssd_dep,
                                                                             tmp_path):
    for shift, name in ((0, "exact"), (3, "moved")):
        data = tmp_path / name
        (data / "images").mkdir(parents=True)
        images, annotations = [], []
        for q in range(quad.CLASSES):
            image, (x0, y0, x1, y1) = ssd_models.quadrant_image(48, 40, q)
            Image.fromarray(image).save(data / "images" / f"q{q}.png")
            images.append({"id": q + 1, "file_name": f"q{q}.png", "width": 48, "height": 40})
            box = [x0 + shift, y0, x1 - x0, y1 - y0]
            annotations.append({"id": q + 1, "image_id": q + 1, "category_id": 10 + q,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        categories = [{"id": 10 + q, "name": f"quadrant{q}"} for q in range(quad.CLASSES)]
        (data / "annotations.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
        figures = ev.evaluate(ssd_dep, data)["variants"]["int8"]
        if shift == 0:
            assert figures["map50_95"] == pytest.approx(1.0)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            with contextlib.redirect_stdout(io.StringIO()):
                gt = COCO(str(data / "annotations.json"))
                res = []
                for q in range(quad.CLASSES):
                    found = detect(data / "images" / f"q{q}.png", ssd_dep, threshold=0.001,
                                   max_objects=300, device="cpu").objects
                    res += [{"image_id": q + 1, "category_id": 10 + o.id, "score": o.score,
                             "bbox": [o.bbox.xmin, o.bbox.ymin, o.bbox.xmax - o.bbox.xmin,
                                      o.bbox.ymax - o.bbox.ymin]} for o in found]
                e = COCOeval(gt, gt.loadRes(res), "bbox")
                e.evaluate(), e.accumulate(), e.summarize()
            assert figures["map50_95"] == pytest.approx(e.stats[0], abs=1e-12)
            assert figures["map50_95"] < 1.0


def test_class_names_the_model_lacks_are_listed(ssd_dep, tmp_path):
    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    Image.fromarray(quad.square_image(0)).save(data / "images" / "a.png")
    (data / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
        "annotations": [{"id": k, "image_id": 1, "category_id": k, "bbox": [0, 0, 4, 4],
                         "area": 16, "iscrowd": 0} for k in (1, 2, 3)],
        "categories": [{"id": 1, "name": "quadrant0"}, {"id": 2, "name": "zebra"},
                       {"id": 3, "name": "kite"}]}))
    with pytest.raises(ev.UserError, match="classes kite, zebra are not among the model's"):
        ev.evaluate(ssd_dep, data)


def test_no_detections_at_all_score_zero(ssd_dep, tmp_path):
    """Black images: the SSD finds nothing (its graph keeps scores >= 0.3), and the
    figures are pycocotools' zero, not a crash on an empty result list."""
    data = tmp_path / "dark"
    (data / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / "images" / "a.png")
    (data / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [0, 0, 16, 16],
                         "area": 256, "iscrowd": 0}],
        "categories": [{"id": 0, "name": "quadrant0"}]}))
    figures = ev.evaluate(ssd_dep, data)["variants"]["int8"]
    assert (figures["map50_95"], figures["map50"]) == (0.0, 0.0)


def test_without_pycocotools_one_line_names_the_extra(ssd_dep, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(ev.UserError, match=r"needs pycocotools, the eval extra: pip install "
                                           r"'qdeploy\[eval\]'"):
        ev.evaluate(ssd_dep, tmp_path)


@pytest.mark.parametrize("text", [
    "names: ['lamp', 'shadow']\n",
    "path: .\nnames:\n  - lamp\n  - shadow\nnc: 2\n",
    "names:\n  0: lamp\n  1: 'shadow'\ntrain: images\n",
])
def test_data_yaml_names_without_pyyaml(text, tmp_path, monkeypatch):
    import sys

    from qrun.measure import evaldata

    monkeypatch.setitem(sys.modules, "yaml", None)
    (tmp_path / "data.yaml").write_text(text)
    assert evaldata.yaml_names(tmp_path / "data.yaml") == {0: "lamp", 1: "shadow"}


def test_qdeploy_evaluate_shows_the_change_from_float(yolo_eval_dep, tmp_path, run_cli):
    dep = tmp_path / "dep"
    shutil.copytree(yolo_eval_dep, dep)
    data = yolo_data(tmp_path / "yolo", shift=1.0)
    code, out, err = run_cli("evaluate", dep, "--data", data)
    assert code == 0, err
    header = next(line for line in out.splitlines() if "float" in line and "int8" in line)
    assert "change" in header and "mAP50-95" in out and "AP50-95 per class" in out
    assert "lamp" in out and "shadow" in out
    stored = json.loads((dep / "manifest.json").read_text())["evaluation"]
    assert set(stored["variants"]) == {"float", "int8"} and stored["metric"] == "map50_95"


def test_yolo_labels_that_are_not_normalised_are_refused(yolo_eval_dep, tmp_path, run_cli):
    data = yolo_data(tmp_path / "yolo")
    (data / "labels" / "cell00.txt").write_text("0 16 16 8 8\n")  # pixels, not 0..1
    code, _, err = run_cli("evaluate", yolo_eval_dep, "--data", data)
    assert code == 1 and err.count("error:") == 1 and "normalised to 0..1" in err


def test_qdeploy_evaluate_shows_converts_fidelity_figure_for_a_detector(yolo_eval_dep, tmp_path,
                                                                        run_cli):
    """A detector's evaluation shows what convert's fidelity gate measured (issue 24)."""
    from qrun.model import manifest as mf

    dep = tmp_path / "dep"
    shutil.copytree(yolo_eval_dep, dep)
    manifest = mf.load(dep)
    manifest.fidelity = mf.Fidelity(task="detect", metric="detection_agreement", value=0.75,
                                    ok=False, samples=8, held_back=True, output="output0",
                                    text="6 of 8 samples agree")
    mf.save(manifest, dep)
    data = yolo_data(tmp_path / "yolo")
    code, out, err = run_cli("evaluate", dep, "--data", data)
    assert code == 0, err
    assert "convert's fidelity gate:" in out and "75%" in out and "(lost)" in out
    code, out, err = run_cli("evaluate", dep, "--data", data, "--json")
    assert code == 0, err
    fidelity = json.loads(out)["fidelity"]
    assert fidelity["metric"] == "detection_agreement" and fidelity["value"] == 0.75
