"""`qdeploy push --engine ansible` with real ansible-core against five loopback sshds.

Each test gets fresh remote dirs on the five session devices (tests/fixtures/ansible.py) whose
runner is the session's installed one; the inventory sets `qdeploy_remote_dir` per host.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import qrun
from qdeploy.ansible import runner
from qdeploy.push import wheel
from qdeploy.push.fleet import push_many
from qdeploy.push.pipeline import rollback_target
from qdeploy.remote import targets
from qdeploy.reports import store
from tests.fixtures.deployments import make_deployment
from tests.fixtures.sshd import sha

pytestmark = pytest.mark.slow


def links(remote: Path) -> dict:
    return {n: os.readlink(remote / n).rsplit("/", 1)[-1] if (remote / n).is_symlink() else None
            for n in ("current", "previous")}


def tree(remote: Path) -> dict:
    """The layout under a remote dir, release ids replaced by the link naming them: relative
    path -> sha256 (files) or "-> link" (symlinks); venv/ (the shared runner) left out."""
    names = {rid: n for n, rid in links(remote).items() if rid}
    out = {}
    for path in sorted(remote.rglob("*")):
        rel = path.relative_to(remote)
        if rel.parts[0] in ("venv", ".lock"):
            continue
        parts = list(rel.parts)
        if parts[0] == "releases" and len(parts) > 1:
            parts[1] = names.get(parts[1], "other")
        key = "/".join(parts)
        if path.is_symlink():
            target = os.readlink(path).rsplit("/", 1)[-1]
            out[key] = "-> " + names.get(target, target)
        elif path.is_file():
            out[key] = (sha(path), oct(path.stat().st_mode & 0o777))
        else:
            out[key] = "dir"
    return out


def test_first_push_unchanged_rerun_and_changed_model(fleet, tmp_path, tcp_proxy):
    dep = make_deployment(tmp_path / "a")
    first = runner.push_fleet(dep, fleet.inventory, fleet.options())
    assert [r.outcome for r in first] == ["updated"] * 5, [r.error for r in first]
    for r, remote in zip(first, fleet.remote_dirs):
        assert links(remote) == {"current": r.release_id, "previous": None}
        assert r.files_sent == 4 and r.bytes_sent == sum(
            f.stat().st_size for f in dep.iterdir() if f.name != "manifest.json") + (
            dep / "manifest.json").stat().st_size
        for name in os.listdir(dep):
            assert sha(remote / "current" / name) == sha(dep / name)
        assert not (remote / ".incoming").exists()
        assert r.runner_version == wheel.runner_version() and not r.runner_installed

    # Unchanged: dev0 through a counting relay; only the handshake and the probe pass.
    proxy = tcp_proxy(fleet.servers[0].port)
    fleet.known_hosts.write_text(fleet.known_hosts.read_text() + fleet.servers[0]
                                 .known_hosts_line().replace(f"]:{fleet.servers[0].port} ",
                                                             f"]:{proxy.port} "))
    relayed = fleet.write_inventory(tmp_path / "relayed.ini")
    relayed.write_text(relayed.read_text().replace(
        f"ansible_port={fleet.servers[0].port} ", f"ansible_port={proxy.port} "))
    again = runner.push_fleet(dep, relayed, fleet.options())
    assert [r.outcome for r in again] == ["unchanged"] * 5, [r.error for r in again]
    assert all(r.bytes_sent == 0 and r.files_sent == 0 and r.files_skipped == 4 for r in again)
    assert [links(d)["current"] for d in fleet.remote_dirs] == [r.release_id for r in first]
    model = (dep / "mobilenet_v1_0.25_128_quant.tflite").stat().st_size
    assert 0 < proxy.sent < model / 4, proxy.sent  # no artifact went over the wire

    # A changed model: only it and the manifest are sent, the rest linked on the device.
    changed = make_deployment(tmp_path / "b", extra={"model_extra.bin": b"x" * 5000})
    third = runner.push_fleet(changed, fleet.inventory, fleet.options())
    assert [r.outcome for r in third] == ["updated"] * 5, [r.error for r in third]
    for r, before, remote in zip(third, first, fleet.remote_dirs):
        assert (r.files_sent, r.files_skipped) == (2, 3)
        assert r.bytes_sent == 5000 + (changed / "manifest.json").stat().st_size
        assert links(remote) == {"current": r.release_id, "previous": before.release_id}
        assert (remote / "current" / "model_extra.bin").read_bytes() == b"x" * 5000


def broken_runner(remote: Path) -> None:
    """A venv whose qrun has the host's version but fails: the push's bench fails after the
    switch, so the host must be rolled back."""
    (remote / "venv").unlink()
    dist = remote / "venv/lib/python3/site-packages" / f"qrun-{wheel.runner_version()}.dist-info"
    dist.mkdir(parents=True)
    (remote / "venv/bin").mkdir()
    for name in ("qrun", "python"):  # the runner runs as venv/bin/python -m qrun
        broken = remote / "venv/bin" / name
        broken.write_text("#!/bin/sh\necho 'qrun: this runner is broken (test)' >&2\nexit 1\n")
        broken.chmod(0o755)


def test_failing_host_rolled_back_and_later_batches_not_started(fleet, tmp_path):
    a = make_deployment(tmp_path / "a")
    first = runner.push_fleet(a, fleet.inventory, fleet.options())
    assert all(r.ok for r in first), [r.error for r in first]
    broken_runner(fleet.remote_dirs[1])
    b = make_deployment(tmp_path / "b", extra={"model_extra.bin": b"y" * 100})
    env = dict(os.environ, PATH=runner.ansible_path())
    done = subprocess.run(
        [sys.executable, "-m", "qdeploy", "push", str(b), "--engine", "ansible", "-i",
         str(fleet.inventory), "--serial", "1,50%", "--max-fail", "10%", "--bench",
         "--bench-runs", "2", "--no-verify", "--identity", str(fleet.key.private),
         "--known-hosts", str(fleet.known_hosts), "--reports", str(tmp_path / "reports"),
         "--ssh-config", str(tmp_path / "no-config")],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    cells = [[c.strip() for c in ln.split("│") if c.strip()] for ln in done.stdout.splitlines()]
    rows = {c[0]: c[1] for c in cells if len(c) > 1 and c[0].startswith("dev")}
    assert rows == {"dev0": "pushed", "dev1": "rolled back", "dev2": "pushed",
                    "dev3": "not attempted", "dev4": "not attempted"}, done.stdout
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 3 and "broken" in errors[0] and "dev1" in errors[0]
    # dev1 back on release a (the failed release deleted), dev0/dev2 on b, dev3/dev4 untouched
    assert links(fleet.remote_dirs[1]) == links_after(first[1])
    assert not [p for p in (fleet.remote_dirs[1] / "releases").iterdir()
                if p.name != first[1].release_id]
    for i in (0, 2):
        assert (fleet.remote_dirs[i] / "current" / "model_extra.bin").exists()
    for i in (3, 4):
        assert links(fleet.remote_dirs[i]) == links_after(first[i])


def links_after(result) -> dict:
    return {"current": result.release_id, "previous": None}


def test_layout_same_as_native_push_and_both_engines_interoperate(fleet, tmp_path):
    a = make_deployment(tmp_path / "a")
    b = make_deployment(tmp_path / "b", extra={"model_extra.bin": b"z" * 300})
    native_dir = fleet.remote_dirs[4]  # dev4's dir, pushed natively; the others by Ansible
    native_target = targets.Target("native", "127.0.0.1", "root", fleet.servers[4].port)
    opts = fleet.options(remote_dir=str(native_dir))
    for dep in (a, b):
        assert push_many([native_target], dep, opts)[0].ok
        results = runner.push_fleet(dep, fleet.inventory, fleet.options())
        # (dev4 too: the native push left it exactly as an Ansible push wants it)
        assert results[4].outcome == "unchanged", results[4].error
        assert all(r.outcome == "updated" for r in results[:4]), [r.error for r in results]
    assert tree(fleet.remote_dirs[0]) == tree(native_dir)
    assert "releases/current/model_extra.bin" in tree(native_dir)

    # qdeploy rollback (native) on an Ansible-updated host, then Ansible pushes b again.
    dev0 = targets.Target("dev0", "127.0.0.1", "root", fleet.servers[0].port,
                          remote_dir=str(fleet.remote_dirs[0]))
    before = links(fleet.remote_dirs[0])
    back = rollback_target(dev0, fleet.options())
    assert back == {"current": before["previous"], "previous": before["current"]}
    again = runner.push_fleet(b, fleet.inventory, fleet.options())
    assert again[0].outcome == "updated" and again[0].files_sent == 1  # the manifest only
    assert again[1].outcome == "unchanged"

    # The exported rollback.yml, run by plain ansible-playbook, on dev1.
    from qdeploy.ansible import export

    playbook = export.export(b, tmp_path / "pb", export.ExportOptions(bench=False))
    before = links(fleet.remote_dirs[1])
    env = dict(os.environ, PATH=runner.ansible_path(), **runner.ssh_environment(fleet.options()))
    done = subprocess.run(["ansible-playbook", "-i", str(fleet.inventory), "rollback.yml",
                           "--limit", "dev1"], cwd=playbook, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert links(fleet.remote_dirs[1]) == {"current": before["previous"],
                                           "previous": before["current"]}


def test_fetched_reports_and_verify_land_in_the_store(fleet, tmp_path):
    from typer.testing import CliRunner

    from qdeploy.cli import app

    inventory = tmp_path / "two.ini"
    fleet.write_inventory(inventory)
    inventory.write_text("\n".join(inventory.read_text().splitlines()[:3]) + "\n")
    dep = make_deployment(tmp_path / "a", reference=True)
    opts = fleet.options(bench=True, bench_runs=3)
    results = runner.push_fleet(dep, inventory, opts)
    assert [r.outcome for r in results] == ["updated", "updated"], [r.error for r in results]
    for r in results:
        assert len(r.report_files) == 1 and r.report_files[0].parent == opts.reports_dir
        report = json.loads(r.report_files[0].read_text())
        assert report["kind"] == "qrun-bench" and report["latency_us"]["count"] == 3
        assert r.verify and all(c.ok for c in r.verify)
    db = sqlite3.connect(opts.reports_dir / store.STORE_NAME)
    assert sorted(t for (t,) in db.execute("SELECT target FROM reports")) == ["dev0", "dev1"]
    verified = [t for (t,) in db.execute("SELECT target FROM verifications")]
    assert set(verified) == {"dev0", "dev1"} and len(verified) == sum(len(r.verify)
                                                                      for r in results)
    shown = CliRunner().invoke(app, ["report", "--reports", str(opts.reports_dir), "--json"])
    assert shown.exit_code == 0, shown.output
    assert {"dev0", "dev1"} <= set(shown.output.replace('"', " ").split())


def test_unreachable_host_is_one_error_and_the_others_are_pushed(fleet, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    inventory = fleet.write_inventory(tmp_path / "gone.ini")
    inventory.write_text(inventory.read_text().replace(
        f"ansible_port={fleet.servers[2].port} ", f"ansible_port={closed} "))
    results = runner.push_fleet(make_deployment(tmp_path / "a"), inventory, fleet.options())
    assert [r.outcome for r in results] == ["updated", "updated", "failed", "updated",
                                            "updated"], [r.error for r in results]
    assert results[2].error.startswith("dev2: unreachable") and "\n" not in results[2].error


def test_host_keys_are_checked(fleet, tmp_path):
    fleet.known_hosts.write_text("")
    results = runner.push_fleet(make_deployment(tmp_path / "a"), fleet.inventory,
                                fleet.options())
    assert all(r.outcome == "failed" and "verification failed" in r.error.lower()
               or "host key" in r.error.lower() for r in results), [r.error for r in results]
    assert not any((d / "current").exists() for d in fleet.remote_dirs)
    accepted = runner.push_fleet(make_deployment(tmp_path / "a"), fleet.inventory,
                                 fleet.options(accept_new=True))
    assert all(r.ok for r in accepted), [r.error for r in accepted]
    assert len(fleet.known_hosts.read_text().splitlines()) == 5



def one_host(fleet, tmp_path, name: str = "one.ini") -> Path:
    """An inventory of dev0 alone."""
    path = fleet.write_inventory(tmp_path / name)
    path.write_text("\n".join(path.read_text().splitlines()[:2]) + "\n")
    return path


def test_a_host_without_the_runner_gets_it_installed(fleet, tmp_path, device_wheelhouse):
    """No venv on the device: the playbook uploads the wheel and the wheelhouse and installs
    the runner under the lock; the bench then runs through it."""
    remote = fleet.remote_dirs[0]
    (remote / "venv").unlink()
    dep = make_deployment(tmp_path / "a")
    [result] = runner.push_fleet(dep, one_host(fleet, tmp_path),
                                 fleet.options(wheelhouse=device_wheelhouse, bench=True,
                                               bench_runs=3, verify=False))
    assert result.outcome == "updated", result.error
    assert result.runner_installed and result.runner_version == wheel.runner_version()
    done = subprocess.run([str(remote / "venv/bin/python"), "-m", "qrun", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["qrun", qrun.__version__]
    assert len(result.report_files) == 1


def test_a_failed_verify_rolls_the_host_back(fleet, tmp_path):
    """Verify against another model's int8 twin fails on the controller, inside the batch:
    the host is rolled back to what it had, and the push fails."""
    first = make_deployment(tmp_path / "a")
    [before] = runner.push_fleet(first, one_host(fleet, tmp_path), fleet.options())
    assert before.outcome == "updated", before.error
    other = make_deployment(tmp_path / "other", {"int8": "mobilenet_v1_0.5_160_quant.tflite"},
                            reference=True)
    changed = make_deployment(tmp_path / "b", reference=True, created="2026-12-01T00:00:00Z")
    [after] = runner.push_fleet(changed, one_host(fleet, tmp_path, "again.ini"),
                                fleet.options(verify=True, verify_against=other, bench=True,
                                              bench_runs=3))
    assert after.outcome == "rolled back" and not after.ok, (after.outcome, after.error)
    assert links(fleet.remote_dirs[0])["current"] == before.release_id
