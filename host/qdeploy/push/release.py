"""The release layout on a device, and the commands that read and change it.

Under the remote dir R (default ``~/qdeploy``)::

    R/releases/<release-id>/   one directory per push: the artifacts and manifest.json
    R/current  -> releases/<id>   what qrun runs (QDEPLOY_HOME=R)
    R/previous -> releases/<id>   what `qdeploy rollback` switches back to
    R/venv/                    the runner (see qdeploy.push.wheel)

`probe` reads the state in one round trip (a shell command: no interpreter start). `RECEIVER`
is the Python program that takes one push's stream on stdin: it writes every file into
``releases/.staging-<id>``, hashes it as it arrives, checks every sha256 against the manifest,
renames the staging directory into place and only then swaps the `current` link (a new
symlink renamed over the old one). Any failure, including a connection cut or a full disk,
removes the staging directory and leaves `current` as it was.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Optional

from qrun.errors import UserError

DEFAULT_REMOTE_DIR = "~/qdeploy"
DISK_FULL_EXIT = 28  # ENOSPC
PROBE_MARK = b"--qdeploy-manifest--\n"
KEEP_RELEASES = 5
LOCK_WAIT_S = 30.0  # how long a device command waits for the remote dir's lock
LOCKED_EXIT = 75  # EX_TEMPFAIL: the lock stayed taken
RECEIVE_IDLE_S = 120.0  # a receiver without a byte from the host for this long cleans up, exits
SWITCHED_EXIT = 76  # the receiver switched `current`, then failed (the RECEIVER's own constant)
DAMAGED_EXIT = 77  # a file to link from an older release is damaged or gone (names on stdout)


def check_remote_dir(path) -> str:
    """The remote dir, refused when empty or blank (it would mean the login directory)."""
    if path is None or not str(path).strip():
        raise UserError(f"--remote-dir {str(path or '')!r} is empty; pass the release directory "
                        f"on the device, e.g. {DEFAULT_REMOTE_DIR}")
    return str(path)


def shell_path(path: str) -> str:
    """Quote a remote path for /bin/sh, keeping a leading `~/` as $HOME."""
    path = str(path)
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


@dataclass
class RemoteState:
    """What a device has under R: current/previous releases, their manifests, the runner."""

    current: Optional[str] = None  # release id
    previous: Optional[str] = None
    current_manifest: Optional[bytes] = None
    previous_manifest: Optional[bytes] = None
    runner_version: Optional[str] = None
    releases: list = field(default_factory=list)

    def manifest_dict(self, which: str) -> dict:
        raw = self.current_manifest if which == "current" else self.previous_manifest
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}  # unreadable: treat as absent, everything is uploaded
        return data if isinstance(data, dict) else {}


def probe_command(remote_dir: str) -> str:
    r = shell_path(remote_dir)
    return (
        f"R={r}; "
        'for l in current previous; do [ -L "$R/$l" ] && printf "%s %s\\n" "$l" "$(readlink "$R/$l")"; done; '
        'for d in "$R"/venv/lib/python*/site-packages/qrun-*.dist-info; do '
        '[ -d "$d" ] && printf "runner %s\\n" "${d##*/}"; done; '
        'for d in "$R"/releases/*/; do [ -d "$d" ] && printf "release %s\\n" "$(basename "$d")"; done; '
        f"printf '%s' {shlex.quote(PROBE_MARK.decode())}; "
        'cat "$R/current/manifest.json" 2>/dev/null; '
        f"printf '%s' {shlex.quote(PROBE_MARK.decode())}; "
        'cat "$R/previous/manifest.json" 2>/dev/null; true'
    )


_RUNNER_RE = re.compile(r"^qrun-(.+)\.dist-info$")


def parse_probe(output: bytes) -> RemoteState:
    head, _, rest = output.partition(PROBE_MARK)
    current_manifest, _, previous_manifest = rest.partition(PROBE_MARK)
    state = RemoteState(current_manifest=current_manifest or None,
                        previous_manifest=previous_manifest or None)
    for line in head.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(" ")
        if key in ("current", "previous"):
            setattr(state, key, value.rstrip("/").rsplit("/", 1)[-1])
        elif key == "runner":
            m = _RUNNER_RE.match(value)
            if m:
                state.runner_version = m.group(1)
        elif key == "release":
            state.releases.append(value)
    return state


def probe(conn, remote_dir: str) -> RemoteState:
    """The device's release state, in one command."""
    result = conn.run(probe_command(remote_dir))
    if not result.ok:
        raise UserError(f"{conn.name}: cannot read {remote_dir} on the device "
                        f"({result.last_error_line()})")
    return parse_probe(result.stdout)


