"""qrun bench --image: whole frames of the model's task (SSD, YOLO, DeepLab, MoveNet, a
classifier), the report's optional `frame`, and qrun --verbose letting the runtime's log
through."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from qdeploy.modelimport.importer import import_model
from qrun.measure import report_contract

from tests.device import ssd_models
from tests.fixtures.deployments import V1_025
from tests.fixtures.runner import one_error
from tests.paths import CORAL

RUNS, WARMUP = 4, 1
STAGES = ("preprocess", "invoke", "postprocess", "total")
DEEPLAB = CORAL / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
MOVENET = CORAL / "movenet_single_pose_lightning_ptq.tflite"
CLASSIFIER = CORAL / f"{V1_025}.tflite"
ANNOUNCEMENT = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def frame_bench(run_qrun, model, image, *more) -> dict:
    out = run_qrun("bench", "--model", model, "--image", image, "--runs", RUNS, "--warmup",
                   WARMUP, "--device", "cpu", "--json", "-", *more)
    assert out.code == 0, out.err
    return json.loads(out.out)


def check_frame(report: dict, image, task) -> dict:
    """The report validates, holds every stage with one timing per run, and adds up."""
    assert report_contract.validate(report) is report
    # Adapted for `stream` (qrun bench --video), absent here, and `accuracy`, an optional key
    # qdeploy push --eval adds on the host: every other key in order.
    assert list(report) == [k for k in report_contract.keys(optional=True)
                            if k not in ("stream", "accuracy")]
    assert report["model"]["task"] == task
    frame = report["frame"]
    with Image.open(image) as img:
        assert (frame["width"], frame["height"]) == img.size
    assert frame["image"] == str(image.resolve())
    assert frame["runs"] == RUNS and frame["warmup"] == WARMUP and frame["decode_ms"] > 0
    for stage in STAGES:
        stats = frame[f"{stage}_us"]
        assert stats["count"] == RUNS, stage
        assert 0 < stats["min"] <= stats["median"] <= stats["p99"] <= stats["max"], stage
    total, invoke = frame["total_us"], frame["invoke_us"]
    assert total["median"] >= invoke["median"]
    assert total["min"] >= invoke["min"] + frame["preprocess_us"]["min"]
    assert report["latency_us"]["count"] == RUNS  # the invoke-only figures stay beside it
    return frame


def save(tmp_path, pixels, name="frame.png"):
    path = tmp_path / name
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("order", ssd_models.ORDERS)
def test_ssd_frames(run_qrun, tmp_path, order):
    model = ssd_models.make(tmp_path, order)
    dep = import_model(model, out=tmp_path / "dep").out_dir
    pixels, _ = ssd_models.quadrant_image(64, 40, 1)
    image = save(tmp_path, pixels)
    check_frame(frame_bench(run_qrun, dep, image), image, "detect")


def test_yolo_frames_and_summary(run_qrun, tmp_path, ultralytics_yolo):
    dep = import_model(ultralytics_yolo, out=tmp_path / "dep").out_dir
    image = CORAL / "parrot.jpg"  # a JPEG: decoded once in draft mode, as qrun detect does
    check_frame(frame_bench(run_qrun, dep, image), image, "detect")
    out = run_qrun("bench", "--model", dep, "--image", image, "--runs", RUNS, "--warmup", 0)
    assert out.code == 0, out.err
    assert "frames of parrot.jpg" in out.out and "frames/s" in out.out


def test_deeplab_frames(run_qrun, tmp_path):
    dep = import_model(DEEPLAB, out=tmp_path / "dep").out_dir
    image = CORAL / "bird_segmentation.bmp"
    check_frame(frame_bench(run_qrun, dep, image), image, "segment")


def test_movenet_frames(run_qrun, tmp_path):
    dep = import_model(MOVENET, out=tmp_path / "dep").out_dir
    image = CORAL / "squat.bmp"
    check_frame(frame_bench(run_qrun, dep, image), image, "pose")


def test_classifier_frames_bare_and_compare(run_qrun, tmp_path, deployment_dir):
    image = CORAL / "cat.bmp"
    check_frame(frame_bench(run_qrun, CLASSIFIER, image), image, None)  # a bare file
    out = run_qrun("bench", "--model", deployment_dir, "--image", image, "--runs", RUNS,
                   "--warmup", WARMUP, "--compare", "--json", "-")
    assert out.code == 0, out.err
    document = json.loads(out.out)
    assert report_contract.reports_in(document)
    for report in document["reports"]:
        check_frame(report, image, report["model"]["task"])


def test_without_image_the_report_is_unchanged(run_qrun):
    out = run_qrun("bench", "--model", CLASSIFIER, "--runs", 2, "--warmup", 0, "--json", "-")
    assert out.code == 0, out.err
    report = json.loads(out.out)
    assert "frame" not in report and list(report) == list(report_contract.keys())
    assert "frames" not in run_qrun("bench", "--model", CLASSIFIER, "--runs", 2).out


def test_a_present_frame_must_be_whole():
    """An older report without `frame` is valid; a report with half a frame is not."""
    from qrun.errors import UserError

    # Adapted for `stream` (qrun bench --video), whose fields come after frame's.
    field = [f for f in report_contract.FIELDS if f.part_of == "frame"][-1]
    assert field.optional and field.path == "frame.total_us.p99"
    stats = {"median": 1.0, "p99": 2.0}
    frame = {"image": "/x.png", "runs": 1, **{f"{s}_us": dict(stats) for s in STAGES}}
    for f in report_contract.FIELDS:  # the check itself: field by field, on its own
        if f.part_of == "frame":
            report_contract.check_field({"frame": frame}, f, "r")
    del frame["total_us"]["p99"]
    with pytest.raises(UserError, match=r"missing field 'frame.total_us.p99'"):
        report_contract.check_field({"frame": frame}, field, "r")
    report_contract.check_field({}, field, "r")  # no frame at all: fine


def test_bad_image_fails_before_timing(run_qrun, tmp_path):
    one_error(run_qrun("bench", "--model", CLASSIFIER, "--image", tmp_path / "none.png"),
              "--image", "no such file")
    junk = tmp_path / "junk.png"
    junk.write_text("not an image\n")
    out = run_qrun("bench", "--model", CLASSIFIER, "--image", junk)
    one_error(out, "is not a readable image")
    assert "timing" not in out.err


def test_bare_segmenter_is_told_to_import(run_qrun):
    one_error(run_qrun("bench", "--model", DEEPLAB, "--image", CORAL / "bird_segmentation.bmp",
                       "--runs", 1, "--warmup", 0),
              "has no manifest", "as a classifier", "qdeploy import")


def test_verbose_lets_the_runtimes_log_through(qrun_process):
    """The runtime's INFO line is dropped by default (qrun.model.runtime.announcements_dropped);
    qrun --verbose shows it. A real process: the runtime writes it on fd 2, once."""
    args = ("bench", "--model", CLASSIFIER, "--runs", 1, "--warmup", 0, "--device", "cpu")
    quiet = qrun_process(*args)
    assert quiet.code == 0, quiet.err
    assert ANNOUNCEMENT not in quiet.err
    loud = qrun_process("--verbose", *args)
    assert loud.code == 0, loud.err
    assert ANNOUNCEMENT in loud.err.splitlines()
    assert "steady state" in loud.out and ANNOUNCEMENT not in loud.out  # stdout: the report
