"""`qdeploy push` against a real sshd on 127.0.0.1: releases, sha256 planning, runner, bench, store.

The runner is installed into a device venv once per session (the first push); later tests
link that venv into their own remote dir so each starts from an empty device but a known runner.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

import qrun
from qdeploy.cli.push_view import print_table
from qdeploy.push import release, transfer, wheel
from qdeploy.push.fleet import push_many
from qdeploy.push.options import PushOptions
from qdeploy.push.pipeline import connect, push_local, rollback_target
from qdeploy.remote import targets
from qdeploy.reports import store
from qrun.errors import UserError
from qrun.model.manifest import INT8
from tests.fixtures.deployments import make_deployment
from tests.fixtures.sshd import known_hosts, push_options as options, sha

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _isolated_home(isolated_home):
    """No real ~/.ssh, agent or cache: every key and known_hosts file is the test's own."""


def test_first_push_installs_runner_switches_current_and_stores_report(first_push, sshd):
    result, dep, opts, lines = first_push
    assert result.ok, result.error
    assert result.runner_installed and result.runner_version == wheel.runner_version()
    assert result.runner_version.startswith(qrun.__version__ + "+")
    assert not result.unchanged and result.files_sent == 4 and result.files_skipped == 0
    root = sshd.home / "qdeploy"
    current = root / "current"
    assert current.is_symlink() and os.readlink(current) == f"releases/{result.release_id}"
    for name in ("manifest.json", "imagenet_labels.txt", "mobilenet_v1_0.25_128_quant.tflite",
                 "mobilenet_v1_0.25_128_quant_edgetpu.tflite"):
        assert sha(current / name) == sha(dep / name)
    assert not [p for p in (root / "releases").iterdir() if p.name.startswith(".staging")]
    # The runner answers with the host's version and came from our wheel (qrun only).
    dist = list((root / "venv").glob("lib/python*/site-packages/qrun-*.dist-info"))
    assert [d.name for d in dist] == [f"qrun-{wheel.runner_version()}.dist-info"]
    assert not list((root / "venv").glob("lib/python*/site-packages/qdeploy*"))
    # Bench progress was streamed, the report came home as a file and a SQLite row.
    assert any(stage == "bench" and "qrun bench" in detail for stage, detail in lines)
    assert len(result.report_files) == 1
    report = json.loads(result.report_files[0].read_text())
    assert report["kind"] == "qrun-bench" and report["schema_version"] == 1
    assert report["model"]["sha256"] in {a.sha256 for a in
                                         transfer.load_deployment(dep).manifest.artifacts.values()}
    assert report["device"]["used"] == "cpu" and report["device"]["reason"]
    assert report["latency_us"]["count"] == 5
    db = sqlite3.connect(opts.reports_dir / store.STORE_NAME)
    rows = db.execute("SELECT target, model_sha256, device_used, median_us, report_file "
                      "FROM reports").fetchall()
    assert rows == [(sshd.target, report["model"]["sha256"], "cpu",
                     report["latency_us"]["median"], str(result.report_files[0]))]


def test_unchanged_repush_sends_no_model_bytes(sshd, ssh_client_key, device, deployment,
                                               tmp_path, tcp_proxy):
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device))
    target = targets.parse_target(sshd.target)
    first = push_many([target], deployment, opts)[0]
    assert first.ok and not first.runner_installed, first.error
    model_bytes = sum(f.stat().st_size for f in deployment.iterdir())

    proxy = tcp_proxy(sshd.port)
    known_hosts(tmp_path / "known_hosts", sshd, port=proxy.port)
    again = push_many([targets.parse_target(f"root@127.0.0.1:{proxy.port}")],
                      deployment, opts)[0]
    assert again.ok, again.error
    assert again.unchanged and again.files_sent == 0 and again.bytes_sent == 0
    assert again.release_id == first.release_id
    # What crossed the wire, counted by the relay: the SSH handshake and one probe, not the
    # 1.3 MB of models.
    assert 0 < proxy.sent < 20_000 < model_bytes
    assert sorted(p.name for p in (device / "releases").iterdir()) == [first.release_id]


