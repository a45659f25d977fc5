"""Host keys: which known_hosts files a push reads, how it reads them, and what it does with
a key they do not hold.

`known_hosts_files` is the one place that says which files those are (--known-hosts, else the
ssh config's UserKnownHostsFile, else `default_known_hosts()`, $HOME/.ssh/known_hosts): the
native engine resolves every endpoint with it and the ansible engine points OpenSSH at the
same file. `load_known_hosts` reads a file as OpenSSH does (skipping what it cannot parse,
collecting `@revoked` keys). `HostKeyPolicy` refuses an unknown key with its fingerprint
unless `accept_new` (then it is recorded, like OpenSSH's StrictHostKeyChecking=accept-new);
a changed key is refused by the SSH connection itself (qdeploy.remote.ssh).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from qrun.errors import UserError

if TYPE_CHECKING:
    from qdeploy.remote.targets import Endpoint

_known_hosts_lock = threading.Lock()


def default_known_hosts() -> Path:
    """The known_hosts file when neither --known-hosts nor the ssh config names one:
    ~/.ssh/known_hosts, with ~ from $HOME (not the passwd entry, where OpenSSH looks)."""
    return Path.home() / ".ssh" / "known_hosts"


def known_hosts_files(known_hosts: Optional[Union[str, os.PathLike]] = None,
                      configured: str = "") -> tuple:
    """The known_hosts files of an endpoint, the first the one new keys go to: `known_hosts`
    (--known-hosts) if given, else the ssh config's UserKnownHostsFile value (`configured`,
    space-separated, ~ expanded from $HOME), else `default_known_hosts()`."""
    if known_hosts:
        return (str(known_hosts),)
    files = (configured or "").split()
    return tuple(os.path.expanduser(f) for f in files) or (str(default_known_hosts()),)


def fingerprint(key) -> str:
    """OpenSSH's `SHA256:...` fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class HostKeyPolicy:
    """Unknown host keys: refuse with the fingerprint, or record them with --accept-new.

    A paramiko missing-host-key policy; new keys go to the endpoint's first known_hosts file.
    """

    def __init__(self, endpoint: "Endpoint", accept_new: bool,
                 revoked: frozenset = frozenset()):
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


def load_known_hosts(host_keys, path: str) -> set:
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


def fleet_known_hosts(known_hosts: Optional[Union[str, os.PathLike]], config) -> Optional[str]:
    """The known_hosts file of every endpoint under ssh config `config` (paramiko SSHConfig or
    None), when it is one for all hosts: `known_hosts` (--known-hosts) if given, else
    `default_known_hosts()`. None when the ssh config names UserKnownHostsFile in some block:
    then each host's file is the config's, looked up per host."""
    if not known_hosts and any(block.get("config", {}).get("userknownhostsfile")
                               for block in getattr(config, "_config", ())):
        return None
    return known_hosts_files(known_hosts)[0]
