"""qrun detect|classify|segment|pose SOURCE: video files, folders, streams and cameras through
the pipeline (qrun.stream), JSON lines, --save, --frames, and bad input as one line.

The videos are made here with PyAV from the YOLO fixture's known boxes (stream_media), so
every frame's answer is known by construction.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.device import stream_media as media
from tests.fixtures.runner import one_error
from tests.paths import CORAL

pytest.importorskip("av", reason="PyAV (the `video` extra) is not installed")

STAGES = {"capture", "preprocess", "invoke", "postprocess", "sink"}
FRAMES = 12


@pytest.fixture(scope="module")
def yolo_dep(ultralytics_yolo, tmp_path_factory):
    from qdeploy.modelimport.importer import import_model

    return import_model(ultralytics_yolo,
                        out=tmp_path_factory.mktemp("yolo-stream") / "dep").out_dir


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple:
    """(a 12-frame H.264 video of lit cells, the lit cell of each frame)."""
    return media.cells_video(tmp_path_factory.mktemp("video") / "cells.mp4", FRAMES)


def json_lines(text: str) -> list:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summary(out) -> str:
    lines = [ln for ln in out.err_lines if " fps; " in ln]
    assert len(lines) == 1, out.err
    return lines[0]


def detect(run_qrun, source, dep, *more):
    return run_qrun("detect", source, "--model", dep, "--threshold", media.THRESHOLD, *more)


def check_lamp(line: dict, cell: int) -> None:
    assert [o["label"] for o in line["objects"]] == ["lamp"], line
    box = line["objects"][0]["box"]
    np.testing.assert_allclose([box[k] for k in ("xmin", "ymin", "xmax", "ymax")],
                               media.cell_box(cell), atol=2.0)


def test_json_lines_one_per_frame_with_index_timestamp_and_boxes(run_qrun, yolo_dep, video):
    path, order = video
    out = detect(run_qrun, path, yolo_dep, "--json")
    assert out.code == 0, out.err
    lines = json_lines(out.out)
    assert [ln["index"] for ln in lines] == list(range(FRAMES))
    np.testing.assert_allclose([ln["timestamp"] for ln in lines],
                               [i / media.FPS for i in range(FRAMES)], atol=1e-3)
    for line, cell in zip(lines, order):
        check_lamp(line, cell)
        assert {"capture", "preprocess", "invoke", "postprocess"} <= set(line["ms"])
    text = summary(out)
    assert text.startswith(f"{FRAMES} frames, ") and "dropped 0" in text
    for stage in STAGES:
        assert f"{stage} " in text


def test_text_lines_name_each_frames_objects(run_qrun, yolo_dep, video):
    out = detect(run_qrun, video[0], yolo_dep)
    assert out.code == 0, out.err
    lines = out.out.splitlines()
    assert len(lines) == FRAMES
    assert lines[0].startswith("frame 0 (0.000 s): lamp 0.9")


def test_frames_stops_early_and_a_source_that_ends_first_is_not_an_error(run_qrun, yolo_dep,
                                                                         video):
    five = detect(run_qrun, video[0], yolo_dep, "--json", "--frames", 5)
    assert five.code == 0 and len(json_lines(five.out)) == 5
    assert summary(five).startswith("5 frames")
    more = detect(run_qrun, video[0], yolo_dep, "--json", "--frames", 50)
    assert more.code == 0, more.err
    assert len(json_lines(more.out)) == FRAMES  # the file ended after 12: no error
    looped = detect(run_qrun, video[0], yolo_dep, "--json", "--frames", 30, "--loop")
    lines = json_lines(looped.out)
    assert [ln["index"] for ln in lines] == list(range(30))
    stamps = [ln["timestamp"] for ln in lines]
    assert stamps == sorted(stamps) and len(set(stamps)) == 30  # time goes on across loops
    for i, line in enumerate(lines):
        check_lamp(line, video[1][i % FRAMES])


def test_save_decodes_back_to_the_same_frames_with_boxes_drawn(run_qrun, yolo_dep, video,
                                                               tmp_path):
    from qrun.tasks.draw import class_colour

    saved = tmp_path / "annotated.mp4"
    out = detect(run_qrun, video[0], yolo_dep, "--save", saved)
    assert out.code == 0, out.err
    assert f"annotated frames written to {saved}" in out.err
    frames = media.decode(saved)
    assert len(frames) == FRAMES
    assert class_colour(0) == (128, 0, 0)  # the lamp's box: dark red
    for pixels, cell in zip(frames, video[1]):
        assert pixels.shape == (media.FRAME, media.FRAME, 3)
        x0, y0, x1, y1 = media.cell_box(cell)
        edge = pixels[y0 + 8:y1 - 8, max(0, x0 - 1):x0 + 3].astype(int)  # its left side
        redness = (edge[..., 0] - edge[..., 1:].max(axis=2)).mean(axis=0)
        assert redness.max() > 35, redness  # grey and white have none
        middle = pixels[y0 + 20:y1 - 6, x0 + 8:x1 - 8]  # below a label drawn inside
        assert middle.min() > 200  # the cell itself stays white
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_folder_source_and_save_as_images(run_qrun, yolo_dep, tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    cells = {"a": 3, "b": 12, "c": 6}
    for name, cell in cells.items():
        Image.fromarray(media.cell_frame(cell)).save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not an image")
    out = detect(run_qrun, folder, yolo_dep, "--json", "--save", tmp_path / "annotated")
    assert out.code == 0, out.err
    lines = json_lines(out.out)
    assert [ln["frame"] for ln in lines] == list(cells)
    for line, cell in zip(lines, cells.values()):
        check_lamp(line, cell)
    written = sorted(p.name for p in (tmp_path / "annotated").iterdir())
    assert written == ["a.png", "b.png", "c.png"]
    with Image.open(tmp_path / "annotated" / "b.png") as img:
        pixels = np.asarray(img.convert("RGB"))
    x0, y0, _, y1 = media.cell_box(12)
    assert tuple(pixels[(y0 + y1) // 2, x0]) != (255, 255, 255)  # the box's edge is drawn


def test_classify_segment_and_pose_take_a_source_too(run_qrun, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("cat.bmp", "grace_hopper.bmp"):
        shutil.copy(CORAL / name, folder / name)
    cls = run_qrun("classify", folder, "--model", CORAL / "mobilenet_v1_0.25_128_quant.tflite",
                   "--labels", CORAL / "imagenet_labels.txt", "--json")
    assert cls.code == 0, cls.err
    lines = json_lines(cls.out)
    assert [ln["frame"] for ln in lines] == ["cat", "grace_hopper"]
    assert "cat" in lines[0]["classes"][0]["label"].lower()
    seg = run_qrun("segment", folder, "--model",
                   CORAL / "deeplabv3_mnv2_dm05_pascal_quant.tflite", "--json", "--frames", 1)
    assert seg.code == 0, seg.err
    assert sum(c["fraction"] for c in json_lines(seg.out)[0]["classes"]) == pytest.approx(1)
    pose = run_qrun("pose", folder, "--model", CORAL / "movenet_single_pose_lightning_ptq.tflite",
                    "--json", "--frames", 1)
    assert pose.code == 0, pose.err
    assert len(json_lines(pose.out)[0]["keypoints"]) == 17


def test_a_single_image_keeps_the_image_path_unless_stream_options_are_given(run_qrun, yolo_dep,
                                                                             tmp_path):
    image = tmp_path / "one.png"
    Image.fromarray(media.cell_frame(5)).save(image)
    single = detect(run_qrun, image, yolo_dep, "--json")
    assert json.loads(single.out)["kind"] == "qrun-detect"
    framed = detect(run_qrun, image, yolo_dep, "--json", "--frames", 3, "--loop")
    lines = json_lines(framed.out)
    assert [ln["index"] for ln in lines] == [0, 1, 2]
    check_lamp(lines[2], 5)


# --- bad input: one line each -------------------------------------------------------

def test_a_source_that_does_not_exist_says_what_was_tried(run_qrun, yolo_dep, tmp_path):
    one_error(detect(run_qrun, tmp_path / "nothing-here", yolo_dep),
              "nothing-here not found", "a folder", "/dev/videoN", "rtsp://")


def test_a_corrupt_video_is_one_line(run_qrun, yolo_dep, video, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    one_error(detect(run_qrun, garbage, yolo_dep), "garbage.mp4 is not a readable video")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(video[0].read_bytes()[: video[0].stat().st_size // 2])
    one_error(detect(run_qrun, truncated, yolo_dep), "truncated.mp4")


def test_save_into_a_missing_directory_is_refused_before_starting(run_qrun, yolo_dep, video,
                                                                  tmp_path):
    one_error(detect(run_qrun, video[0], yolo_dep, "--save", tmp_path / "no" / "out.mp4"),
              "directory", "does not exist")
    one_error(detect(run_qrun, video[0], yolo_dep, "--save", tmp_path / "out.webp"),
              "unknown video container .webp")


def test_a_missing_camera_names_the_cameras_there(run_qrun, yolo_dep):
    line = one_error(detect(run_qrun, "/dev/video97", yolo_dep), "camera /dev/video97 not found")
    assert "cameras here" in line or "no /dev/video* here" in line


def test_a_port_in_use_is_one_line(run_qrun, yolo_dep, video):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_error(detect(run_qrun, video[0], yolo_dep, "--serve", f"127.0.0.1:{port}"),
                  f"127.0.0.1:{port}", "in use")


def test_a_camera_in_use_is_named_so():
    import errno

    import av
    from qrun.stream.sources import open_failure

    with pytest.raises(av.error.FFmpegError) as busy:  # what PyAV raises for EBUSY
        av.error.err_check(-errno.EBUSY, "/dev/video0")
    line = open_failure("/dev/video0", "camera", busy.value)
    assert line.startswith("camera /dev/video0 is in use by another program (Device or "
                           "resource busy)"), line


def test_without_pyav_video_sources_name_the_extra(run_qrun, yolo_dep, video, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av" or name.startswith("av."):
            raise ImportError("No module named 'av'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    one_error(detect(run_qrun, video[0], yolo_dep), "PyAV", "`video` extra", "pip install av")


# --- cameras ------------------------------------------------------------------------

CAMERAS = sorted(str(p) for p in Path("/dev").glob("video[0-9]*"))


@pytest.mark.skipif(not CAMERAS, reason="no camera: /dev/video* does not exist on this machine")
def test_a_camera_gives_frames(run_qrun, yolo_dep):
    out = detect(run_qrun, CAMERAS[0], yolo_dep, "--json", "--frames", 3)
    if out.code != 0 and "in use" in out.err:
        pytest.skip(f"{CAMERAS[0]} is in use by another program")
    assert out.code == 0, out.err
    assert [ln["index"] for ln in json_lines(out.out)] == [0, 1, 2]


# --- qrun bench --video -----------------------------------------------------------------

def test_bench_video_reports_the_pipeline_in_the_contract(run_qrun, yolo_dep, video):
    from qrun.measure import report_contract

    out = run_qrun("bench", "--model", yolo_dep, "--runs", 3, "--warmup", 1, "--device", "cpu",
                   "--video", video[0], "--frames", 10, "--json", "-")
    assert out.code == 0, out.err
    report = json.loads(out.out)
    assert report_contract.validate(report) is report
    assert list(report) == [k for k in report_contract.keys(optional=True)
                            if k not in ("frame", "accuracy")]  # accuracy: push --eval adds it
    stream = report["stream"]
    assert stream["video"] == str(video[0].resolve()) and stream["frames"] == 10
    assert (stream["width"], stream["height"]) == (media.FRAME, media.FRAME)
    assert stream["fps"] > 0 and stream["dropped"] == 0
    for stage in STAGES:
        assert 0 < stream[f"{stage}_ms"]["median"] <= stream[f"{stage}_ms"]["p99"]
    slowest = stream["slowest_stage"]
    assert stream["bound_fps"] == pytest.approx(1e3 / stream[f"{slowest}_ms"]["median"])
    text = run_qrun("bench", "--model", yolo_dep, "--runs", 3, "--device", "cpu", "--video",
                    video[0])
    assert text.code == 0 and f"stream of cells.mp4 ({media.FRAME}x{media.FRAME}, {FRAMES} " \
                              "frames" in text.out


def test_bench_video_bad_input_is_one_line(run_qrun, yolo_dep, tmp_path):
    one_error(run_qrun("bench", "--model", yolo_dep, "--video", tmp_path / "none.mp4"),
              "--video", "no such file")
    one_error(run_qrun("bench", "--model", yolo_dep, "--frames", 3), "--frames", "--video")
    still = tmp_path / "still.png"
    Image.fromarray(media.cell_frame(1)).save(still)
    one_error(run_qrun("bench", "--model", yolo_dep, "--runs", 1, "--video", still),
              "is not a video file")