def test_changed_model_uploads_only_changed_files_and_keeps_previous(
        sshd, ssh_client_key, device, tmp_path):
    dep = make_deployment(tmp_path / "out")
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device))
    target = [targets.parse_target(sshd.target)]
    first = push_many(target, dep, opts)[0]
    assert first.ok, first.error
    # A re-converted deployment: new labels, same models.
    changed = make_deployment(tmp_path / "out", extra={"notes.txt": b"calibrated again\n"})
    second = push_many(target, changed, opts)[0]
    assert second.ok, second.error
    assert not second.unchanged and second.release_id != first.release_id
    assert second.files_sent == 2 and second.files_skipped == 3  # notes + manifest; 3 linked
    assert second.bytes_sent == (dep / "notes.txt").stat().st_size + \
        (dep / "manifest.json").stat().st_size
    assert second.previous == f"releases/{first.release_id}"
    assert os.readlink(device / "current") == f"releases/{second.release_id}"
    assert os.readlink(device / "previous") == f"releases/{first.release_id}"
    assert (device / "releases" / first.release_id / "manifest.json").is_file()
    assert (device / "current" / "notes.txt").read_bytes() == b"calibrated again\n"
    model = "mobilenet_v1_0.25_128_quant.tflite"
    # Unchanged models are hard links into the previous release, not copies.
    assert (device / "current" / model).stat().st_ino == \
        (device / "releases" / first.release_id / model).stat().st_ino

    # Rollback switches back; a second rollback switches forward again.
    links = rollback_target(target[0], opts)
    assert links == {"current": first.release_id, "previous": second.release_id}
    assert os.readlink(device / "current") == f"releases/{first.release_id}"
    assert not (device / "current" / "notes.txt").exists()
    rollback_target(target[0], opts)
    assert os.readlink(device / "current") == f"releases/{second.release_id}"
    with pytest.raises(UserError, match="does not exist"):
        rollback_target(target[0], opts, to="20000101T000000Z-nope")


def test_rollback_without_previous_release_is_refused(sshd, ssh_client_key, device, deployment,
                                                      tmp_path):
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device))
    target = targets.parse_target(sshd.target)
    with pytest.raises(UserError, match="no previous release"):
        rollback_target(target, opts)
    assert push_many([target], deployment, opts)[0].ok
    with pytest.raises(UserError, match="no previous release"):
        rollback_target(target, opts)


def test_file_changed_after_planning_is_caught_by_the_device(sshd, ssh_client_key,
                                                                   device, tmp_path):
    """A file changed after its manifest was read is caught by the device's sha256 check."""
    dep = make_deployment(tmp_path / "out")
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device))
    conn = connect(targets.parse_target(sshd.target), opts)
    with conn:
        deployment = transfer.load_deployment(dep)
        xfer = transfer.Transfer(conn, str(device))
        plan = xfer.plan(deployment, release.probe(conn, str(device)))
        labels = dep / "imagenet_labels.txt"
        labels.write_bytes(labels.read_bytes().replace(b"tench", b"TENCH"))  # same size
        with pytest.raises(UserError, match="sha256 of imagenet_labels.txt on the device"):
            xfer.send(plan)
    assert not (device / "current").exists()
    assert [p.name for p in (device / "releases").iterdir()] == []


def test_push_local_rehearses_without_ssh(deployment, tmp_path):
    remote = tmp_path / "local-device"
    result = push_local(deployment, tmp_path / "reports", remote, bench_runs=3)
    assert result.ok, result.error
    assert os.readlink(remote / "current") == f"releases/{result.release_id}"
    assert sha(remote / "current" / "manifest.json") == sha(deployment / "manifest.json")
    [report] = result.reports
    assert report["latency_us"]["count"] == 3
    assert Path(report["model"]["path"]).resolve().parent == \
        (remote / "releases" / result.release_id).resolve()
    with store.open_store(tmp_path / "reports") as s:
        assert s.count() == 1 and s.targets() == ["local"]
    again = push_local(deployment, tmp_path / "reports", remote, bench_runs=3)
    assert again.unchanged and again.bytes_sent == 0
    from rich.console import Console

    console = Console(record=True, width=200)
    print_table([result, again], console)
    text = console.export_text()
    assert "local" in text and "pushed" in text and "unchanged" in text and "CPU" in text


