"""Connections to a target: run a shell command there, feeding stdin and streaming stderr.

`Connection` is a thin layer over one paramiko SSH session; `LocalConnection` does the same on
this machine with `/bin/sh`, so every later step (transfer, release switch, runner install,
bench) is the same code for a Pi and for the `local` target.

Host keys are checked against known_hosts: an unknown key is refused with its fingerprint
unless `accept_new` (then it is recorded, like OpenSSH's StrictHostKeyChecking=accept-new);
a changed key is always refused. Authentication uses ssh-agent, the default keys and the
identity files of the endpoint; never a password. Every failure a user can meet (unreachable,
refused, timed out, auth refused, dropped) becomes one `UserError` line.

Every wait has a deadline, kept by one watch thread per connection (`_Watch`): the handshake
(banner, key exchange, authentication) and each command's channel open and exec request get
the connect timeout, each command's reads and writes the command timeout, counted from the
device's last sign of life (a byte of output, an opened send window, a finished handshake
step). When a step's deadline passes, the watch closes the transport, which wakes every
paramiko wait, and the step is named in one line (`no answer for 4 s while starting the
receiver`). Keepalives (ServerAliveInterval / ServerAliveCountMax, answered global requests
like OpenSSH's) notice a dead peer during long silent phases such as a long bench.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from qrun.errors import UserError
from qdeploy.remote.targets import Endpoint

CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 600.0
# OpenSSH's ServerAliveInterval / ServerAliveCountMax when the ssh config gives none: a device
# that answers no keepalive for 5 s x 3 is gone, even while its command is silent.
KEEPALIVE_S = 5.0
KEEPALIVE_COUNT = 3
WATCH_TICK_S = 0.05
# paramiko's own handshake timeouts, behind the watch's (so the watch names the step).
PARAMIKO_BACKSTOP_S = 5.0
BANNER_STEP = "waiting for the SSH banner"
# Our receive window; bench reports and progress are small, but a large window costs nothing.
WINDOW_SIZE = 16 << 20
# Prefer AES-GCM (one pass with AES-NI, no separate MAC); fall back to paramiko's order.
CIPHER_PREFERENCE = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
                     "aes256-ctr")

Stdin = Union[bytes, Iterable[bytes], None]
LineCallback = Optional[Callable[[str], None]]

_known_hosts_lock = threading.Lock()
# paramiko logs its transport thread's failures with tracebacks; our errors say it in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class ConnectionLost(UserError):
    """The connection dropped or a command timed out while running; `phase` is how far the
    command got: "starting", "sending" (its stdin) or "waiting" (for its answer)."""

    phase = "waiting"


class Stalled(ConnectionLost):
    """The device gave no sign of life for a step's whole deadline."""


class _Watch:
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

    def stalled(self, target: str, where: str) -> Optional["Stalled"]:
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


