"""`qdeploy push --bench-image`: whole frames of the task timed on the device, frames per
second in the store, the image checked before connecting."""

from __future__ import annotations

import json

import pytest

from qdeploy.push.fleet import push_many
from qdeploy.remote import targets
from qdeploy.reports import store
from tests.fixtures.deployments import make_deployment
from tests.fixtures.sshd import push_options as options
from tests.paths import CORAL

CAT = CORAL / "cat.bmp"


def test_local_push_times_frames_and_the_store_has_fps(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("QDEPLOY_HOME", str(tmp_path / "device"))
    dep = make_deployment(tmp_path / "dep", {"int8": "mobilenet_v1_0.25_128_quant.tflite"})
    code, out, err = run_cli("push", dep, "--target", "local", "--bench-image", CAT,
                             "--bench-runs", "3", "--no-verify", "--reports", tmp_path / "r")
    assert code == 0, err
    (report_file,) = (tmp_path / "r").glob("local-*.json")
    frame = json.loads(report_file.read_text())["frame"]
    assert frame["image"].endswith("cat.bmp") and frame["runs"] == 3
    assert frame["total_us"]["median"] >= frame["invoke_us"]["median"] > 0
    with store.open_store(tmp_path / "r") as s:
        [row] = s.latest()
        assert row.frame_total_median_us == frame["total_us"]["median"]


@pytest.mark.parametrize("bad, words", [("missing.png", "does not exist"),
                                        ("labels", "is not an image")])
def test_a_bench_image_that_is_not_one_is_refused_before_connecting(tmp_path, run_cli, bad,
                                                                    words):
    path = CORAL / "imagenet_labels.txt" if bad == "labels" else tmp_path / bad
    dep = make_deployment(tmp_path / "dep", {"int8": "mobilenet_v1_0.25_128_quant.tflite"})
    code, _, err = run_cli("push", dep, "--target", "root@127.0.0.1:9", "--bench-image", path)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: --bench-image")
    assert words in err


@pytest.mark.slow
def test_push_over_ssh_sends_the_image_once_and_benches_frames(sshd, ssh_client_key, device,
                                                               tmp_path, isolated_home):
    dep = make_deployment(tmp_path / "dep", {"int8": "mobilenet_v1_0.25_128_quant.tflite"})
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device), bench=True,
                   bench_runs=3, verify=False, bench_image=CAT)
    result = push_many([targets.parse_target(sshd.target)], dep, opts)[0]
    assert result.ok, result.error
    [sent] = list((device / "bench").iterdir())
    assert sent.read_bytes() == CAT.read_bytes() and sent.name.startswith("frame-")
    frame = json.loads(result.report_files[0].read_text())["frame"]
    assert frame["image"] == str(sent) and frame["total_us"]["count"] == 3