# Shared by the device-side programs: the remote dir's `.lock`, taken without blocking and
# retried until a deadline, so a stale holder (a cut push) is named instead of waited on.
LOCK = r'''
import fcntl, os, sys, time
def take_lock(R, wait):
    f = open(os.path.join(R, ".lock"), "a+"); end = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); break
        except BlockingIOError:
            if time.monotonic() >= end:
                f.seek(0); pid = f.read().strip() or "unknown"
                print("qdeploy-lock: pid %s" % pid, file=sys.stderr); sys.exit(75)
            time.sleep(0.1)
    f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush()
    return f
'''

# Runs on the device under its python3: argv = remote dir; stdin = JSON header line, then the
# bytes of every file whose "source" is null, in header order. Prints one JSON line.
RECEIVER = LOCK + r'''
import errno, hashlib, json, queue, select, shutil, threading
R = os.path.expanduser(sys.argv[1]); REL = os.path.join(R, "releases"); KEEP = int(sys.argv[2])
WAIT, IDLE = float(sys.argv[3]), float(sys.argv[4])
SWITCHED_EXIT = 76; DAMAGED_EXIT = 77
def fsync_dir(p):
    fd = os.open(p, os.O_RDONLY)
    try: os.fsync(fd)
    finally: os.close(fd)
def hasher(h, q):
    for b in iter(q.get, None): h.update(b)
def switch(name, dest):
    link = os.path.join(R, name); tmp = os.path.join(R, "." + name + ".tmp")
    if os.path.lexists(tmp): os.unlink(tmp)
    os.symlink(dest, tmp); os.replace(tmp, link)
class Input:
    """stdin, giving up after IDLE seconds without a byte (a host gone without closing)."""
    def __init__(self): self.buf = b""
    def wait(self):
        if not select.select([0], [], [], IDLE)[0]:
            raise TimeoutError("no data from the host for %g s; the push was abandoned" % IDLE)
    def read(self, n):
        if self.buf:
            b, self.buf = self.buf[:n], self.buf[n:]; return b
        self.wait(); return os.read(0, n)
    def readline(self):
        while b"\n" not in self.buf:
            self.wait(); b = os.read(0, 1 << 16)
            if not b: raise EOFError("upload interrupted: the stream ended early")
            self.buf += b
        line, _, self.buf = self.buf.partition(b"\n"); return line
def main():
    os.makedirs(REL, exist_ok=True)
    lock = take_lock(R, WAIT)
    for n in os.listdir(REL):
        if n.startswith(".staging-"): shutil.rmtree(os.path.join(REL, n), ignore_errors=True)
    try: fcntl.fcntl(0, 1031, 1 << 20)  # F_SETPIPE_SZ: fewer wake-ups between sshd and us
    except OSError: pass
    inp = Input()
    head = json.loads(inp.readline())
    rid = head["release"]; stage = os.path.join(REL, ".staging-" + rid)
    os.mkdir(stage)
    try:
        # Files the device has already: linked first, each checked, so a damaged or missing
        # copy is named (the host sends those bytes instead) before any upload is read.
        damaged = []
        for f in head["files"]:
            if not f.get("source"): continue
            dst = os.path.join(stage, f["name"]); os.makedirs(os.path.dirname(dst), exist_ok=True)
            src = os.path.join(R, f["source"]); h = hashlib.sha256()
            try:
                try: os.link(src, dst)
                except OSError: shutil.copyfile(src, dst)
                with open(dst, "rb") as g:
                    for b in iter(lambda: g.read(1 << 20), b""): h.update(b)
            except FileNotFoundError: damaged.append(f["name"]); continue
            if h.hexdigest() != f["sha256"]: damaged.append(f["name"])
        if damaged:
            print(json.dumps({"damaged": damaged}))
            print("qdeploy-receive: the device's copies of %s are damaged or missing"
                  % ", ".join(damaged), file=sys.stderr)
            shutil.rmtree(stage, ignore_errors=True); sys.exit(DAMAGED_EXIT)
        for f in head["files"]:
            if f.get("source"): continue
            dst = os.path.join(stage, f["name"]); os.makedirs(os.path.dirname(dst), exist_ok=True)
            h = hashlib.sha256()
            # Hash on a second thread (hashlib drops the GIL) while this one reads and writes.
            q = queue.Queue(8); t = threading.Thread(target=hasher, args=(h, q)); t.start()
            left = f["size"]
            try:
                with open(dst, "wb") as g:
                    while left:
                        b = inp.read(min(left, 1 << 20))
                        if not b: raise EOFError("upload interrupted: the stream ended early")
                        g.write(b); q.put(b); left -= len(b)
                    g.flush(); os.fsync(g.fileno())
            finally:
                q.put(None); t.join()
            if h.hexdigest() != f["sha256"]:
                raise ValueError("sha256 of %s on the device differs from the manifest" % f["name"])
        fsync_dir(stage)
        final = os.path.join(REL, rid)
        if os.path.exists(final): shutil.rmtree(final)
        os.rename(stage, final); fsync_dir(REL)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True); raise
    cur = os.path.join(R, "current"); prev = os.path.join(R, "previous")
    old = os.readlink(cur) if os.path.islink(cur) else None
    old_prev = os.readlink(prev) if os.path.islink(prev) else None
    switch("current", "releases/" + rid)
    try:  # `current` is switched: a failure from here on must say so
        if old and old.rstrip("/") != "releases/" + rid: switch("previous", old)
        fsync_dir(R)
        # the old `previous` is kept too: undoing this push (a failed verify) points back at it
        keep = {os.path.basename(l.rstrip("/")) for l in ("releases/" + rid, old, old_prev) if l}
        old_ones = sorted(n for n in os.listdir(REL) if not n.startswith(".") and n not in keep)
        for n in old_ones[:max(0, len(old_ones) - KEEP)]:
            shutil.rmtree(os.path.join(REL, n), ignore_errors=True)
    except Exception as e:
        print("qdeploy-receive: %s" % e, file=sys.stderr); sys.exit(SWITCHED_EXIT)
    print(json.dumps({"release": rid, "previous": old, "old_previous": old_prev}))
try:
    main()
except OSError as e:
    print("qdeploy-receive: %s" % e, file=sys.stderr)
    sys.exit(28 if e.errno == errno.ENOSPC else 1)
except Exception as e:
    print("qdeploy-receive: %s" % e, file=sys.stderr); sys.exit(1)
'''