def test_compare_push_stores_every_variant_report(tmp_path):
    """`--compare`: qrun bench --compare on the device, one stored row per variant."""
    dep = make_deployment(tmp_path / "out")
    opts = PushOptions(remote_dir=str(tmp_path / "local-device"), compare=True,
                       bench_runs=2, reports_dir=tmp_path / "reports")
    result = push_many([targets.parse_target("local")], dep, opts)[0]
    assert result.ok, result.error
    document = json.loads(result.report_files[0].read_text())
    assert document["kind"] == "qrun-bench-compare"
    variants = [r["model"]["variant"] for r in document["reports"]]
    assert INT8 in variants and len(result.reports) == len(variants)
    with store.open_store(tmp_path / "reports") as s:
        assert s.count() == len(variants)


def test_runner_wheel_holds_qrun_only(tmp_path):
    import zipfile

    path = wheel.build_wheel(tmp_path)
    version = wheel.runner_version()
    assert path.name == f"qrun-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        meta = zf.read(f"qrun-{version}.dist-info/METADATA").decode()
        entry = zf.read(f"qrun-{version}.dist-info/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"qrun", f"qrun-{version}.dist-info"}
    assert f"Version: {version}" in meta
    assert "qrun/cli.py" in names and not any("__pycache__" in n for n in names)
    requires = sorted(ln.split(": ", 1)[1] for ln in meta.splitlines()
                      if ln.startswith("Requires-Dist"))
    # The device extra, without its marker; never the host's TensorFlow or paramiko. The
    # runner's own `video` extra (PyAV) is the one requirement with an extra marker.
    assert {r.split(">")[0].split(";")[0] for r in requires} >= {"numpy", "ai-edge-litert"}
    assert not [r for r in requires if ("extra" in r and not r.endswith('extra == "video"'))
                or r.startswith(("tensorflow", "paramiko"))]
    assert "qrun = qrun.cli:main" in entry
    assert wheel.build_wheel(tmp_path / "again").read_bytes() == path.read_bytes()


def test_runner_version_follows_the_sources():
    """A changed qrun source (same release number) is a different runner: the push reinstalls."""
    files = wheel.package_files()
    assert wheel.runner_version(files) == wheel.runner_version()
    name, data = files[0]
    changed = [(name, data + b"\n# edited\n")] + files[1:]
    assert wheel.runner_version(changed) != wheel.runner_version(files)
    assert wheel.runner_version(changed).split("+")[0] == qrun.__version__


def test_missing_device_python_is_one_clear_line(sshd, ssh_client_key, device, deployment,
                                                 tmp_path):
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device),
                   python="/nonexistent/python3")
    result = push_many([targets.parse_target(sshd.target)], deployment, opts)[0]
    assert not result.ok
    assert "'/nonexistent/python3' was not found on the device" in result.error
    assert "--python" in result.error
    assert not (device / "current").exists()


def test_half_made_runner_venv_is_made_again(sshd, ssh_client_key, deployment,
                                             device_wheelhouse, tmp_path):
    """An interrupted venv creation (a python without pip) does not wedge later pushes."""
    remote = tmp_path / "device"
    (remote / "venv" / "bin").mkdir(parents=True)
    (remote / "venv" / "bin" / "python").symlink_to("/bin/false")
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(remote),
                   wheelhouse=device_wheelhouse)
    result = push_many([targets.parse_target(sshd.target)], deployment, opts)[0]
    assert result.ok, result.error
    assert result.runner_installed
    assert (remote / "venv" / "bin" / "qrun").exists()


def test_damaged_copy_on_the_device_is_sent_while_a_big_upload_streams(
        sshd, ssh_client_key, device, tmp_path):
    """Over SSH: the receiver names the damaged copy before reading the upload; the host, mid
    stream of 8 MiB, sends it again with the model's bytes, and the push completes."""
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device))
    target = [targets.parse_target(sshd.target)]
    first = push_many(target, make_deployment(tmp_path / "a"), opts)[0]
    assert first.ok, first.error
    model = device / "current" / "mobilenet_v1_0.25_128_quant.tflite"
    model.write_bytes(model.read_bytes()[:-1])  # truncated
    dep = make_deployment(tmp_path / "b", extra={"blob.bin": os.urandom(8 << 20)})
    second = push_many(target, dep, opts)[0]
    assert second.ok, second.error
    assert second.files_sent == 3 and second.files_skipped == 2  # blob, manifest, model
    assert sha(device / "current" / model.name) == sha(dep / model.name)
