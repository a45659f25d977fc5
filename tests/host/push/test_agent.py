"""The device agent (qdeploy.push.agent) on a temp dir: receive, rollback, discard, locked, put.

Driven in-process through `agent.main` with an in-memory stdin, as the device runs it but
without SSH; plus the checks that keep it runnable by a bare python3 from its source alone.
"""

from __future__ import annotations

import ast
import errno
import fcntl
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qdeploy.push import agent, release

SOURCE = Path(agent.__file__).read_text(encoding="utf-8")


def _file(name: str, data: bytes, source=None) -> dict:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "source": source}


def _stream(rid: str, files: dict, sources: dict = None, sha256: dict = None) -> io.BytesIO:
    """A push of `files` (name -> bytes) as the host sends it; `sources` names files the
    device has (name -> path under the remote dir), `sha256` overrides what the header says."""
    sources, sha256 = sources or {}, sha256 or {}
    head = [dict(_file(n, d, sources.get(n)), **({"sha256": sha256[n]} if n in sha256 else {}))
            for n, d in files.items()]
    body = b"".join(d for n, d in files.items() if n not in sources)
    return io.BytesIO(json.dumps({"release": rid, "files": head}).encode() + b"\n" + body)


def _run(capsys, *argv, stdin=None):
    """(exit status, the JSON line the agent printed)."""
    status = agent.main([str(a) for a in argv], stdin if stdin is not None else io.BytesIO())
    lines = capsys.readouterr().out.strip().splitlines()
    return status, json.loads(lines[-1])


def _push(capsys, root, rid, files, keep=5, **kw):
    return _run(capsys, "receive", root, "--keep", keep, "--wait", 0.5,
                stdin=_stream(rid, files, **kw))


def _links(root: Path) -> dict:
    return {n: os.readlink(root / n) if (root / n).is_symlink() else None
            for n in ("current", "previous")}


def _staging(root: Path) -> list:
    return [p.name for p in (root / "releases").iterdir() if p.name.startswith(".")]


FILES = {"model.tflite": os.urandom(3 << 20), "sub/labels.txt": b"cat\ndog\n",
         "manifest.json": b'{"artifacts": {}}'}


def test_receive_writes_checks_and_switches(tmp_path, capsys):
    root = tmp_path / "device"
    status, answer = _push(capsys, root, "r1", FILES)
    assert status == 0
    assert answer == {"release": "r1", "previous": None, "old_previous": None}
    for name, data in FILES.items():
        assert (root / "current" / name).read_bytes() == data
    assert _links(root) == {"current": "releases/r1", "previous": None}
    status, answer = _push(capsys, root, "r2", {"manifest.json": b"{}"})
    assert (status, answer) == (0, {"release": "r2", "previous": "releases/r1",
                                    "old_previous": None})
    assert _links(root) == {"current": "releases/r2", "previous": "releases/r1"}
    assert (root / ".lock").read_text() == str(os.getpid())
    assert _staging(root) == []


def test_receive_links_what_the_device_has_and_prunes_old_releases(tmp_path, capsys):
    root = tmp_path / "device"
    _push(capsys, root, "r01", FILES)
    model = "releases/r01/model.tflite"
    for i in range(2, 9):
        status, _ = _push(capsys, root, f"r{i:02d}", FILES, keep=2,
                          sources={"model.tflite": model if i == 2 else
                                   f"releases/r{i - 1:02d}/model.tflite"})
        assert status == 0
    assert (root / "current" / "model.tflite").read_bytes() == FILES["model.tflite"]
    assert os.stat(root / "current" / "model.tflite").st_nlink >= 2  # linked, not sent
    # the new current, its previous, the previous before (an undo goes back there), 2 more
    assert sorted(p.name for p in (root / "releases").iterdir()) == \
        ["r04", "r05", "r06", "r07", "r08"]
    assert _links(root) == {"current": "releases/r08", "previous": "releases/r07"}


def test_a_cut_stream_removes_staging_and_keeps_current(tmp_path, capsys):
    root = tmp_path / "device"
    _push(capsys, root, "r1", FILES)
    cut = _stream("r2", FILES)
    cut = io.BytesIO(cut.getvalue()[:-(1 << 20)])
    status, answer = _run(capsys, "receive", root, stdin=cut)
    assert status == agent.FAILED_EXIT
    assert answer == {"error": "interrupted",
                      "message": "upload interrupted: the stream ended early"}
    assert _links(root)["current"] == "releases/r1" and _staging(root) == []
    assert not (root / "releases" / "r2").exists()