# argv = remote dir, JSON options: {"to": release id or null, "wait": lock seconds} switches
# `current` (to `previous` without "to"); {"discard": id, "back_to": "releases/..." or null,
# "previous": "releases/..." or null} undoes the push of release `id` if it is still current.
ROLLBACK = LOCK + r'''
import json, shutil
R = os.path.expanduser(sys.argv[1]); opt = json.loads(sys.argv[2])
cur = os.path.join(R, "current"); prev = os.path.join(R, "previous")
def link(p): return os.readlink(p).rstrip("/") if os.path.islink(p) else None
def rid(dest): return dest and dest.rsplit("/", 1)[-1]
def exists(dest): return os.path.isfile(os.path.join(R, dest, "manifest.json"))
def fail(msg, status=3): print("qdeploy-rollback: " + msg, file=sys.stderr); sys.exit(status)
def switch(l, dest):
    tmp = l + ".tmp"
    if os.path.lexists(tmp): os.unlink(tmp)
    os.symlink(dest, tmp); os.replace(tmp, l)
if not os.path.isdir(R): fail("no previous release under %s" % R)
lock = take_lock(R, opt["wait"])
old = link(cur)
if opt.get("discard"):  # the release failed its checks: it must never become current again
    failed = "releases/" + opt["discard"]
    if old != failed:
        fail("current is %s, not the failed release %s: another push switched it meanwhile"
             % (rid(old) or "unset", opt["discard"]), 4)
    back, before = opt.get("back_to"), opt.get("previous")
    if back and not exists(back): fail("release %s to go back to is gone under %s" % (back, R))
    if back: switch(cur, back)
    else: os.unlink(cur)
    if before and exists(before): switch(prev, before)
    elif os.path.lexists(prev): os.unlink(prev)
    shutil.rmtree(os.path.join(R, failed), ignore_errors=True)
else:
    if opt.get("to"): dest = "releases/" + opt["to"]
    elif link(prev): dest = link(prev)
    else: fail("no previous release under %s" % R)
    if not exists(dest): fail("release %s does not exist under %s" % (dest, R))
    switch(cur, dest)
    if old and old != dest: switch(prev, old)
print(json.dumps({"current": rid(link(cur)), "previous": rid(link(prev))}))
'''


