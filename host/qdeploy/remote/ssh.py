"""`Connection`: a `Link` (qdeploy.remote.connection) over one paramiko SSH session.

Host keys are checked against known_hosts (qdeploy.remote.hostkeys): an unknown key is refused
with its fingerprint unless `accept_new`; a changed key is always refused. Authentication uses
ssh-agent, the default keys and the identity files of the endpoint; never a password. Every
failure a user can meet (unreachable, refused, timed out, auth refused, dropped) becomes one
`UserError` line.

Every wait has a deadline, kept by the connection's watch thread (qdeploy.remote.deadline):
the handshake and each command's channel open and exec request get the connect timeout, each
command's reads and writes the command timeout; a stall is named in one line.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Optional

from qrun.errors import UserError
from qdeploy.remote.connection import (COMMAND_TIMEOUT_S, CommandResult, ConnectionLost,
                                       LineCallback, LineSplitter, Stdin, chunks)
from qdeploy.remote.deadline import BANNER_STEP, KEEPALIVE_COUNT, KEEPALIVE_S, Watch
from qdeploy.remote.hostkeys import HostKeyPolicy, fingerprint, load_known_hosts
from qdeploy.remote.targets import Endpoint

CONNECT_TIMEOUT_S = 10.0
# paramiko's own handshake timeouts, behind the watch's (so the watch names the step).
PARAMIKO_BACKSTOP_S = 5.0
# Our receive window; bench reports and progress are small, but a large window costs nothing.
WINDOW_SIZE = 16 << 20
# Prefer AES-GCM (one pass with AES-NI, no separate MAC); fall back to paramiko's order.
CIPHER_PREFERENCE = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
                     "aes256-ctr")

# paramiko logs its transport thread's failures with tracebacks; our errors say it in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


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
        self.watch: Optional[Watch] = None

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
                revoked |= load_known_hosts(client.get_host_keys(), path)
        client.set_missing_host_key_policy(HostKeyPolicy(e, self.accept_new, revoked))
        keys = [p for p in e.identity_files if os.path.isfile(p)]
        agent = not e.identities_only

        def watched_transport(sock, **kwargs):
            transport = _transport_factory(sock, **kwargs)
            self.watch = Watch(transport, self.keepalive, self.keepalive_count)
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
        out, err = LineSplitter(None), LineSplitter(on_stderr)
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
    def _send(chan, stdin: Stdin, watch: Watch) -> None:
        """Feed `stdin` to the command, then EOF; a command that stopped reading ends it."""
        try:
            piece = max(1024, chan.out_max_packet_size - 64)
            for chunk in chunks(stdin):
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