def test_a_bad_hash_is_refused(tmp_path, capsys):
    root = tmp_path / "device"
    status, answer = _push(capsys, root, "r1", FILES, sha256={"sub/labels.txt": "0" * 64})
    assert status == agent.FAILED_EXIT and answer["error"] == "bad_hash"
    assert answer["message"] == "sha256 of sub/labels.txt on the device differs from the manifest"
    assert _links(root)["current"] is None and _staging(root) == []
    assert os.listdir(root / "releases") == []


def test_a_full_disk_is_disk_full_and_nothing_is_switched(tmp_path, capsys, monkeypatch):
    root = tmp_path / "device"
    _push(capsys, root, "r1", FILES)
    real = agent.write_from

    def fill_up(inp, path, size, digest, sync=False):
        if size > 1 << 20:  # the model: half of it fits
            real(inp, path, size // 2, digest, sync)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(inp, path, size, digest, sync)

    monkeypatch.setattr(agent, "write_from", fill_up)
    status, answer = _push(capsys, root, "r2", FILES)
    assert status == agent.DISK_FULL_EXIT == 28 and answer["error"] == "disk_full"
    assert "No space left on device" in answer["message"]
    assert _links(root) == {"current": "releases/r1", "previous": None}
    assert sorted(os.listdir(root / "releases")) == ["r1"]


def test_idle_host_gives_up_after_the_idle_timeout(tmp_path, capsys):
    root = tmp_path / "device"
    read, write = os.pipe()
    os.write(write, json.dumps({"release": "r1", "files": [_file("a", b"abc")]}).encode() + b"\n")
    started = time.monotonic()
    try:
        status, answer = _run(capsys, "receive", root, "--idle", 0.3, stdin=read)
    finally:
        os.close(read)
        os.close(write)
    assert 0.3 <= time.monotonic() - started < 5
    assert status == agent.FAILED_EXIT
    assert answer == {"error": "idle",
                      "message": "no data from the host for 0.3 s; the push was abandoned"}
    assert _staging(root) == []


def test_the_lock_held_by_another_process_names_its_pid(tmp_path, capsys):
    root = tmp_path / "device"
    root.mkdir()
    holder = subprocess.Popen([sys.executable, "-I", "-c", SOURCE, "locked", str(root),
                               "--", "sleep 30"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while (not (root / ".lock").exists() or (root / ".lock").read_text() != str(holder.pid)) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        status, answer = _run(capsys, "receive", root, "--wait", 0.3, stdin=_stream("r", FILES))
        assert 0.3 <= time.monotonic() - started < 5
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the agent and its `sleep`
        holder.wait()
    assert status == agent.LOCKED_EXIT == release.LOCKED_EXIT
    assert answer == {"error": "locked", "pid": str(holder.pid),
                      "message": f"{root}/.lock is held by pid {holder.pid}"}
    assert not (root / "releases" / "r").exists()


def test_a_lock_without_a_pid_is_unknown(tmp_path, capsys):
    root = tmp_path / "device"
    root.mkdir()
    with open(root / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        status, answer = _run(capsys, "rollback", root, "--wait", 0.1)
    assert (status, answer["error"], answer["pid"]) == (agent.LOCKED_EXIT, "locked", "unknown")


def test_damaged_or_missing_copies_are_named_before_any_byte_is_read(tmp_path, capsys):
    root = tmp_path / "device"
    _push(capsys, root, "r1", FILES)
    model = root / "releases" / "r1" / "model.tflite"
    model.write_bytes(b"x" + model.read_bytes()[1:])
    (root / "releases" / "r1" / "sub" / "labels.txt").unlink()
    sources = {"model.tflite": "releases/r1/model.tflite",
               "sub/labels.txt": "releases/r1/sub/labels.txt"}
    status, answer = _push(capsys, root, "r2", FILES, sources=sources)
    assert status == agent.DAMAGED_EXIT
    assert answer == {"error": "damaged", "files": ["model.tflite", "sub/labels.txt"],
                      "message": "the device's copies of model.tflite, sub/labels.txt are "
                                 "damaged or missing"}
    assert _links(root)["current"] == "releases/r1" and _staging(root) == []


def test_a_failure_after_the_switch_is_switched(tmp_path, capsys):
    root = tmp_path / "device"
    _push(capsys, root, "r1", FILES)
    (root / ".previous.tmp" / "in-the-way").mkdir(parents=True)
    status, answer = _push(capsys, root, "r2", FILES)
    assert status == agent.SWITCHED_EXIT and answer["error"] == "switched"
    assert "Is a directory" in answer["message"]
    assert _links(root)["current"] == "releases/r2"


def test_rollback_switches_back_and_refuses_what_is_not_there(tmp_path, capsys):
    root = tmp_path / "device"
    status, answer = _run(capsys, "rollback", root)
    assert (status, answer) == (agent.NO_RELEASE_EXIT, {
        "error": "no_previous", "message": f"no previous release under {root}"})
    _push(capsys, root, "r1", FILES)
    status, answer = _run(capsys, "rollback", root)
    assert (status, answer["error"]) == (agent.NO_RELEASE_EXIT, "no_previous")
    _push(capsys, root, "r2", FILES)
    assert _run(capsys, "rollback", root) == (0, {"current": "r1", "previous": "r2"})
    assert _run(capsys, "rollback", root, "--to=r2") == (0, {"current": "r2", "previous": "r1"})
    status, answer = _run(capsys, "rollback", root, "--to=gone")
    assert (status, answer) == (agent.NO_RELEASE_EXIT, {
        "error": "no_release", "message": f"release releases/gone does not exist under {root}"})
    assert _links(root) == {"current": "releases/r2", "previous": "releases/r1"}


def test_discard_undoes_the_failed_push_only_while_it_is_current(tmp_path, capsys):
    root = tmp_path / "device"
    for rid in ("r1", "r2", "r3"):
        _push(capsys, root, rid, FILES)
    status, answer = _run(capsys, "discard", root, "r2", "--back-to=releases/r1")
    assert (status, answer["error"]) == (agent.NOT_CURRENT_EXIT, "not_current")
    assert answer["message"] == ("current is r3, not the failed release r2: another push "
                                 "switched it meanwhile")
    status, answer = _run(capsys, "discard", root, "r3", "--back-to=releases/gone")
    assert (status, answer["error"]) == (agent.NO_RELEASE_EXIT, "no_release")
    assert _links(root) == {"current": "releases/r3", "previous": "releases/r2"}
    status, answer = _run(capsys, "discard", root, "r3", "--back-to=releases/r2",
                          "--previous=releases/r1")
    assert (status, answer) == (0, {"current": "r2", "previous": "r1"})
    assert not (root / "releases" / "r3").exists()
    assert _run(capsys, "discard", root, "r2") == (0, {"current": None, "previous": None})
    assert _links(root) == {"current": None, "previous": None}
    assert sorted(os.listdir(root / "releases")) == ["r1"]


def test_locked_runs_the_command_and_reports_its_failure(tmp_path, capfd):
    root = tmp_path / "device"
    assert agent.main(["locked", str(root), "--", "echo out; echo fine >&2"]) == 0
    out, err = capfd.readouterr()
    assert (out, err) == ("out\n", "fine\n")
    status = agent.main(["locked", str(root), "--wait", "1", "--",
                         f"echo out; echo pip says no >&2; echo >&2; exit {agent.PIP_EXIT}"])
    out, err = capfd.readouterr()
    assert status == agent.PIP_EXIT == 91
    assert out.splitlines()[0] == "out"
    assert json.loads(out.splitlines()[-1]) == {"error": "pip", "message": "pip says no"}
    assert err == "pip says no\n\n"  # the command's stderr, relayed as it came
    assert agent.main(["locked", str(root), "--", f"exit {agent.VENV_EXIT}"]) == 90
    assert json.loads(capfd.readouterr().out) == {"error": "venv", "message": "exit status 90"}


def test_put_writes_the_files_and_names_a_cut_upload(tmp_path, capsys):
    root = tmp_path / "device"
    files = {"a.whl": os.urandom(3 << 20), "b.whl": b"bb"}
    body = json.dumps([[n, len(d)] for n, d in files.items()]).encode() + b"\n"
    body += b"".join(files.values())
    assert _run(capsys, "put", root, "runner", stdin=io.BytesIO(body)) == \
        (0, {"put": ["a.whl", "b.whl"]})
    for name, data in files.items():
        assert (root / "runner" / name).read_bytes() == data
    status, answer = _run(capsys, "put", root, "wheelhouse", stdin=io.BytesIO(body[:-3]))
    assert (status, answer) == (agent.FAILED_EXIT, {"error": "interrupted",
                                                    "message": "upload interrupted"})
    assert not (root / "wheelhouse" / "b.whl").exists()


def test_bad_arguments_are_one_usage_line(capsys):
    status = agent.main(["receive"])
    out, err = capsys.readouterr()
    assert status == agent.USAGE_EXIT
    assert json.loads(out)["error"] == "usage" and "remote_dir" in json.loads(out)["message"]
    assert len(err.splitlines()) == 1 and "Traceback" not in err


# -- runnable from its source by a bare python3 ---------------------------------------------

def test_the_agent_imports_only_the_standard_library():
    tree = ast.parse(SOURCE, feature_version=(3, 9))  # the oldest device Python: 3.9
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import cannot run under python3 -c"
            names.add(node.module.split(".")[0])
    assert names and not names & {"qdeploy", "qrun"}
    assert names <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)


def test_the_agent_compiles_and_runs_as_python_c_source(tmp_path):
    subprocess.run([sys.executable, "-m", "py_compile", agent.__file__], check=True)
    assert release.agent_source() == SOURCE
    helped = subprocess.run([sys.executable, "-I", "-c", SOURCE, "--help"],
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    for command in ("receive", "rollback", "discard", "locked", "put"):
        assert command in helped.stdout
    missing = tmp_path / "missing"
    done = subprocess.run([sys.executable, "-I", "-c", SOURCE, "rollback", str(missing)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == agent.NO_RELEASE_EXIT
    assert json.loads(done.stdout) == {"error": "no_previous",
                                       "message": f"no previous release under {missing}"}
    assert done.stderr == f"qdeploy-agent: no previous release under {missing}\n"


def test_the_command_fits_one_ssh_packet():
    """RFC 4253: every SSH server takes packets of 32768 bytes; the exec request carries the
    whole command, source included."""
    assert len(release.receive_command("python3", "~/qdeploy").encode()) < 32768


# -- abandoned receivers and kills at any point --------------------------------------------

def _agent(*argv, env=None, **kw):
    """The agent as the device runs it (`python3 -c SOURCE ...`), stdin a pipe."""
    return subprocess.Popen([sys.executable, "-I", "-c", SOURCE, *[str(a) for a in argv]],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, **(env or {})), **kw)


def _head(rid: str, files: dict, sources: dict = None) -> bytes:
    return _stream(rid, files, sources).getvalue().split(b"\n", 1)[0] + b"\n"


def _wait_for(check, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _holds_lock(root: Path, pid: int) -> bool:
    return (root / ".lock").exists() and (root / ".lock").read_text() == str(pid)


def test_a_silent_receiver_is_ended_by_the_next_command_which_takes_the_lock(tmp_path, capsys):
    root = tmp_path / "device"
    _push(capsys, root, "r1", FILES)
    stale = _agent("receive", root, "--idle", 60)
    stale.stdin.write(_head("r2", FILES) + FILES["model.tflite"][:1000])
    stale.stdin.flush()
    _wait_for(lambda: _holds_lock(root, stale.pid) and _staging(root))
    time.sleep(1.2)  # silent for longer than --abandoned 1
    try:
        status, answer = _run(capsys, "receive", root, "--wait", 10, "--abandoned", 1,
                              stdin=_stream("r3", FILES))
        assert stale.wait(timeout=10) != 0  # ended, not finished
    finally:
        stale.kill()
        stale.wait()
    assert status == 0 and answer["release"] == "r3"
    assert answer["note"].startswith(f"ended the receiver of an abandoned push (pid {stale.pid}")
    assert "removed its staging directory" in answer["note"]
    assert _links(root) == {"current": "releases/r3", "previous": "releases/r1"}
    assert _staging(root) == [] and not (root / "releases" / "r2").exists()
    assert not (root / agent.HEARTBEAT).exists()


def test_a_live_receiver_is_never_ended_two_pushes_never_interleave(tmp_path, capsys):
    """A receiver that gets bytes, however slowly, keeps the lock: the other push waits its
    --wait and is refused, the live one completes with exactly its own files."""
    root = tmp_path / "device"
    data = os.urandom(40)
    files = {"slow.bin": data, "manifest.json": b'{"slow": 1}'}
    live = _agent("receive", root, "--idle", 10)
    live.stdin.write(_head("live", files))
    live.stdin.flush()
    _wait_for(lambda: _holds_lock(root, live.pid))
    import threading

    def trickle():  # a byte every 0.1 s: 4 s in all, 4x the other's --abandoned
        for i in range(len(data)):
            live.stdin.write(data[i:i + 1])
            live.stdin.flush()
            time.sleep(0.1)
        live.stdin.write(files["manifest.json"])
        live.stdin.close()

    feeder = threading.Thread(target=trickle)
    feeder.start()
    status, answer = _run(capsys, "receive", root, "--wait", 2, "--abandoned", 1,
                          stdin=_stream("other", FILES))
    feeder.join()
    live.wait(timeout=20)
    out, err = live.stdout.read(), live.stderr.read()
    assert (status, answer["error"], answer["pid"]) == (agent.LOCKED_EXIT, "locked",
                                                        str(live.pid))
    assert live.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["release"] == "live"
    assert sorted(p.name for p in (root / "current").iterdir()) == sorted(files)
    assert (root / "current" / "slow.bin").read_bytes() == data
    assert not (root / "releases" / "other").exists()


def test_a_lock_holder_that_is_not_a_receiver_is_never_ended(tmp_path, capsys):
    """A stale heartbeat naming the holder's pid is not enough: its command line must be
    this agent's `receive` on this remote dir."""
    root = tmp_path / "device"
    root.mkdir()
    holder = _agent("locked", root, "--", "sleep 30", start_new_session=True)
    try:
        _wait_for(lambda: _holds_lock(root, holder.pid))
        beat = root / agent.HEARTBEAT
        beat.write_text(json.dumps({"pid": holder.pid, "staging": ".staging-x"}))
        os.utime(beat, (time.time() - 60, time.time() - 60))
        status, answer = _run(capsys, "rollback", root, "--wait", 0.5, "--abandoned", 1)
        assert holder.poll() is None
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (status, answer["error"]) == (agent.LOCKED_EXIT, "locked")


def _complete(root: Path, link: str):
    """The release id `link` points at when every file of its manifest is there with its
    sha256 (None when the link is absent); fails on a partial release."""
    if not (root / link).is_symlink():
        return None
    rel = root / os.readlink(root / link)
    manifest = json.loads((rel / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((rel / name).read_bytes()).hexdigest() == digest, (link, name)
    return rel.name


def _files(tag: str) -> dict:
    """A release whose manifest lists every file's sha256 (what `_complete` checks)."""
    files = {"model.tflite": os.urandom(2 << 20), "sub/labels.txt": tag.encode()}
    digests = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    files["manifest.json"] = json.dumps({"tag": tag, "files": digests}).encode()
    return files


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.parametrize("point", ["link", "mid-file", "fsynced", "renamed", "switched"])
def test_a_receiver_killed_at_any_point_leaves_a_complete_release(tmp_path, capsys, point):
    """SIGKILL while linking, mid-file, between fsync and rename, after the rename and
    between the `current` and `previous` switches: `current` is a complete release (old or
    new), `previous` a complete one or none, and the next push removes every staging dir."""
    root = tmp_path / "device"
    one, two = _files("one"), _files("two")
    assert _push(capsys, root, "r1", one)[0] == 0
    assert _push(capsys, root, "r2", two)[0] == 0
    three = dict(_files("three"), **{"sub/labels.txt": two["sub/labels.txt"]})
    digests = {n: hashlib.sha256(d).hexdigest() for n, d in three.items()
               if n != "manifest.json"}
    three["manifest.json"] = json.dumps({"tag": "three", "files": digests}).encode()
    sources = {"sub/labels.txt": "releases/r2/sub/labels.txt"}
    env = {} if point == "mid-file" else {"QDEPLOY_AGENT_STOP_AT": point}
    proc = _agent("receive", root, "--idle", 30, env=env)
    body = _stream("r3", three, sources).getvalue()
    try:
        if point == "mid-file":
            proc.stdin.write(body[:len(body) // 2])
            proc.stdin.flush()
            _wait_for(lambda: any((root / "releases").glob(".staging-r3/model.tflite")))
            time.sleep(0.2)
        else:
            import threading

            def feed():  # stopped while linking, the agent reads no more: write on the side
                try:
                    proc.stdin.write(body)
                    proc.stdin.close()
                except OSError:
                    pass

            threading.Thread(target=feed, daemon=True).start()
            _wait_for(lambda: _stopped(proc.pid))
        proc.kill()
    finally:
        proc.kill()
        proc.wait()
    current, previous = _complete(root, "current"), _complete(root, "previous")
    assert current in ("r2", "r3")
    assert previous in ("r1", "r2", None)
    assert current != previous
    status, answer = _push(capsys, root, "r4", _files("four"))
    assert status == 0, answer
    assert _complete(root, "current") == "r4" and _complete(root, "previous") == current
    assert _staging(root) == []
