"""What a push talks to a target through: the `Link` protocol, its result and its errors.

A `Link` runs a shell command on its target, feeding it stdin and streaming its stderr, and
returns a `CommandResult`. Two classes satisfy it: `qdeploy.remote.ssh.Connection` (one SSH
session) and `qdeploy.remote.local.LocalConnection` (`/bin/sh` on this machine), so every
later step (transfer, release switch, runner install, bench) is the same code for a Pi and
for the `local` target, as Fabric's Connection and invoke's Context are one type.

Also here: what both implementations share to read a command's output (`LineSplitter`) and
to feed its stdin (`chunks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Protocol, Union, runtime_checkable

from qrun.errors import UserError

COMMAND_TIMEOUT_S = 600.0

Stdin = Union[bytes, Iterable[bytes], None]
LineCallback = Optional[Callable[[str], None]]


class ConnectionLost(UserError):
    """The connection dropped or a command timed out while running; `phase` is how far the
    command got: "starting", "sending" (its stdin) or "waiting" (for its answer)."""

    phase = "waiting"


class Stalled(ConnectionLost):
    """The device gave no sign of life for a step's whole deadline."""


@dataclass
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def last_error_line(self) -> str:
        lines = [ln.strip() for ln in self.stderr.decode("utf-8", "replace").splitlines()
                 if ln.strip()]
        return lines[-1] if lines else f"exit status {self.exit_status}"


@runtime_checkable
class Link(Protocol):
    """A target a push runs shell commands on, opened by `open()` or `with`.

    `name` is what errors and tables call the target; `is_local` says whether it is this
    machine (paths there need no upload). `run` raises ConnectionLost (with its `phase`) when
    the link drops or the command stays silent past `timeout` (default `command_timeout`);
    `what` names the command in that error ("the receiver", "qrun bench").
    """

    name: str
    is_local: bool
    command_timeout: float

    def open(self) -> "Link": ...

    def close(self) -> None: ...

    def __enter__(self) -> "Link": ...

    def __exit__(self, *exc) -> None: ...

    def run(self, command: str, stdin: Stdin = None, on_stderr: LineCallback = None,
            timeout: Optional[float] = None, what: str = "the command") -> CommandResult: ...


def chunks(stdin: Stdin) -> Iterable[bytes]:
    """A command's stdin as blocks of bytes (none, one, or the caller's iterable)."""
    if stdin is None:
        return ()
    if isinstance(stdin, (bytes, bytearray)):
        return (bytes(stdin),)
    return stdin


class LineSplitter:
    """Collects a byte stream and feeds its complete text lines to a callback."""

    def __init__(self, callback: LineCallback):
        self.callback = callback
        self.pending = b""
        self.data = bytearray()

    def feed(self, data: bytes) -> None:
        self.data += data
        if not self.callback:
            return
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self.callback(line.decode("utf-8", "replace").rstrip("\r"))

    def close(self) -> None:
        if self.callback and self.pending:
            self.callback(self.pending.decode("utf-8", "replace"))
        self.pending = b""
