"""qrun detect SOURCE --serve: the live page over HTTP on 127.0.0.1 (page, MJPEG frames,
/stats), in a real headless Chromium whose screenshot shows the picture, Ctrl-C, and a
stream source that stops (qrun reading another qrun's /stream)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.device import stream_media as media
from tests.device.test_stream import FRAMES, json_lines, yolo_dep, video  # noqa: F401

pytest.importorskip("av", reason="PyAV (the `video` extra) is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HTTP_TIMEOUT_S = 10


def serving(home, source, dep, *more) -> tuple:
    """A qrun detect --serve on a free port; (Running, the page's URL)."""
    running = media.Running(["detect", source, "--model", dep, "--threshold", media.THRESHOLD,
                             "--serve", "127.0.0.1:0", *more], media.env_for(home))
    try:
        line = running.wait_for("live page: ")
    except AssertionError:
        running.kill()
        raise
    return running, line.split()[2]


def mjpeg_frames(url: str, count: int) -> tuple:
    """(Content-Type, the first `count` JPEG parts of an MJPEG stream, decoded)."""
    with urllib.request.urlopen(url + "stream", timeout=HTTP_TIMEOUT_S) as response:
        kind = response.headers["Content-Type"]
        boundary = kind.split("boundary=")[1].encode()
        pictures = []
        while len(pictures) < count:
            line = response.readline()
            assert line, "the stream ended"
            if line.strip() != b"--" + boundary:
                continue
            headers = {}
            while (line := response.readline().strip()):
                key, _, value = line.decode().partition(":")
                headers[key.lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            data = response.read(int(headers["content-length"]))
            pictures.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return kind, pictures


def get(url: str) -> tuple:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        return response.headers["Content-Type"], response.read()


def test_live_page_stream_and_stats_over_http(qdeploy_home, yolo_dep, video):
    running, url = serving(qdeploy_home, video[0], yolo_dep, "--loop")
    try:
        assert url.startswith("http://127.0.0.1:")
        kind, page = get(url)
        assert kind.startswith("text/html")
        assert b'src="/stream"' in page and b"/stats" in page
        kind, pictures = mjpeg_frames(url, 3)
        assert kind.startswith("multipart/x-mixed-replace")
        for pixels in pictures:
            assert pixels.shape == (media.FRAME, media.FRAME, 3)
            redness = pixels[..., 0].astype(int) - pixels[..., 1:].max(axis=2)
            assert (redness > 60).sum() > 50  # the lamp's box is drawn
            assert (pixels.min(axis=2) > 230).sum() > 200  # and the white cell under it
        kind, body = get(url + "stats")
        assert kind == "application/json"
        stats = json.loads(body)
        assert stats["frames"] > 0 and stats["fps"] > 0 and stats["dropped"] == 0
        assert set(stats["stages_ms"]) == {"capture", "preprocess", "invoke", "postprocess",
                                           "sink"}
        assert all(v["median"] > 0 for v in stats["stages_ms"].values())
        with pytest.raises(urllib.error.HTTPError) as missing:
            get(url + "nothing")
        assert missing.value.code == 404
    finally:
        code, err = running.interrupt()
    assert code == 0, err
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if " fps; " in ln]  # the summary, after Ctrl-C


def test_a_stream_that_stops_ends_with_the_summary_and_one_line(qdeploy_home, yolo_dep, video):
    import sys

    server, url = serving(qdeploy_home, video[0], yolo_dep, "--loop")
    reader = subprocess.Popen(
        [sys.executable, "-m", "qrun", "detect", url + "stream", "--model", str(yolo_dep),
         "--threshold", media.THRESHOLD, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=media.env_for(qdeploy_home))
    try:
        first = [reader.stdout.readline() for _ in range(5)]  # the stream is flowing
    finally:
        server.interrupt()  # then its server goes away
    rest, err = reader.communicate(timeout=120)
    lines = json_lines("".join(first) + rest)
    assert len(lines) >= 5, err
    assert [ln["index"] for ln in lines] == list(range(len(lines)))
    # Real frames came through: lit cells are found where they are (the boxes and labels the
    # serving qrun drew over them dim some cells below the threshold).
    boxes = [[o["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]
             for ln in lines for o in ln["objects"] if o["label"] == "lamp"]
    assert boxes, lines[:3]
    cells = [media.cell_box(k) for k in range(16)]
    assert all(np.abs(np.subtract(cells, b)).max(axis=1).min() < 4 for b in boxes)
    assert reader.returncode == 1
    assert "Traceback" not in err
    mine = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("INFO:")]
    errors = [ln for ln in mine if ln.startswith("error: ")]
    assert len(errors) == 1 and f"stopped after {len(lines)} frames" in errors[0], err
    summary = [ln for ln in mine if " fps; " in ln]
    assert len(summary) == 1 and summary[0].startswith(f"{len(lines)} frames"), err


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test installs "
                                             "Debian's chromium)")
def test_the_live_page_in_headless_chromium_shows_the_picture(qdeploy_home, yolo_dep, tmp_path):
    cell = 5  # a still video of one lit cell, so the screenshot's picture is known
    source = media.write_video(tmp_path / "still.mp4", [media.cell_frame(cell)] * 20)
    running, url = serving(qdeploy_home, source, yolo_dep, "--loop")
    shot = tmp_path / "shot.png"
    try:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--hide-scrollbars", "--window-size=800,600", "--timeout=4000",
             f"--screenshot={shot}", url],
            capture_output=True, text=True, timeout=120)
    finally:
        code, err = running.interrupt()
    assert shot.exists(), done.stderr[-2000:]
    assert code == 0 and "Traceback" not in err
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (600, 800, 3)
    grey = np.abs(pixels - 128).max(axis=2) < 12
    # The 128x128 frame is scaled up to fill the page below its header: mostly grey, one
    # white cell (1/16 of it) with the lamp's dark red box around it. Where: the rows and
    # columns that are mostly grey (the header's text is not).
    rows, cols = np.nonzero(grey.sum(axis=1) > 150)[0], np.nonzero(grey.sum(axis=0) > 150)[0]
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    picture = pixels[top:bottom, left:right]
    assert picture.shape[0] > 400 and abs(picture.shape[0] - picture.shape[1]) < 4
    white = picture.min(axis=2) > 230
    redness = picture[..., 0] - picture[..., 1:].max(axis=2)
    side = picture.shape[0] / 4  # a cell, in screen pixels
    assert white.sum() > 0.5 * side * side, white.sum()
    assert (redness > 60).sum() > side  # the box
    ys, xs = np.nonzero(white)
    row, col = divmod(cell, 4)
    assert abs(xs.mean() / side - (col + 0.5)) < 0.2
    assert abs(ys.mean() / side - (row + 0.5)) < 0.2