# argv = remote dir, lock seconds, shell command: runs the command holding the remote dir's lock.
LOCKED_SHELL = LOCK + r'''
import subprocess
R = os.path.expanduser(sys.argv[1]); os.makedirs(R, exist_ok=True)
lock = take_lock(R, float(sys.argv[2]))
sys.exit(subprocess.call(["/bin/sh", "-c", sys.argv[3]]))
'''


def locked_command(python: str, remote_dir: str, command: str) -> str:
    """`command` (shell) run on the device while it holds the remote dir's lock, so it never
    overlaps a release switch or another push's runner install."""
    return python_command(python, LOCKED_SHELL, shell_path(remote_dir), str(LOCK_WAIT_S),
                          shlex.quote(command))


def python_command(python: str, script: str, *args: str) -> str:
    """A shell command running `script` with the device's interpreter."""
    return " ".join([shlex.quote(python), "-c", shlex.quote(script), *args])


def receive_command(python: str, remote_dir: str, keep: int = KEEP_RELEASES) -> str:
    return python_command(python, RECEIVER, shell_path(remote_dir), str(keep), str(LOCK_WAIT_S),
                          str(RECEIVE_IDLE_S))


def locked_error(conn, remote_dir: str, result) -> UserError:
    pid = result.last_error_line().rsplit(" ", 1)[-1]
    return UserError(f"{conn.name}: another push to {remote_dir} is running or a stale one "
                     f"holds its lock (pid {pid}); wait for it or kill it, then try again")


def _rollback_run(conn, remote_dir: str, python: str, opt: dict):
    opt = dict(opt, wait=LOCK_WAIT_S)
    cmd = python_command(python, ROLLBACK, shell_path(remote_dir), shlex.quote(json.dumps(opt)))
    result = conn.run(cmd)
    if result.exit_status == LOCKED_EXIT:
        raise locked_error(conn, remote_dir, result)
    return result


def _links(result) -> dict:
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def rollback(conn, remote_dir: str, python: str = "python3", to: Optional[str] = None) -> dict:
    """Switch `current` back to `previous` (or to release `to`); returns the new links."""
    if to is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", to):
        raise UserError(f"--to {to!r} is not a release id (see {remote_dir}/releases)")
    result = _rollback_run(conn, remote_dir, python, {"to": to})
    if result.exit_status == 3:
        raise UserError(f"{conn.name}: {result.last_error_line().split(': ', 1)[-1]}; "
                        "nothing to roll back to")
    if not result.ok:
        raise UserError(f"{conn.name}: rollback failed ({result.last_error_line()})")
    return _links(result)


def discard(conn, remote_dir: str, python: str, failed: str, back_to: Optional[str],
            previous: Optional[str]) -> str:
    """Undo the push of release `failed`: if it is still `current`, point `current` back at
    `back_to` (or remove it when None) and `previous` at `previous`, and delete the failed
    release so no later rollback can make it current. Says what it did (for the error line);
    a release another push made current meanwhile is left alone."""
    result = _rollback_run(conn, remote_dir, python,
                           {"discard": failed, "back_to": back_to, "previous": previous})
    if result.exit_status == 4:
        return (result.last_error_line().split(": ", 1)[-1] + "; left it as it is (the failed "
                f"release stays under {remote_dir}/releases)")
    if not result.ok:
        raise UserError(f"{conn.name}: could not switch `current` back from the failed "
                        f"release {failed} ({result.last_error_line()}); run qdeploy rollback")
    if back_to is None:
        return "current removed (there is no previous release to go back to)"
    return f"current rolled back to release {_links(result)['current']}"
