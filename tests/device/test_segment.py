"""qrun segment on Coral's DeepLab v3 (pascal) against the published ground truth, its
palette mask and overlay PNGs, and its JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from qdeploy.modelimport.importer import import_model
from qrun.tasks import draw
from qrun.tasks.segment import segment

from tests.fixtures.runner import one_error
from tests.paths import CORAL

DEEPLAB = CORAL / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
LABELS = CORAL / "pascal_voc_segmentation_labels.txt"
BIRD = CORAL / "bird_segmentation.bmp"
BIRD_CLASS = 3


@pytest.fixture(scope="module")
def deeplab_dep(tmp_path_factory):
    return import_model(DEEPLAB, labels=LABELS,
                        out=tmp_path_factory.mktemp("deeplab") / "dep").out_dir


def test_pixel_agreement_with_the_ground_truth_mask(qdeploy_home):
    """pycoral's segment_test: > 0.90 of the 513x513 pixels agree with the mask."""
    result = segment(BIRD, DEEPLAB)
    with Image.open(CORAL / "bird_segmentation_mask.bmp") as truth:
        expected = np.asarray(truth, dtype=np.int64)
    assert result.model_map.shape == expected.shape == (513, 513)
    agreement = float(np.mean(result.model_map == expected))
    assert agreement > 0.90, agreement
    assert np.array_equal(result.class_map, result.model_map)  # the image is 513x513 too


def test_mask_and_overlay_at_the_image_size(run_qrun, tmp_path, deeplab_dep):
    with Image.open(BIRD) as img:
        img.crop((0, 60, 513, 360)).save(tmp_path / "wide.png")  # 513x300
    mask, overlay = tmp_path / "mask.png", tmp_path / "overlay.png"
    out = run_qrun("segment", tmp_path / "wide.png", "--model", deeplab_dep, "--out", mask,
                   "--overlay", overlay, "--json")
    assert out.code == 0, out.err
    data = json.loads(out.out)
    assert data["kind"] == "qrun-segment" and data["schema_version"] == 1
    assert set(data["timing_ms"]) == {"load", "preprocess", "invoke", "postprocess", "total"}
    assert data["image"] == {"path": str(tmp_path / "wide.png"), "width": 513, "height": 300}
    classes = {c["id"]: c for c in data["classes"]}
    assert classes[BIRD_CLASS]["label"] == "bird" and classes[0]["label"] == "background"
    assert sum(c["pixels"] for c in data["classes"]) == 513 * 300
    assert sum(c["fraction"] for c in data["classes"]) == pytest.approx(1.0)
    with Image.open(mask) as m:
        assert m.mode == "P" and m.size == (513, 300)
        ids = np.asarray(m)
        assert m.getpalette()[3 * BIRD_CLASS:3 * BIRD_CLASS + 3] == list(
            draw.pascal_colormap()[BIRD_CLASS])
    found, counts = np.unique(ids, return_counts=True)
    assert {int(i): int(n) for i, n in zip(found, counts)} == {
        i: c["pixels"] for i, c in classes.items()}
    with Image.open(overlay) as o:
        assert o.mode == "RGB" and o.size == (513, 300)
        with Image.open(tmp_path / "wide.png") as photo:
            diff = np.abs(np.asarray(o, int) - np.asarray(photo.convert("RGB"), int)).sum(2)
    assert diff[ids == BIRD_CLASS].mean() > 30 and diff[ids == 0].max() == 0  # bird tinted


def test_text_output(run_qrun, deeplab_dep):
    out = run_qrun("segment", BIRD, "--model", deeplab_dep)
    assert out.code == 0, out.err
    lines = out.out.splitlines()
    assert lines[0].startswith("background: ") and any(ln.startswith("bird: ") for ln in lines)
    assert lines[-1].startswith("time: ")


def test_pascal_colormap_is_deeplabs():
    cmap = draw.pascal_colormap()
    assert cmap[0].tolist() == [0, 0, 0] and cmap[1].tolist() == [128, 0, 0]
    assert cmap[15].tolist() == [192, 128, 128]  # person
    assert draw.cityscapes_colormap()[0].tolist() == [128, 64, 128]  # road


def test_bad_input(run_qrun, tmp_path, deeplab_dep):
    one_error(run_qrun("detect", BIRD, "--model", deeplab_dep), "task is segment",
              "run it with qrun segment")
    one_error(run_qrun("segment", BIRD, "--model", deeplab_dep, "--overlay",
                       tmp_path / "no" / "o.png"), "does not exist")
    one_error(run_qrun("segment", BIRD, "--model", deeplab_dep, "--colormap", "ade"),
              "--colormap must be one of pascal, cityscapes")
    one_error(run_qrun("segment", BIRD, "--model", CORAL / "mobilenet_v1_0.25_128_quant.tflite"),
              "no output of this model is a per-pixel map", "--task raw")
