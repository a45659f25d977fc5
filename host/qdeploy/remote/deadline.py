"""Deadlines and keepalives for one SSH connection, kept by a watch thread (`Watch`).

The handshake (banner, key exchange, authentication) and each command's channel open and
exec request get the connect timeout, each command's reads and writes the command timeout,
counted from the device's last sign of life (a byte of output, an opened send window, a
finished handshake step). When a step's deadline passes, the watch closes the transport,
which wakes every paramiko wait, and the step is named in one line (`no answer for 4 s while
starting the receiver`). Keepalives (ServerAliveInterval / ServerAliveCountMax, answered
global requests like OpenSSH's) notice a dead peer during long silent phases such as a long
bench.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Optional

from qdeploy.remote.connection import Stalled

# OpenSSH's ServerAliveInterval / ServerAliveCountMax when the ssh config gives none: a device
# that answers no keepalive for 5 s x 3 is gone, even while its command is silent.
KEEPALIVE_S = 5.0
KEEPALIVE_COUNT = 3
WATCH_TICK_S = 0.05
BANNER_STEP = "waiting for the SSH banner"


class Watch:
    """The deadline of the step under way on one connection, and its keepalives.

    A thread looks every WATCH_TICK_S: when the step has had no sign of life (`touch`) for
    its limit, or a keepalive stayed unanswered for interval x count seconds, it records why
    (`expired`) and closes the transport, which ends every wait on it.
    """

    def __init__(self, transport, keepalive: float = KEEPALIVE_S,
                 keepalive_count: int = KEEPALIVE_COUNT):
        self.transport = transport
        self.keepalive, self.keepalive_count = keepalive, max(1, keepalive_count)
        self.name: Optional[str] = None
        self.limit: Optional[float] = None
        self.kind = ""  # "connect" or "command": which timeout the limit is
        self.phase = None  # a callable naming the handshake step, while connecting
        self.last = self.alive = time.monotonic()
        self.asked: Optional[float] = None  # when the unanswered keepalive was sent
        self.expired: Optional[tuple] = None  # (step, seconds, why)
        self.stopped = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="qdeploy-ssh-watch").start()

    def start_keepalives(self) -> None:
        if self.keepalive and self.keepalive > 0:
            threading.Thread(target=self._keepalives, daemon=True,
                             name="qdeploy-ssh-keepalive").start()

    def touch(self) -> None:
        self.last = self.alive = time.monotonic()

    @contextmanager
    def step(self, name: str, limit: float, kind: str):
        """Run the body under `limit` seconds without a sign of life, called `name`."""
        saved = self.name, self.limit, self.kind
        self.name, self.limit, self.kind = name, limit, kind
        self.touch()
        try:
            yield self
        finally:
            self.name, self.limit, self.kind = saved
            self.touch()

    def stop(self) -> None:
        self.stopped.set()

    def _fire(self, name: str, seconds: float, why: str) -> None:
        self.expired = (name, seconds, why)
        self.stopped.set()
        try:
            self.transport.close()
        except Exception:  # closing a broken transport: nothing more to do
            pass

    def _watch(self) -> None:
        phase = None
        while not self.stopped.wait(WATCH_TICK_S):
            now = time.monotonic()
            if self.phase is not None:
                current = self.phase()
                if current != phase:
                    phase = current
                    self.touch()
                self.name = current
            if self.limit is not None and now - self.last > self.limit:
                self._fire(self.name or "waiting", self.limit, self.kind)
            elif self.asked is not None and \
                    now - self.asked > self.keepalive * self.keepalive_count:
                self._fire(self.name or "idle", self.keepalive * self.keepalive_count,
                           "keepalive")

    def _keepalives(self) -> None:
        while not self.stopped.wait(self.keepalive):
            if time.monotonic() - self.alive < self.keepalive:
                continue  # the device spoke recently
            self.asked = time.monotonic()
            try:  # OpenSSH answers any global request with want-reply, if only "failure"
                self.transport.global_request("keepalive@openssh.com", wait=True)
            except Exception:
                return
            if not self.transport.is_active():
                return
            self.asked, self.alive = None, time.monotonic()

    def stalled(self, target: str, where: str) -> Optional[Stalled]:
        """The error for an expired deadline, or None."""
        if self.expired is None:
            return None
        name, seconds, why = self.expired
        if why == "keepalive":
            return Stalled(f"{target}: no answer from {where} to keepalives for {seconds:g} s "
                           f"while {name} (ServerAliveInterval x ServerAliveCountMax)")
        if name == BANNER_STEP:
            return Stalled(f"{target}: {where} accepted the connection but sent no SSH banner "
                           f"within {seconds:g} s; check that sshd (not another service) "
                           "listens on that port (--connect-timeout to wait longer)")
        return Stalled(f"{target}: no answer from {where} for {seconds:g} s ({why} timeout) "
                       f"while {name}")
