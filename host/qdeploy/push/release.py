"""The release layout on a device, and the commands that read and change it.

Under the remote dir R (default ``~/qdeploy``)::

    R/releases/<release-id>/   one directory per push: the artifacts and manifest.json
    R/current  -> releases/<id>   what qrun runs (QDEPLOY_HOME=R)
    R/previous -> releases/<id>   what `qdeploy rollback` switches back to
    R/venv/                    the runner (see qdeploy.push.wheel)

`probe` reads the state in one round trip (a shell command: no interpreter start). Everything
that changes R is a command of the device agent, qdeploy.push.agent, whose source is sent to
the device's python3 (`agent_command`): `receive` takes one push's stream on stdin: it writes
every file into ``releases/.staging-<id>``, hashes it as it arrives, checks every sha256
against the manifest, renames the staging directory into place and only then swaps the
`current` link (a new symlink renamed over the old one). Any failure, including a connection
cut or a full disk, removes the staging directory and leaves `current` as it was. The agent
answers in one JSON line on stdout (`agent_answer`), its failures too.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources
from typing import Optional

from qrun.model.deployment import DEFAULT_HOME
from qrun.errors import UserError
from qdeploy.push import agent
from qdeploy.remote.connection import Link

DEFAULT_REMOTE_DIR = DEFAULT_HOME
PROBE_MARK = b"--qdeploy-manifest--\n"
KEEP_RELEASES = agent.KEEP_RELEASES
LOCK_WAIT_S = agent.LOCK_WAIT_S  # how long a device command waits for the remote dir's lock
LOCKED_EXIT = agent.LOCKED_EXIT  # EX_TEMPFAIL: the lock stayed taken
RECEIVE_IDLE_S = agent.RECEIVE_IDLE_S  # a receiver without a byte from the host this long quits


def check_remote_dir(path) -> str:
    """The remote dir, refused when empty or blank (it would mean the login directory) or
    when no file system takes it (a NUL byte)."""
    if path is None or not str(path).strip():
        raise UserError(f"--remote-dir {str(path or '')!r} is empty; pass the release directory "
                        f"on the device, e.g. {DEFAULT_REMOTE_DIR}")
    if "\0" in str(path):
        raise UserError(f"--remote-dir {str(path)!r} holds a NUL byte, which no path on the "
                        "device can; pass another directory")
    return str(path)


def shell_path(path: str) -> str:
    """Quote a remote path for /bin/sh as one word that no command takes for an option:
    a leading `~/` stays $HOME, a relative path starting with `-` becomes `./-...`.

    Every remote command names a path only through this (or shlex.quote), so spaces,
    quotes, `$`, backticks and `;` in it reach the device's file system as they are.
    """
    path = str(path)
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    if path.startswith("-"):
        path = "./" + path
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
        'for l in current previous; do '
        '[ -L "$R/$l" ] && printf "%s %s\\n" "$l" "$(readlink "$R/$l")"; done; '
        'for d in "$R"/venv/lib/python*/site-packages/qrun-*.dist-info; do '
        '[ -d "$d" ] && printf "runner %s\\n" "${d##*/}"; done; '
        'for d in "$R"/releases/*/; do '
        '[ -d "$d" ] && printf "release %s\\n" "$(basename "$d")"; done; '
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


def probe(conn: Link, remote_dir: str) -> RemoteState:
    """The device's release state, in one command."""
    result = conn.run(probe_command(remote_dir), what="the probe of the release state")
    if not result.ok:
        raise UserError(f"{conn.name}: cannot read {remote_dir} on the device "
                        f"({result.last_error_line()})")
    return parse_probe(result.stdout)


@functools.lru_cache(maxsize=None)
def agent_source() -> str:
    """The source of qdeploy.push.agent, as it is sent to the device."""
    return resources.files("qdeploy.push").joinpath("agent.py").read_text(encoding="utf-8")


def agent_command(python: str, *args: str) -> str:
    """A shell command running the agent with the device's interpreter (`python -c SOURCE`);
    `args` are shell words, already quoted."""
    return " ".join([shlex.quote(python), "-c", shlex.quote(agent_source()), *args])


def agent_answer(result) -> dict:
    """The agent's JSON line: the last line on stdout, its answer or, when it failed,
    ``{"error": KIND, "message": TEXT}``; {} when there is none (the agent did not run)."""
    lines = result.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {}
    return answer if isinstance(answer, dict) else {}


def failure_text(result) -> str:
    """What went wrong on the device, in one line: the agent's message, or (when the agent
    did not get to answer, e.g. no interpreter) the command's last stderr line."""
    message = agent_answer(result).get("message")
    return message if isinstance(message, str) and message else result.last_error_line()


