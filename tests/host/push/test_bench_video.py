"""`qdeploy push --bench-video`: a video's frames through qrun's pipeline on the device,
stream fps in the store and in `qdeploy report`, the video sent once, the runner's video
extra (PyAV) asked of the wheel."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from qdeploy.push import wheel
from qdeploy.reports import store
from tests.device.stream_media import write_video
from tests.fixtures.deployments import make_deployment
from tests.paths import CORAL

pytest.importorskip("av", reason="PyAV (the `video` extra) is not installed")
FRAMES = 8


@pytest.fixture(scope="module")
def cat_video(tmp_path_factory):
    """8 frames of Coral's cat photo, shifted a little each frame (seeded), as H.264."""
    rng = np.random.default_rng(0)
    with Image.open(CORAL / "cat.bmp") as img:
        pixels = np.asarray(img.convert("RGB").resize((160, 120)))
    frames = [np.roll(pixels, int(rng.integers(-8, 8)), axis=1) for _ in range(FRAMES)]
    return write_video(tmp_path_factory.mktemp("cat") / "cat.mp4", frames)


def test_local_push_runs_the_video_and_report_shows_stream_fps(tmp_path, run_cli, monkeypatch,
                                                              cat_video):
    monkeypatch.setenv("QDEPLOY_HOME", str(tmp_path / "device"))
    dep = make_deployment(tmp_path / "dep", {"int8": "mobilenet_v1_0.25_128_quant.tflite"})
    code, out, err = run_cli("push", dep, "--target", "local", "--bench-video", cat_video,
                             "--bench-runs", "3", "--no-verify", "--reports", tmp_path / "r")
    assert code == 0, err
    (report_file,) = (tmp_path / "r").glob("local-*.json")
    stream = json.loads(report_file.read_text())["stream"]
    assert stream["video"] == str(cat_video.resolve()) and stream["frames"] == FRAMES
    assert stream["fps"] > 0 and stream["dropped"] == 0
    with store.open_store(tmp_path / "r") as s:
        [row] = s.latest()
        assert row.stream_fps == stream["fps"] and row.stream_frames == FRAMES
        assert row.stream_invoke_median_ms == stream["invoke_ms"]["median"]
    code, out, err = run_cli("report", "--reports", tmp_path / "r", "--json")
    assert code == 0, err
    [latest] = json.loads(out)["latest"]
    assert latest["stream_fps"] == stream["fps"]
    code, out, err = run_cli("report", "--reports", tmp_path / "r")
    assert "stream fps" in out and f"{stream['fps']:.1f}" in out


def test_a_bench_video_that_does_not_exist_is_refused_before_connecting(tmp_path, run_cli):
    dep = make_deployment(tmp_path / "dep", {"int8": "mobilenet_v1_0.25_128_quant.tflite"})
    code, _, err = run_cli("push", dep, "--target", "root@127.0.0.1:9", "--bench-video",
                           tmp_path / "missing.mp4")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: --bench-video") and "does not exist" in err
    code, _, err = run_cli("push", dep, "--target", "root@127.0.0.1:9", "--runner-extras",
                           "gpu")
    assert code == 1 and "no such extra" in err and "video" in err


def test_the_video_extra_is_in_the_wheel_its_version_and_the_install(tmp_path):
    from qdeploy.push.options import PushOptions

    plain, video = wheel.runner_version(), wheel.runner_version(extras=("video",))
    assert video == plain + ".video"  # a device without the extra gets the runner again
    path = wheel.build_wheel(tmp_path, ("video",))
    assert path.name == f"qrun-{video}-py3-none-any.whl"
    with zipfile.ZipFile(path) as zf:
        meta = zf.read(f"qrun-{video}.dist-info/METADATA").decode()
    assert "Provides-Extra: video" in meta
    assert any(ln.startswith("Requires-Dist: av") and ln.endswith('extra == "video"')
               for ln in meta.splitlines())
    command = wheel.install_command("~/qdeploy", "python3", path.name, False, ("video",))
    assert f"./runner/{path.name}[video]" in command
    assert PushOptions(bench_video=tmp_path / "v.mp4").extras == ("video",)
    assert PushOptions().extras == ()


@pytest.mark.slow
def test_push_over_ssh_sends_the_video_once(sshd, ssh_client_key, device, tmp_path,
                                            cat_video):
    from qdeploy.push.pipeline import bench_file_on_device, connect
    from qdeploy.remote import targets
    from tests.fixtures.sshd import push_options

    opts = push_options(tmp_path, sshd, ssh_client_key, remote_dir=str(device))
    with connect(targets.parse_target(sshd.target), opts) as conn:
        first = bench_file_on_device(conn, opts, cat_video, "video")
        [sent] = list((device / "bench").iterdir())
        stamp = sent.stat().st_mtime_ns
        again = bench_file_on_device(conn, opts, cat_video, "video")
    assert first == again == str(sent) and sent.name.startswith("video-")
    assert sent.read_bytes() == cat_video.read_bytes()
    assert sent.stat().st_mtime_ns == stamp  # not sent again