def fingerprint(key) -> str:
    """OpenSSH's `SHA256:...` fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _chunks(stdin: Stdin) -> Iterable[bytes]:
    if stdin is None:
        return ()
    if isinstance(stdin, (bytes, bytearray)):
        return (bytes(stdin),)
    return stdin


class _LineSplitter:
    """Feeds complete text lines from a byte stream to a callback."""

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


class LocalConnection:
    """The `local` target: commands run under /bin/sh on this machine."""

    name = "local"
    is_local = True

    def __init__(self, command_timeout: float = COMMAND_TIMEOUT_S):
        self.command_timeout = command_timeout

    def open(self) -> "LocalConnection":
        return self

    def close(self) -> None:
        pass

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def run(self, command: str, stdin: Stdin = None, on_stderr: LineCallback = None,
            timeout: Optional[float] = None, what: str = "the command") -> CommandResult:
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = _LineSplitter(None), _LineSplitter(on_stderr)

        def pump(stream, sink):
            for block in iter(lambda: stream.read1(1 << 16), b""):
                sink.feed(block)

        readers = [threading.Thread(target=pump, args=(proc.stdout, out), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, err), daemon=True)]
        for t in readers:
            t.start()
        try:
            for chunk in _chunks(stdin):
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the command stopped reading; its exit status and stderr say why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        try:
            status = proc.wait(timeout=timeout or self.command_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ConnectionLost(f"local: command timed out after "
                                 f"{timeout or self.command_timeout:.0f} s") from None
        for t in readers:
            t.join()
        err.close()
        return CommandResult(status, bytes(out.data), bytes(err.data))


class _HostKeyPolicy:
    """Unknown host keys: refuse with the fingerprint, or record them with --accept-new."""

    def __init__(self, endpoint: Endpoint, accept_new: bool, revoked: frozenset = frozenset()):
        self.endpoint = endpoint
        self.accept_new = accept_new
        self.revoked = revoked

    def missing_host_key(self, client, hostname, key):
        known_hosts = Path(self.endpoint.known_hosts_files[0])
        fp = fingerprint(key)
        if key.get_base64() in self.revoked:
            raise UserError(f"{self.endpoint.name}: host key of {hostname} ({key.get_name()} "
                            f"{fp}) is marked @revoked in {known_hosts}; refusing to connect")
        if not self.accept_new:
            raise UserError(
                f"{self.endpoint.name}: host key of {hostname} is not known "
                f"({key.get_name()} {fp}); compare it with `ssh-keygen -lf "
                f"/etc/ssh/ssh_host_ed25519_key.pub` on the device, then push again with "
                f"--accept-new to record it in {known_hosts}")
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with _known_hosts_lock:
            try:
                known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with open(known_hosts, "ab+") as f:
                    f.seek(0, os.SEEK_END)
                    if f.tell():  # a last line without its newline would swallow ours
                        f.seek(-1, os.SEEK_END)
                        if f.read(1) != b"\n":
                            line = "\n" + line
                    f.write(line.encode("ascii"))
            except OSError as exc:
                raise UserError(f"{self.endpoint.name}: cannot record the host key of "
                                f"{hostname} in {known_hosts} ({exc.strerror}); fix its "
                                "permissions or pass --known-hosts FILE") from None
        client.get_host_keys().add(hostname, key.get_name(), key)


def _load_known_hosts(host_keys, path: str) -> set:
    """Add a known_hosts file's entries to paramiko `host_keys`, skipping what it cannot parse
    (as OpenSSH does: `@cert-authority` lines, unknown key types, bad lines); returns the
    base64 of `@revoked` keys."""
    from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

    revoked = set()
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read known_hosts {path} ({exc.strerror}); fix its permissions "
                        "or pass --known-hosts FILE") from None
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            fields = line.split()
            if fields[0] == "@revoked" and len(fields) >= 4:
                revoked.add(fields[3])
            continue
        try:
            entry = HostKeyEntry.from_line(line, number)
        except (InvalidHostKey, ValueError, TypeError, IndexError):
            continue
        if entry is None or entry.key is None:
            continue
        for name in entry.hostnames:
            host_keys.add(name, entry.key.get_name(), entry.key)
    return revoked


def _transport_factory(sock, **kwargs):
    import paramiko

    transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, **kwargs)
    opts = transport.get_security_options()
    available = list(opts.ciphers)
    opts.ciphers = tuple([c for c in CIPHER_PREFERENCE if c in available]
                         + [c for c in available if c not in CIPHER_PREFERENCE])
    return transport


def handshake_step(transport) -> str:
    """What an SSH handshake on `transport` waits for now, as the error line names it."""
    if not transport.remote_version:
        return BANNER_STEP
    if not transport.initial_kex_done:
        return "exchanging keys"
    if not transport.is_authenticated():
        return "authenticating"
    return "opening the session"


class Connection:
    """One SSH session to an endpoint (paramiko), opened by `open()` or `with`."""

    is_local = False

    def __init__(self, endpoint: Endpoint, accept_new: bool = False,
                 connect_timeout: Optional[float] = None,
                 command_timeout: float = COMMAND_TIMEOUT_S,
                 keepalive: Optional[float] = None, keepalive_count: Optional[int] = None):
        self.endpoint = endpoint
        self.name = endpoint.name
        self.accept_new = accept_new
        self.connect_timeout = connect_timeout or endpoint.connect_timeout or CONNECT_TIMEOUT_S
        self.command_timeout = command_timeout
        self.keepalive = KEEPALIVE_S if keepalive is None else keepalive
        self.keepalive_count = keepalive_count or KEEPALIVE_COUNT
        self.client = None
        self.watch: Optional[_Watch] = None

    @property
    def where(self) -> str:
        e = self.endpoint
        return f"{e.user}@{e.hostname}:{e.port}"

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        if self.client is not None:
            self.client.close()
            self.client = None

    def open(self) -> "Connection":
        import paramiko

        e = self.endpoint
        client = paramiko.SSHClient()
        revoked: set = set()
        for path in e.known_hosts_files:
            if os.path.isfile(path):
                revoked |= _load_known_hosts(client.get_host_keys(), path)
        client.set_missing_host_key_policy(_HostKeyPolicy(e, self.accept_new, revoked))
        keys = [p for p in e.identity_files if os.path.isfile(p)]
        agent = not e.identities_only

        def watched_transport(sock, **kwargs):
            transport = _transport_factory(sock, **kwargs)
            self.watch = _Watch(transport, self.keepalive, self.keepalive_count)
            self.watch.phase = lambda: handshake_step(transport)
            self.watch.limit, self.watch.kind = self.connect_timeout, "connect"
            return transport

        backstop = self.connect_timeout + PARAMIKO_BACKSTOP_S
        try:
            # The TCP connect here, so paramiko's own handshake timeout can be a backstop.
            sock = socket.create_connection((e.hostname, e.port), timeout=self.connect_timeout)
            client.connect(
                e.hostname, port=e.port, username=e.user, key_filename=keys or None,
                allow_agent=agent, look_for_keys=not e.identities_only, sock=sock,
                timeout=backstop, banner_timeout=backstop,
                auth_timeout=backstop, channel_timeout=backstop,
                transport_factory=watched_transport)
            self.watch.phase, self.watch.limit = None, None
        except Exception as exc:
            transport = client.get_transport()
            client.close()
            stalled = self.watch.stalled(self.name, f"{e.hostname}:{e.port}") \
                if self.watch is not None else None
            if stalled is not None:
                raise stalled from None
            if isinstance(exc, UserError):
                raise
            raise self._connect_error(exc, transport, keys) from None
        self.watch.start_keepalives()
        server_key = client.get_transport().get_remote_server_key()
        if server_key.get_base64() in revoked:
            client.close()
            raise UserError(f"{self.name}: host key of {e.known_hosts_name} "
                            f"({fingerprint(server_key)}) is marked @revoked in known_hosts; "
                            "refusing to connect")
        self.client = client
        return self

    def _connect_error(self, exc: Exception, transport, keys: list) -> UserError:
        """The one-line error for a failed `client.connect`."""
        import paramiko

        e = self.endpoint
        if isinstance(exc, paramiko.BadHostKeyException):
            return UserError(
                f"{self.name}: host key of {e.known_hosts_name} has CHANGED (now "
                f"{exc.key.get_name()} {fingerprint(exc.key)}, known_hosts has "
                f"{fingerprint(exc.expected_key)}); refusing to connect. If the device was "
                f"reinstalled, remove the old key with `ssh-keygen -R '{e.known_hosts_name}'` "
                "and push again with --accept-new")
        if isinstance(exc, paramiko.PasswordRequiredException):
            return UserError(f"{self.name}: the key is protected by a passphrase; load it into "
                             "ssh-agent (`ssh-add KEY`) and push again")
        if isinstance(exc, paramiko.AuthenticationException):
            tried = ", ".join(keys) or "none given"
            return UserError(
                f"{self.name}: {self.where} refused authentication with every key tried "
                f"(ssh-agent, ~/.ssh/id_*, identity files: {tried}); install your public key on "
                "the device (ssh-copy-id) or pass --identity FILE")
        if isinstance(exc, socket.gaierror):
            return UserError(f"{self.name}: cannot resolve host name {e.hostname!r} "
                             f"({exc.strerror}); check the target or ~/.ssh/config")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return UserError(f"{self.name}: no answer from {e.hostname}:{e.port} within "
                             f"{self.connect_timeout:g} s; check that the device is on and the "
                             "address is right (--connect-timeout to wait longer)")
        if isinstance(exc, OSError) and transport is None:
            return UserError(f"{self.name}: cannot connect to {e.hostname}:{e.port} "
                             f"({exc.strerror or exc}); check the address and port and that "
                             "sshd runs on the device")
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            reason = "; ".join(sorted({err.strerror or str(err) for err in exc.errors.values()}))
            return UserError(f"{self.name}: cannot connect to {e.hostname}:{e.port} ({reason}); "
                             "check the address and port and that sshd runs on the device")
        if transport is None or not transport.remote_version:
            return UserError(f"{self.name}: {e.hostname}:{e.port} accepted the connection but "
                             f"sent no SSH banner within {self.connect_timeout:g} s; check "
                             "that sshd (not another service) listens on that port "
                             "(--connect-timeout to wait longer)")
        if "private key" in str(exc):  # paramiko could not load a key file we gave it
            return UserError(f"{self.name}: cannot use the key file(s) {', '.join(keys)} "
                             f"({exc}); pass --identity with an OpenSSH private key (`ssh-"
                             "keygen -y -f FILE` checks one) or load it into ssh-agent")
        return UserError(f"{self.name}: SSH to {e.hostname}:{e.port} failed "
                         f"({exc or type(exc).__name__}); check that an SSH server listens "
                         "there")

    def run(self, command: str, stdin: Stdin = None, on_stderr: LineCallback = None,
            timeout: Optional[float] = None, what: str = "the command") -> CommandResult:
        """Run `command` on the device, feed it `stdin`, return its status and output.

        Opening the channel and the exec request may take the connect timeout; each read and
        write `timeout` seconds (the command timeout) since the device's last sign of life.
        A stall or a drop raises ConnectionLost naming the step, `what` the command is
        called there ("starting the receiver", "waiting for qrun bench").
        """
        import paramiko

        if self.client is None:
            raise RuntimeError("Connection.run before open()")
        timeout = timeout or self.command_timeout
        watch = self.watch
        out, err = _LineSplitter(None), _LineSplitter(on_stderr)
        phase = "starting"
        try:
            with watch.step(f"starting {what}", self.connect_timeout, "connect"):
                chan = self.client.get_transport().open_session(
                    window_size=WINDOW_SIZE, timeout=self.connect_timeout + PARAMIKO_BACKSTOP_S)
                chan.settimeout(timeout + PARAMIKO_BACKSTOP_S)
                chan.exec_command(command)
            errors: list[BaseException] = []

            def pump_stderr():
                try:
                    for block in iter(lambda: chan.recv_stderr(1 << 16), b""):
                        watch.touch()
                        err.feed(block)
                except BaseException as exc:  # reported by the main thread
                    errors.append(exc)

            reader = threading.Thread(target=pump_stderr, daemon=True)
            reader.start()
            phase = "sending"
            with watch.step(f"sending to {what}", timeout, "command"):
                self._send(chan, stdin, watch)
            phase = "waiting"
            with watch.step(f"waiting for {what}", timeout, "command"):
                for block in iter(lambda: chan.recv(1 << 16), b""):
                    watch.touch()
                    out.feed(block)
                reader.join(timeout)
                if errors:
                    raise errors[0]
                if not chan.status_event.wait(timeout):
                    raise socket.timeout()
            status = chan.recv_exit_status()
            chan.close()
        except (socket.timeout, TimeoutError, paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(exc, timeout, phase) from None
        err.close()
        if status == -1:
            raise self._lost(None, timeout, phase)
        return CommandResult(status, bytes(out.data), bytes(err.data))

    def _lost(self, exc: Optional[BaseException], timeout: float, phase: str) -> ConnectionLost:
        """Close this connection; the error for a command that did not finish because of
        `exc` (None: the channel closed without an exit status)."""
        self.close()
        lost = self.watch.stalled(self.name, self.where) if self.watch else None
        if lost is None and isinstance(exc, (socket.timeout, TimeoutError)):
            lost = ConnectionLost(f"{self.name}: no answer from {self.where} for {timeout:g} s "
                                  "(command timeout)")
        elif lost is None and exc is not None:
            lost = ConnectionLost(f"{self.name}: connection to {self.where} dropped "
                                  f"({exc or type(exc).__name__})")
        elif lost is None:
            lost = ConnectionLost(f"{self.name}: connection to {self.where} dropped before the "
                                  "command finished")
        if self.watch is not None and self.watch.expired:  # where the deadline passed
            word = self.watch.expired[0].split()[0]
            phase = word if word in ("starting", "sending", "waiting") else phase
        lost.phase = phase
        return lost

    @staticmethod
    def _send(chan, stdin: Stdin, watch: _Watch) -> None:
        """Feed `stdin` to the command, then EOF; a command that stopped reading ends it."""
        try:
            piece = max(1024, chan.out_max_packet_size - 64)
            for chunk in _chunks(stdin):
                if chan.exit_status_ready() or chan.closed:
                    break  # the command stopped reading; its status says why
                # One packet's worth at a time: paramiko's sendall re-slices (copies) the
                # rest of its argument after every packet, quadratic on large blocks.
                view = memoryview(chunk)
                for start in range(0, len(view), piece):
                    chan.sendall(view[start:start + piece].tobytes())
                    watch.touch()  # the device opened its window: it is there
            chan.shutdown_write()
        except OSError:
            if not chan.exit_status_ready():
                raise