def locked_command(python: str, remote_dir: str, command: str) -> str:
    """`command` (shell) run on the device while it holds the remote dir's lock, so it never
    overlaps a release switch or another push's runner install."""
    return agent_command(python, "locked", shell_path(remote_dir), "--wait", str(LOCK_WAIT_S),
                         "--", shlex.quote(command))


def receive_command(python: str, remote_dir: str, keep: int = KEEP_RELEASES) -> str:
    return agent_command(python, "receive", shell_path(remote_dir), "--keep", str(keep),
                         "--wait", str(LOCK_WAIT_S), "--idle", str(RECEIVE_IDLE_S))


def locked_error(conn: Link, remote_dir: str, result) -> UserError:
    pid = agent_answer(result).get("pid", "unknown")
    return UserError(f"{conn.name}: another push to {remote_dir} is running or a stale one "
                     f"holds its lock (pid {pid}); wait for it or kill it, then try again")


def _agent_run(conn: Link, remote_dir: str, python: str, command: str, *args: str):
    """Run agent `command` on the remote dir (`args`: plain words, quoted here); a held lock
    is the locked error."""
    result = conn.run(agent_command(python, command, shell_path(remote_dir), "--wait",
                                    str(LOCK_WAIT_S), *(shlex.quote(a) for a in args)),
                      what=f"the device's {command}")
    if agent_answer(result).get("error") == "locked":
        raise locked_error(conn, remote_dir, result)
    return result


def rollback(conn: Link, remote_dir: str, python: str = "python3",
             to: Optional[str] = None) -> dict:
    """Switch `current` back to `previous` (or to release `to`); returns the new links."""
    if to is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", to):
        raise UserError(f"--to {to!r} is not a release id (see {remote_dir}/releases)")
    result = _agent_run(conn, remote_dir, python, "rollback", *([f"--to={to}"] if to else []))
    if agent_answer(result).get("error") in ("no_previous", "no_release"):
        raise UserError(f"{conn.name}: {failure_text(result)}; nothing to roll back to")
    links = agent_answer(result)
    if not result.ok or "current" not in links:
        raise UserError(f"{conn.name}: rollback failed ({failure_text(result)})")
    return links


def discard(conn: Link, remote_dir: str, python: str, failed: str, back_to: Optional[str],
            previous: Optional[str]) -> str:
    """Undo the push of release `failed`: if it is still `current`, point `current` back at
    `back_to` (or remove it when None) and `previous` at `previous`, and delete the failed
    release so no later rollback can make it current. Says what it did (for the error line);
    a release another push made current meanwhile is left alone."""
    options = [f"--back-to={back_to}"] if back_to else []
    options += [f"--previous={previous}"] if previous else []
    result = _agent_run(conn, remote_dir, python, "discard", *options, failed)
    if agent_answer(result).get("error") == "not_current":
        return (failure_text(result) + "; left it as it is (the failed "
                f"release stays under {remote_dir}/releases)")
    if not result.ok:
        raise UserError(f"{conn.name}: could not switch `current` back from the failed "
                        f"release {failed} ({failure_text(result)}); run qdeploy rollback")
    if back_to is None:
        return "current removed (there is no previous release to go back to)"
    return f"current rolled back to release {agent_answer(result).get('current')}"


def put_files(conn: Link, python: str, remote_dir: str, sub: str, paths: list, what: str) -> None:
    """Write `paths` into `<remote_dir>/<sub>/` on the device (the agent's `put`: each file
    through a .part name); `what` names the step in errors and stalls."""
    def stream():
        yield (json.dumps([[p.name, p.stat().st_size] for p in paths]) + "\n").encode()
        for p in paths:
            with open(p, "rb") as f:
                yield from iter(lambda: f.read(1 << 20), b"")

    cmd = agent_command(python, "put", shell_path(remote_dir), shlex.quote(sub))
    result = conn.run(cmd, stdin=stream(), what=what)
    if not result.ok:
        raise UserError(f"{conn.name}: {what} failed ({failure_text(result)})")


def qrun_json(conn: Link, cmd: str, what: str, timeout: float, on_stderr=None) -> dict:
    """Run `cmd` (a qrun command printing one JSON object) on the device; the object, or a
    UserError naming `what` ("qrun bench", "qrun evaluate") and what went wrong."""
    result = conn.run(cmd, on_stderr=on_stderr, timeout=timeout, what=what)
    if not result.ok:
        raise UserError(f"{conn.name}: {what} failed on the device "
                        f"({result.last_error_line()})")
    try:
        document = json.loads(result.stdout)
    except ValueError:
        raise UserError(f"{conn.name}: {what} printed no JSON ({result.stdout[:120]!r}); "
                        f"check `{what}` on the device") from None
    if not isinstance(document, dict):
        raise UserError(f"{conn.name}: {what} printed JSON that is not its report")
    return document
