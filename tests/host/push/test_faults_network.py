"""Pushes through a relay that stalls, cuts (RST or FIN) or throttles the link, against a real
sshd: a stall is one line naming the target and the step within its timeout, an abandoned
receiver never blocks the next push, a fleet finishes around a stalled member, and a soak of
seeded random faults across a whole push leaves `current` complete every time."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from qdeploy.push import fleet
from qdeploy.remote import targets
from tests.fixtures.deployments import make_deployment
from tests.fixtures.sshd import push_options as options

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_home")]
QDEPLOY = [sys.executable, "-m", "qdeploy"]
TIMEOUT_S = 2.0
MARGIN_S = 3.0  # the test's slack on a shared machine; scripts/bench_push.py measures it


def _staging(remote: Path) -> list:
    releases = remote / "releases"
    return [p.name for p in releases.iterdir() if p.name.startswith(".staging")] \
        if releases.is_dir() else []


def _relayed(proxy, tmp_path: Path, sshd) -> targets.Target:
    """The target through `proxy`, its host key known under the relay's port."""
    with open(tmp_path / "known_hosts", "a") as f:
        f.write(sshd.known_hosts_line().replace(f"]:{sshd.port} ", f"]:{proxy.port} "))
    return targets.parse_target(f"root@127.0.0.1:{proxy.port}")


def _complete(remote: Path, link: str):
    """The release `link` points at when it is complete: every artifact of its manifest
    there with its sha256 (None when there is no link); fails on a partial one."""
    if not (remote / link).is_symlink():
        return None
    rel = remote / os.readlink(remote / link)
    manifest = json.loads((rel / "manifest.json").read_text())
    for art in manifest["artifacts"].values():
        got = hashlib.sha256((rel / art["file"]).read_bytes()).hexdigest()
        assert got == art["sha256"], f"{link} -> {rel.name}: {art['file']} is not complete"
    return rel.name


def _fast(tmp_path, sshd, key, device, **kw):
    return options(tmp_path, sshd, key, remote_dir=str(device), connect_timeout=TIMEOUT_S,
                   command_timeout=TIMEOUT_S, **kw)


def test_a_stall_mid_upload_is_one_line_in_time_and_the_next_push_works(
        sshd, ssh_client_key, device, tmp_path, tcp_proxy):
    """The issue's case through the CLI: the link stops in the middle of the push (no FIN, no
    RST); the push fails in one line naming the target, the step and the kept release, within
    the timeout, and the abandoned receiver does not block the next push (a note says so)."""
    out = tmp_path / "out"
    opts = _fast(tmp_path, sshd, ssh_client_key, device)
    direct = targets.parse_target(sshd.target)
    first = fleet.push_many([direct], make_deployment(out), opts)[0]
    assert first.ok, first.error
    big = make_deployment(out, extra={"blob.bin": os.urandom(8 << 20)})
    # the handshake, probe and receiver start are < 100 KiB: 4 MiB in is mid-upload
    stall = tcp_proxy(sshd.port, stall_after=4 << 20)
    target = _relayed(stall, tmp_path, sshd)
    started = time.monotonic()
    cli = subprocess.run(
        QDEPLOY + ["push", str(out), "-t", target.name, "--no-bench", "--remote-dir",
                   str(device), "--identity", str(ssh_client_key.private), "--known-hosts",
                   str(tmp_path / "known_hosts"), "--ssh-config", str(tmp_path / "none"),
                   "--connect-timeout", str(TIMEOUT_S), "--command-timeout", str(TIMEOUT_S),
                   "--reports", str(tmp_path / "reports")],
        capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert stall.stalled.is_set()
    assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
    errors = [ln for ln in cli.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and cli.stderr.strip().splitlines()[-1] == errors[0], cli.stderr
    assert errors[0].startswith(f"error: {target.name}: no answer from ")
    assert f"for {TIMEOUT_S:g} s (command timeout) while sending to the receiver" in errors[0]
    assert f"the device kept release {first.release_id}" in errors[0]
    assert took < 30  # the CLI's start (imports) included; the stall itself: bench_push.py
    assert _complete(device, "current") == first.release_id
    # The receiver there still waits for bytes; the next push ends it and goes ahead.
    started = time.monotonic()
    again = fleet.push_many([direct], big, opts)[0]
    assert again.ok, again.error
    assert time.monotonic() - started < 20
    assert any(n.startswith("ended the receiver of an abandoned push") for n in again.notes)
    assert _complete(device, "current") == again.release_id
    assert _complete(device, "previous") == first.release_id
    assert _staging(device) == []


@pytest.mark.parametrize("stage, step", [
    ("connecting", "sent no SSH banner within 2 s"),
    ("uploading", "starting the receiver"),
])
def test_a_stall_at_each_step_names_that_step(sshd, ssh_client_key, device, tmp_path,
                                               tcp_proxy, stage, step):
    """The relay stalls when the push reaches `stage`: the error names `step`."""
    opts = _fast(tmp_path, sshd, ssh_client_key, device)
    proxy = tcp_proxy(sshd.port)
    target = _relayed(proxy, tmp_path, sshd)
    started = time.monotonic()
    result = fleet.push_many([target], make_deployment(tmp_path / "out"), opts,
                             lambda t, s, *a: proxy.stall() if s == stage else None)[0]
    assert proxy.stalled.is_set()
    assert not result.ok and "\n" not in result.error
    assert step in result.error and result.error.startswith(target.name), result.error
    assert time.monotonic() - started < TIMEOUT_S + MARGIN_S + 2
    assert not (device / "current").exists()


def test_keepalives_notice_a_dead_link_during_a_long_silent_bench(
        sshd, ssh_client_key, device, tmp_path, tcp_proxy):
    """A bench may stay silent for its whole --command-timeout; a link that died meanwhile
    is noticed by the keepalives (1 s x 3), not after the command timeout."""
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device), bench=True,
                   bench_runs=2, verify=False, command_timeout=600, keepalive=1.0)
    proxy = tcp_proxy(sshd.port)
    target = _relayed(proxy, tmp_path, sshd)
    started = time.monotonic()
    result = fleet.push_many([target], make_deployment(tmp_path / "out"), opts,
                             lambda t, s, *a: proxy.stall() if s == "bench" else None)[0]
    assert not result.ok
    assert "to keepalives for 3 s while" in result.error and "qrun bench" in result.error
    assert time.monotonic() - started < 60


