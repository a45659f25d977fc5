"""Connections to a target: run a shell command there, feeding stdin and streaming stderr.

`Connection` is a thin layer over one paramiko SSH session; `LocalConnection` does the same on
this machine with `/bin/sh`, so every later step (transfer, release switch, runner install,
bench) is the same code for a Pi and for the `local` target.

Host keys are checked against known_hosts: an unknown key is refused with its fingerprint
unless `accept_new` (then it is recorded, like OpenSSH's StrictHostKeyChecking=accept-new);
a changed key is always refused. Authentication uses ssh-agent, the default keys and the
identity files of the endpoint; never a password. Every failure a user can meet (unreachable,
refused, timed out, auth refused, dropped) becomes one `UserError` line.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from qrun.errors import UserError
from qdeploy.remote.targets import Endpoint

CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 600.0
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
    """The connection dropped or a command timed out while running."""


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
            timeout: Optional[float] = None) -> CommandResult:
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


class Connection:
    """One SSH session to an endpoint (paramiko), opened by `open()` or `with`."""

    is_local = False

    def __init__(self, endpoint: Endpoint, accept_new: bool = False,
                 connect_timeout: Optional[float] = None,
                 command_timeout: float = COMMAND_TIMEOUT_S):
        self.endpoint = endpoint
        self.name = endpoint.name
        self.accept_new = accept_new
        self.connect_timeout = connect_timeout or endpoint.connect_timeout or CONNECT_TIMEOUT_S
        self.command_timeout = command_timeout
        self.client = None

    @property
    def where(self) -> str:
        e = self.endpoint
        return f"{e.user}@{e.hostname}:{e.port}"

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
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
        try:
            client.connect(
                e.hostname, port=e.port, username=e.user, key_filename=keys or None,
                allow_agent=agent, look_for_keys=not e.identities_only,
                timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout, channel_timeout=self.connect_timeout,
                transport_factory=_transport_factory)
        except UserError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise UserError(
                f"{self.name}: host key of {e.known_hosts_name} has CHANGED (now "
                f"{exc.key.get_name()} {fingerprint(exc.key)}, known_hosts has "
                f"{fingerprint(exc.expected_key)}); refusing to connect. If the device was "
                f"reinstalled, remove the old key with `ssh-keygen -R '{e.known_hosts_name}'` "
                "and push again with --accept-new") from None
        except paramiko.PasswordRequiredException:
            client.close()
            raise UserError(f"{self.name}: the key is protected by a passphrase; load it into "
                            "ssh-agent (`ssh-add KEY`) and push again") from None
        except paramiko.AuthenticationException:
            client.close()
            tried = ", ".join(keys) or "none given"
            raise UserError(
                f"{self.name}: {self.where} refused authentication with every key tried "
                f"(ssh-agent, ~/.ssh/id_*, identity files: {tried}); install your public key on "
                "the device (ssh-copy-id) or pass --identity FILE") from None
        except socket.gaierror as exc:
            client.close()
            raise UserError(f"{self.name}: cannot resolve host name {e.hostname!r} "
                            f"({exc.strerror}); check the target or ~/.ssh/config") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise UserError(f"{self.name}: no answer from {e.hostname}:{e.port} within "
                            f"{self.connect_timeout:g} s; check that the device is on and the "
                            "address is right (--connect-timeout to wait longer)") from None
        except paramiko.ssh_exception.NoValidConnectionsError as exc:
            client.close()
            reason = "; ".join(sorted({err.strerror or str(err) for err in exc.errors.values()}))
            raise UserError(f"{self.name}: cannot connect to {e.hostname}:{e.port} ({reason}); "
                            "check the address and port and that sshd runs on the "
                            "device") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            transport = client.get_transport()
            client.close()
            if transport is None or not transport.remote_version:
                raise UserError(f"{self.name}: {e.hostname}:{e.port} accepted the connection but "
                                f"sent no SSH banner within {self.connect_timeout:g} s; check "
                                "that sshd (not another service) listens on that port "
                                "(--connect-timeout to wait longer)") from None
            if "private key" in str(exc):  # paramiko could not load a key file we gave it
                raise UserError(f"{self.name}: cannot use the key file(s) {', '.join(keys)} "
                                f"({exc}); pass --identity with an OpenSSH private key (`ssh-"
                                "keygen -y -f FILE` checks one) or load it into ssh-agent"
                                ) from None
            raise UserError(f"{self.name}: SSH to {e.hostname}:{e.port} failed "
                            f"({exc or type(exc).__name__}); check that an SSH server listens "
                            "there") from None
        server_key = client.get_transport().get_remote_server_key()
        if server_key.get_base64() in revoked:
            client.close()
            raise UserError(f"{self.name}: host key of {e.known_hosts_name} "
                            f"({fingerprint(server_key)}) is marked @revoked in known_hosts; "
                            "refusing to connect")
        self.client = client
        return self

    def run(self, command: str, stdin: Stdin = None, on_stderr: LineCallback = None,
            timeout: Optional[float] = None) -> CommandResult:
        """Run `command` on the device, feed it `stdin`, return its status and output.

        A dropped connection or `timeout` seconds without any output raise ConnectionLost.
        """
        import paramiko

        if self.client is None:
            raise RuntimeError("Connection.run before open()")
        timeout = timeout or self.command_timeout
        out, err = _LineSplitter(None), _LineSplitter(on_stderr)
        try:
            chan = self.client.get_transport().open_session(window_size=WINDOW_SIZE,
                                                            timeout=self.connect_timeout)
            chan.settimeout(timeout)
            chan.exec_command(command)
            errors: list[BaseException] = []

            def pump_stderr():
                try:
                    for block in iter(lambda: chan.recv_stderr(1 << 16), b""):
                        err.feed(block)
                except BaseException as exc:  # reported by the main thread
                    errors.append(exc)

            reader = threading.Thread(target=pump_stderr, daemon=True)
            reader.start()
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
                chan.shutdown_write()
            except OSError:
                if not chan.exit_status_ready():
                    raise
            for block in iter(lambda: chan.recv(1 << 16), b""):
                out.feed(block)
            reader.join(timeout)
            if errors:
                raise errors[0]
            if not chan.status_event.wait(timeout):
                raise socket.timeout()
            status = chan.recv_exit_status()
            chan.close()
        except (socket.timeout, TimeoutError):
            self.close()
            raise ConnectionLost(f"{self.name}: no answer from {self.where} for {timeout:g} s "
                                 "(command timeout); check the device") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise ConnectionLost(f"{self.name}: connection to {self.where} dropped "
                                 f"({exc or type(exc).__name__})") from None
        err.close()
        if status == -1:
            self.close()
            raise ConnectionLost(f"{self.name}: connection to {self.where} dropped before the "
                                 "command finished")
        return CommandResult(status, bytes(out.data), bytes(err.data))
