"""Push faults against real sshds: a cut connection, a full disk, a fleet with a dead device,
and bad input at the command line (one `error:` line, non-zero exit, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qdeploy.push import fleet
from qdeploy.push import pipeline as push
from qdeploy.remote import targets
from tests.fixtures.deployments import make_deployment
from tests.fixtures.sshd import push_options as options

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_home")]
QDEPLOY = [sys.executable, "-m", "qdeploy"]


def _blob(size: int) -> bytes:
    return os.urandom(size)


def _staging(remote: Path) -> list:
    return [p.name for p in (remote / "releases").iterdir() if p.name.startswith(".staging")]


def test_connection_cut_mid_upload_leaves_current_and_next_push_completes(
        sshd, ssh_client_key, device, tmp_path, tcp_proxy):
    out = tmp_path / "out"
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device))
    direct = targets.parse_target(sshd.target)
    first = fleet.push_many([direct], make_deployment(out), opts)[0]
    assert first.ok, first.error
    before = {p.name: p.read_bytes() for p in (device / "current").iterdir()}

    big = make_deployment(out, extra={"blob.bin": _blob(8 << 20)})
    proxy = tcp_proxy(sshd.port, cut_after=2 << 20)  # past the handshake and probe
    with open(tmp_path / "known_hosts", "a") as f:
        f.write(sshd.known_hosts_line().replace(f"]:{sshd.port} ", f"]:{proxy.port} "))
    cut = fleet.push_many([targets.parse_target(f"root@127.0.0.1:{proxy.port}")], big, opts)[0]
    assert proxy.cut
    assert not cut.ok
    # Adapted (issue 18: the error says what the device kept by the phase the host saw): when
    # the host had written every byte into the relay before the cut, it cannot know whether
    # the device finished, and says "current is X or release Y"; the device kept X either way.
    assert "dropped" in cut.error
    assert ("current` on the device is unchanged" in cut.error
            or f"`current` on the device is release {first.release_id} or" in cut.error)
    assert os.readlink(device / "current") == f"releases/{first.release_id}"
    assert {p.name: p.read_bytes() for p in (device / "current").iterdir()} == before

    again = fleet.push_many([direct], big, opts)[0]
    assert again.ok, again.error
    assert os.readlink(device / "current") == f"releases/{again.release_id}"
    assert (device / "current" / "blob.bin").read_bytes() == (out / "blob.bin").read_bytes()
    assert _staging(device) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs as the device's remote dir (a real ENOSPC)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test ({done.stderr.strip()}); "
                    "needs root with CAP_SYS_ADMIN")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_remote_disk_full_is_reported_and_rolled_back(sshd, ssh_client_key, small_disk,
                                                      first_push, tmp_path):
    (small_disk / "venv").symlink_to(sshd.home / "qdeploy" / "venv")
    out = tmp_path / "out"
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(small_disk))
    target = targets.parse_target(sshd.target)
    first = fleet.push_many([target], make_deployment(out), opts)[0]
    assert first.ok, first.error
    full = fleet.push_many([target], make_deployment(out, extra={"blob.bin": _blob(4 << 20)}),
                           opts)[0]
    assert not full.ok
    assert "disk is full" in full.error and "No space left on device" in full.error
    assert "partial release was removed" in full.error
    assert os.readlink(small_disk / "current") == f"releases/{first.release_id}"
    assert _staging(small_disk) == []
    assert sorted(p.name for p in (small_disk / "releases").iterdir()) == [first.release_id]
    # The device still works: the same release can be pushed again, unchanged.
    ok = fleet.push_many([target], make_deployment(tmp_path / "out2"), opts)[0]
    assert ok.ok and ok.unchanged, ok.error


def test_five_targets_in_parallel_with_one_down(sshd_factory, sshd, ssh_client_key, first_push,
                                                deployment, tmp_path):
    servers = [sshd_factory() for _ in range(4)]
    dead = sshd_factory()
    dead.stop()
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(s.known_hosts_line() for s in servers + [dead]))
    for s in servers:  # each device gets the session's runner; the remote dir is ~/qdeploy
        (s.home / "qdeploy").mkdir()
        (s.home / "qdeploy" / "venv").symlink_to(sshd.home / "qdeploy" / "venv")
    inventory = tmp_path / "fleet.ini"
    inventory.write_text("[pis]\n" + "".join(
        f"pi{i} ansible_host=127.0.0.1 ansible_user=root ansible_port={s.port}\n"
        for i, s in enumerate(servers + [dead])))
    started = time.monotonic()
    cli = subprocess.run(
        QDEPLOY + ["push", str(deployment), "--inventory", str(inventory), "--no-bench",
                   "--identity", str(ssh_client_key.private), "--known-hosts", str(kh),
                   "--ssh-config", str(tmp_path / "none"), "--connect-timeout", "5",
                   "--jobs", "5", "--reports", str(tmp_path / "reports")],
        capture_output=True, text=True, timeout=300)
    assert time.monotonic() - started < 300
    assert cli.returncode == 1, cli.stderr
    assert "Traceback" not in cli.stderr
    errors = [ln for ln in cli.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "pi4" in errors[0] and "refused" in errors[0].lower()
    for i, s in enumerate(servers):
        assert f"pi{i}: done" in cli.stderr  # per-target progress
        assert (s.home / "qdeploy" / "current" / "manifest.json").read_bytes() == \
            (deployment / "manifest.json").read_bytes()
    table = cli.stdout
    assert table.count("pushed") == 4 and "failed" in table
    for i in range(5):
        assert f"pi{i}" in table


# -- bad input at the command line ------------------------------------------------------------

def _cli(*args, cwd=None):
    done = subprocess.run(QDEPLOY + list(args), capture_output=True, text=True, timeout=120,
                          cwd=cwd)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_cli_bad_input_is_one_line_each(tmp_path, deployment):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no manifest.json; run qdeploy convert" in _cli("push", str(empty), "-t", "local")
    assert "is not a target" in _cli("push", str(deployment), "-t", "pi@host:port")
    inv = tmp_path / "hosts"
    inv.write_text("pi@a.local\n[pis]\npi@b.local ansible_port=twenty\n")
    assert f"inventory {inv} line 3" in _cli("push", str(deployment), "--inventory", str(inv))
    assert "no target" in _cli("push", str(deployment))
    assert "--identity" in _cli("push", str(deployment), "-t", "pi@127.0.0.1",
                                "--identity", str(tmp_path / "missing"))
    assert "is given twice" in _cli("push", str(deployment), "-t", "local", "-t", "local")
    for blank in ("", "  "):  # would mean the login dir (and an undo of `''/current`)
        assert "--remote-dir" in _cli("push", str(deployment), "-t", "local", "--remote-dir",
                                      blank, cwd=tmp_path)
        assert "is empty" in _cli("rollback", "-t", "local", "--remote-dir", blank,
                                  cwd=tmp_path)
    assert not (tmp_path / "current").exists() and not (tmp_path / "releases").exists()
    labels = deployment / "imagenet_labels.txt"
    labels.write_bytes(labels.read_bytes() + b"extra\n")
    line = _cli("push", str(deployment), "-t", "local")
    assert "imagenet_labels.txt (labels) changed since the manifest was written" in line
    assert "refusing to push" in line


def test_stale_receiver_holding_the_lock_is_named_then_gives_up_by_itself(
        sshd, ssh_client_key, device, tmp_path, monkeypatch):
    """A receiver whose host went silent without closing (a cut connection, as the device
    sees it) holds the remote dir's lock: a push waits a bounded time and names it, and the
    stale receiver gives up after its inactivity timeout, removing its staging directory."""
    from qdeploy.push import release
    from qdeploy.push import transfer

    monkeypatch.setattr(release, "LOCK_WAIT_S", 1.0)
    monkeypatch.setattr(release, "RECEIVE_IDLE_S", 6.0)
    dep = make_deployment(tmp_path / "out")
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device))
    target = targets.parse_target(sshd.target)
    with push.connect(target, opts) as stale:
        plan = transfer.Transfer(stale, str(device)).plan(transfer.load_deployment(dep),
                                                          release.RemoteState())
        chan = stale.client.get_transport().open_session()
        chan.exec_command(release.receive_command("python3", str(device)))
        header = next(transfer.Transfer(stale, str(device))._stream(plan, lambda n: None))
        chan.sendall(header)  # ... and then nothing more, the channel left open
        deadline = time.monotonic() + 10
        while not ((device / "releases").is_dir() and _staging(device)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _staging(device)
        pid = (device / ".lock").read_text().strip()
        blocked = fleet.push_many([target], dep, opts)[0]  # waits 1 s for the lock, not 6
        assert not blocked.ok
        assert (f"another push to {device} is running or a stale one holds its lock "
                f"(pid {pid})") in blocked.error
        assert chan.recv_exit_status() == 1  # the stale receiver timed out on its own
        assert b"no data from the host for 6 s" in chan.recv_stderr(4096)
    assert _staging(device) == [] and not (device / "current").exists()
    again = fleet.push_many([target], dep, opts)[0]
    assert again.ok, again.error


def test_runner_install_waits_for_the_device_lock(sshd, ssh_client_key, first_push, tmp_path,
                                                  monkeypatch):
    """The runner install takes the remote dir's lock like a release switch: while another
    push holds it, the install does not touch venv/ and says who holds it."""
    import fcntl

    from qdeploy.push import release
    from qdeploy.push import wheel

    monkeypatch.setattr(release, "LOCK_WAIT_S", 0.5)
    remote = tmp_path / "device"
    remote.mkdir()
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(remote))
    with open(remote / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(str(os.getpid()))
        held.flush()
        with push.connect(targets.parse_target(sshd.target), opts) as conn:
            with pytest.raises(push.UserError) as info:
                wheel.ensure_runner(conn, str(remote))
    assert f"a stale one holds its lock (pid {os.getpid()})" in str(info.value)
    assert not (remote / "venv").exists()