def test_a_fleet_of_ten_with_one_stalled_finishes_the_nine_and_returns_in_time(
        sshd_factory, sshd, ssh_client_key, first_push, deployment, tmp_path, tcp_proxy):
    servers = [sshd_factory() for _ in range(10)]
    for s in servers:  # each device gets the session's runner; the remote dir is ~/qdeploy
        (s.home / "qdeploy").mkdir()
        (s.home / "qdeploy" / "venv").symlink_to(sshd.home / "qdeploy" / "venv")
    stalled = tcp_proxy(servers[9].port, stall_after=30_000)  # past the handshake
    ports = [s.port for s in servers[:9]] + [stalled.port]
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(s.known_hosts_line() for s in servers)
                  + servers[9].known_hosts_line().replace(f"]:{servers[9].port} ",
                                                          f"]:{stalled.port} "))
    inventory = tmp_path / "fleet.ini"
    inventory.write_text("[pis]\n" + "".join(
        f"pi{i} ansible_host=127.0.0.1 ansible_user=root ansible_port={p}\n"
        for i, p in enumerate(ports)))
    started = time.monotonic()
    cli = subprocess.run(
        QDEPLOY + ["push", str(deployment), "--inventory", str(inventory), "--no-bench",
                   "--identity", str(ssh_client_key.private), "--known-hosts", str(kh),
                   "--ssh-config", str(tmp_path / "none"), "--connect-timeout", "3",
                   "--command-timeout", "3", "--jobs", "10", "--reports",
                   str(tmp_path / "reports")],
        capture_output=True, text=True, timeout=180)
    assert time.monotonic() - started < 90
    assert stalled.stalled.is_set()
    assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
    errors = [ln for ln in cli.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: pi9: "), cli.stderr
    assert "no answer" in errors[0] or "no SSH banner" in errors[0]
    for s in servers[:9]:
        assert (s.home / "qdeploy" / "current" / "manifest.json").read_bytes() == \
            (deployment / "manifest.json").read_bytes()
    assert cli.stdout.count("pushed") == 9 and "pi9" in cli.stdout and "failed" in cli.stdout


# -- the soak: seeded random faults across the whole push ---------------------------------

SOAK_PUSHES = 30
SOAK_SEED = 18
KINDS = ("rst", "fin", "stall")


def test_soak_random_faults_leave_a_complete_current_and_the_next_push_completes(
        sshd, ssh_client_key, device, tmp_path, tcp_proxy, capfd):
    """Each round: a push with one fault (RST, FIN or a stall) at a seeded random
    client-to-server byte offset anywhere in the push (handshake, probe, receiver start,
    upload, switch), then a clean push. After the fault: one error line, no traceback,
    `current` complete and either the old or the new release; after the clean push: done,
    no staging dir. The counts by kind and outcome are printed (pytest -s)."""
    rng = random.Random(SOAK_SEED)
    opts = _fast(tmp_path, sshd, ssh_client_key, device)
    direct = targets.parse_target(sshd.target)
    def fresh(i):  # a new blob each round: nothing to link, the whole push goes on the wire
        return make_deployment(tmp_path / f"out{i}", extra={"blob.bin": os.urandom(3 << 20)})

    counter = tcp_proxy(sshd.port)
    first = fleet.push_many([_relayed(counter, tmp_path, sshd)], fresh("first"), opts)[0]
    assert first.ok, first.error
    total = counter.sent  # one whole push, in client-to-server bytes
    outcomes: Counter = Counter()
    for round_ in range(SOAK_PUSHES):
        kind, offset = KINDS[round_ % 3], rng.randrange(total)
        old = _complete(device, "current")
        dep = fresh(round_)
        fault = (dict(stall_after=offset) if kind == "stall"
                 else dict(cut_after=offset, how=kind))
        proxy = tcp_proxy(sshd.port, **fault)
        capfd.readouterr()
        result = fleet.push_many([_relayed(proxy, tmp_path, sshd)], dep, opts)[0]
        printed = capfd.readouterr()
        assert "Traceback" not in printed.err + printed.out
        now = _complete(device, "current")
        if result.ok:  # the fault came after the last byte the push needed
            outcomes[(kind, "completed")] += 1
            assert now == result.release_id
        else:
            assert result.error and "\n" not in result.error, result.error
            assert result.error.startswith(proxy_name(proxy))
            outcomes[(kind, "failed, current new" if now != old else "failed, current old")] += 1
        prev = _complete(device, "previous")
        assert prev is None or prev != now
        proxy.close()
        clean = fleet.push_many([direct], dep, opts)[0]
        assert clean.ok, (kind, offset, clean.error)
        assert _complete(device, "current") == clean.release_id
        assert _staging(device) == []
        outcomes[("clean push after", "completed")] += 1
    print(f"\nsoak: {SOAK_PUSHES} faults over {total} client-to-server bytes per push (seed "
          f"{SOAK_SEED}):")
    for (kind, outcome), n in sorted(outcomes.items()):
        print(f"  {kind:18} {outcome:22} {n}")


def proxy_name(proxy) -> str:
    return f"root@127.0.0.1:{proxy.port}"
