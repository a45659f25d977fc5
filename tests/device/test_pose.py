"""qrun pose on Coral's MoveNet Lightning against libcoral's reference keypoints."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from qdeploy.modelimport.importer import import_model

from tests.fixtures.runner import one_error
from tests.paths import CORAL

MOVENET = "movenet_single_pose_lightning_ptq"
SQUAT = CORAL / "squat.bmp"
WIDTH, HEIGHT = 500, 610


def reference(name: str) -> list:
    with open(CORAL / f"{name}_reference.csv", newline="") as f:
        return [(float(r["keypoint_x"]), float(r["keypoint_y"]), float(r["keypoint_score"]))
                for r in csv.DictReader(f)]


def agreeing(keypoints: list, expected: list) -> int:
    """libcoral's movenet_test rule: keypoints scoring > 0.4 in both, |dx| and |dy| <= 0.04
    (normalised); returns how many agree, failing on one that scores but does not."""
    count = 0
    for k, (x, y, score) in zip(keypoints, expected):
        if k["score"] > 0.4 and score > 0.4:
            assert abs(k["x"] / WIDTH - x) <= 0.04 and abs(k["y"] / HEIGHT - y) <= 0.04, k
            count += 1
    return count


@pytest.fixture(scope="module")
def movenet_dep(tmp_path_factory):
    return import_model(CORAL / f"{MOVENET}.tflite",
                        out=tmp_path_factory.mktemp("movenet") / "dep").out_dir


@pytest.mark.parametrize("imported", [True, False], ids=["imported", "bare"])
def test_keypoints_match_the_reference(run_qrun, tmp_path, movenet_dep, imported):
    annotated = tmp_path / "pose.png"
    model = movenet_dep if imported else CORAL / f"{MOVENET}.tflite"
    out = run_qrun("pose", SQUAT, "--model", model, "--json", "--out", annotated)
    assert out.code == 0, out.err
    data = json.loads(out.out)
    assert data["kind"] == "qrun-pose" and data["schema_version"] == 1
    assert set(data["timing_ms"]) == {"load", "preprocess", "invoke", "postprocess", "total"}
    assert [k["name"] for k in data["keypoints"]][:3] == ["nose", "left_eye", "right_eye"]
    assert len(data["keypoints"]) == 17
    assert all(set(k) == {"name", "x", "y", "score"} for k in data["keypoints"])
    assert agreeing(data["keypoints"], reference(MOVENET)) >= 8
    with Image.open(annotated) as img:
        assert img.size == (WIDTH, HEIGHT)
        drawn = np.asarray(img.convert("RGB"), int)
    with Image.open(SQUAT) as photo:
        changed = np.any(drawn != np.asarray(photo.convert("RGB"), int), axis=2)
    for k in data["keypoints"]:
        x, y = int(k["x"]), int(k["y"])
        if k["score"] >= 0.3:
            assert changed[y - 1:y + 2, x - 1:x + 2].any(), k  # a dot on each keypoint
    assert changed.mean() < 0.1  # a skeleton, not a repaint


def test_text_lines_follow_the_threshold(run_qrun, movenet_dep):
    out = run_qrun("pose", SQUAT, "--model", movenet_dep, "--threshold", "0.6")
    assert out.code == 0, out.err
    lines = out.out.splitlines()[:-1]
    assert lines and all(float(ln.split(": ")[1].split()[0]) >= 0.6 for ln in lines)
    assert out.out.splitlines()[-1].startswith("time: ")


def test_bad_input(run_qrun, tmp_path, movenet_dep):
    one_error(run_qrun("pose", SQUAT, "--model", movenet_dep, "--threshold", "2"),
              "--threshold must be between 0 and 1")
    one_error(run_qrun("segment", SQUAT, "--model", movenet_dep), "task is pose",
              "run it with qrun pose")
    one_error(run_qrun("pose", tmp_path / "missing.png", "--model", movenet_dep),
              "image not found")
    one_error(run_qrun("pose", SQUAT, "--model", CORAL / "mobilenet_v1_0.25_128_quant.tflite"),
              "[1, 1, 17, 3]", "--task raw")
