"""The release layout on a device, and the commands that read and change it.

Under the remote dir R (default ``~/qdeploy``)::

    R/releases/<release-id>/   one directory per push: the artifacts and manifest.json
    R/current  -> releases/<id>   what qrun runs (QDEPLOY_HOME=R)
    R/previous -> releases/<id>   what `qdeploy rollback` switches back to
    R/venv/                    the runner (see qdeploy.wheel)

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


# Runs on the device under its python3: argv = remote dir; stdin = JSON header line, then the
# bytes of every file whose "source" is null, in header order. Prints one JSON line.
RECEIVER = r'''
import errno, fcntl, hashlib, json, os, queue, shutil, sys, threading
R = os.path.expanduser(sys.argv[1]); REL = os.path.join(R, "releases"); KEEP = int(sys.argv[2])
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
def main():
    os.makedirs(REL, exist_ok=True)
    lock = open(os.path.join(R, ".lock"), "w"); fcntl.flock(lock, fcntl.LOCK_EX)
    for n in os.listdir(REL):
        if n.startswith(".staging-"): shutil.rmtree(os.path.join(REL, n), ignore_errors=True)
    try: fcntl.fcntl(0, 1031, 1 << 20)  # F_SETPIPE_SZ: fewer wake-ups between sshd and us
    except OSError: pass
    inp = sys.stdin.buffer
    head = json.loads(inp.readline())
    rid = head["release"]; stage = os.path.join(REL, ".staging-" + rid)
    os.mkdir(stage)
    try:
        for f in head["files"]:
            dst = os.path.join(stage, f["name"]); os.makedirs(os.path.dirname(dst), exist_ok=True)
            h = hashlib.sha256()
            if f.get("source"):
                src = os.path.join(R, f["source"])
                try: os.link(src, dst)
                except OSError: shutil.copyfile(src, dst)
                with open(dst, "rb") as g:
                    for b in iter(lambda: g.read(1 << 20), b""): h.update(b)
            else:
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
    cur = os.path.join(R, "current")
    old = os.readlink(cur) if os.path.islink(cur) else None
    switch("current", "releases/" + rid)
    if old and old.rstrip("/") != "releases/" + rid: switch("previous", old)
    fsync_dir(R)
    keep = {os.path.basename(os.readlink(os.path.join(R, l)).rstrip("/"))
            for l in ("current", "previous") if os.path.islink(os.path.join(R, l))}
    old_ones = sorted(n for n in os.listdir(REL) if not n.startswith(".") and n not in keep)
    for n in old_ones[:max(0, len(old_ones) - KEEP)]: shutil.rmtree(os.path.join(REL, n), ignore_errors=True)
    print(json.dumps({"release": rid, "previous": old}))
try:
    main()
except OSError as e:
    print("qdeploy-receive: %s" % e, file=sys.stderr)
    sys.exit(28 if e.errno == errno.ENOSPC else 1)
except Exception as e:
    print("qdeploy-receive: %s" % e, file=sys.stderr); sys.exit(1)
'''

ROLLBACK = r'''
import json, os, shutil, sys
R = os.path.expanduser(sys.argv[1]); to = sys.argv[2] if len(sys.argv) > 2 else ""
discard = len(sys.argv) > 3 and sys.argv[3] == "discard"
cur = os.path.join(R, "current"); prev = os.path.join(R, "previous")
def switch(link, dest):
    tmp = link + ".tmp"
    if os.path.lexists(tmp): os.unlink(tmp)
    os.symlink(dest, tmp); os.replace(tmp, link)
old = os.readlink(cur) if os.path.islink(cur) else None
if to:
    dest = "releases/" + to
elif os.path.islink(prev):
    dest = os.readlink(prev)
else:
    print("qdeploy-rollback: no previous release under %s" % R, file=sys.stderr); sys.exit(3)
if not os.path.isfile(os.path.join(R, dest, "manifest.json")):
    print("qdeploy-rollback: release %s does not exist under %s" % (dest, R), file=sys.stderr); sys.exit(3)
switch(cur, dest)
if discard:  # the release being left failed its checks: it must never become current again
    if os.path.islink(prev) and os.readlink(prev) == dest: os.unlink(prev)
    if old and old != dest: shutil.rmtree(os.path.join(R, old), ignore_errors=True)
    old = None
elif old and old != dest: switch(prev, old)
print(json.dumps({"current": dest.rsplit("/", 1)[-1], "previous": old and old.rstrip("/").rsplit("/", 1)[-1]}))
'''


def python_command(python: str, script: str, *args: str) -> str:
    """A shell command running `script` with the device's interpreter."""
    return " ".join([shlex.quote(python), "-c", shlex.quote(script), *args])


def receive_command(python: str, remote_dir: str, keep: int = KEEP_RELEASES) -> str:
    return python_command(python, RECEIVER, shell_path(remote_dir), str(keep))


def rollback(conn, remote_dir: str, python: str = "python3", to: Optional[str] = None,
             discard: bool = False) -> dict:
    """Switch `current` back to `previous` (or to release `to`); returns the new links.

    With `discard`, the release left behind is deleted and not kept as `previous`: that is
    how a push undoes a release that failed its checks on the device.
    """
    if to is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", to):
        raise UserError(f"--to {to!r} is not a release id (see {remote_dir}/releases)")
    extra = [shlex.quote(to or ""), "discard"] if discard else ([shlex.quote(to)] if to else [])
    cmd = python_command(python, ROLLBACK, shell_path(remote_dir), *extra)
    result = conn.run(cmd)
    if result.exit_status == 3:
        raise UserError(f"{conn.name}: {result.last_error_line().split(': ', 1)[-1]}; "
                        "nothing to roll back to")
    if not result.ok:
        raise UserError(f"{conn.name}: rollback failed ({result.last_error_line()})")
    return json.loads(result.stdout.decode().strip().splitlines()[-1])
