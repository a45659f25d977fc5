"""Push targets: parse `[user@]host[:port]` and resolve it the way OpenSSH would.

`parse_target` turns a command-line string into a `Target`; `resolve` applies the user's
`~/.ssh/config` (Host aliases with HostName, User, Port, IdentityFile, ...) to it. paramiko's
`SSHConfig` parses the file but ignores `Include`, so `load_ssh_config` inlines included files
first. The name `local` means this machine, without SSH.
"""

from __future__ import annotations

import getpass
import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from qrun.errors import UserError
from qdeploy.remote import hostkeys

LOCAL = "local"
DEFAULT_PORT = 22
MAX_INCLUDE_DEPTH = 16

# A host name, an IPv4 address or a bracketed IPv6 address; user names as OpenSSH accepts them.
_TARGET_RE = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?))"
    r"(?::(?P<port>[0-9]{1,5}))?$")


@dataclass(frozen=True)
class Target:
    """A target as the user wrote it: `name` is what tables and reports call it.

    An inventory may set, per host, the release directory (`qdeploy_remote_dir`), the
    device's interpreter (`qdeploy_python`) and a key file (`ansible_ssh_private_key_file`);
    None means the push's own option applies.
    """

    name: str
    host: str
    user: Optional[str] = None
    port: Optional[int] = None
    remote_dir: Optional[str] = None
    python: Optional[str] = None
    identity: Optional[str] = None

    @property
    def is_local(self) -> bool:
        return self.host == LOCAL and self.user is None and self.port is None


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect, after `~/.ssh/config` was applied."""

    name: str
    hostname: str
    port: int
    user: str
    identity_files: tuple = ()
    identities_only: bool = False
    connect_timeout: Optional[float] = None
    known_hosts_files: tuple = field(default=())

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this host: plain on port 22, `[host]:port` otherwise."""
        return self.hostname if self.port == DEFAULT_PORT else f"[{self.hostname}]:{self.port}"


def parse_target(text: str, origin: str = "--target") -> Target:
    """Parse `[user@]host[:port]` (or `local`); a bad string is a UserError naming `origin`."""
    text = text.strip()
    m = _TARGET_RE.match(text)
    if not m:
        raise UserError(f"{origin} {text!r} is not a target: write [user@]host[:port], "
                        "e.g. pi@raspberrypi.local or pi@192.168.1.20:2222, or 'local'")
    port = m.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise UserError(f"{origin} {text!r}: port {port} is out of range (1-65535)")
    return Target(name=text, host=m.group("ipv6") or m.group("host"), user=m.group("user"),
                  port=int(port) if port else None)


def default_config_path() -> Path:
    return Path.home() / ".ssh" / "config"


def _expand_includes(path: Path, depth: int = 0) -> list[str]:
    """The lines of an ssh config file with every `Include` replaced by the files it names.

    Relative Include paths are taken from ~/.ssh, as OpenSSH does for user configs.
    """
    if depth > MAX_INCLUDE_DEPTH:
        raise UserError(f"{path}: Include nested more than {MAX_INCLUDE_DEPTH} deep (a loop?)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read ssh config {path} ({exc.strerror})") from None
    out = []
    context = "Host *"  # top level: what paramiko (and OpenSSH) apply to every host
    for line in lines:
        words = line.strip().split(None, 1)
        key = words[0].lower().rstrip("=") if words else ""
        if key in ("host", "match"):
            context = line.strip()
        if key != "include" or len(words) < 2:
            out.append(line)
            continue
        included = False
        for pattern in words[1].replace("=", " ", 1).split():
            pattern = os.path.expanduser(pattern.strip('"'))
            if not os.path.isabs(pattern):
                pattern = str(Path.home() / ".ssh" / pattern)
            for inc in sorted(glob.glob(pattern)):
                if Path(inc).is_file():
                    out.extend(_expand_includes(Path(inc), depth + 1))
                    included = True
        if included:
            # OpenSSH returns to the including context after the file; inlined, the included
            # file's last Host block would swallow the lines that follow.
            out.append(context)
    return out


_TIME_RE = re.compile(r"([0-9]+)([smhdw]?)", re.IGNORECASE)
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str) -> Optional[float]:
    """Seconds in OpenSSH's time format (`30`, `30s`, `1m`, `1m30s`, `2h`); None if not one."""
    text = str(text).strip()
    if not text or _TIME_RE.sub("", text):
        return None
    return float(sum(int(n) * _TIME_UNITS[u.lower()] for n, u in _TIME_RE.findall(text)))


def load_ssh_config(path: Optional[Path] = None):
    """paramiko `SSHConfig` for `path` (default ~/.ssh/config) with Includes inlined."""
    import paramiko

    path = Path(path) if path else default_config_path()
    if not path.is_file():
        return paramiko.SSHConfig()
    try:
        config = paramiko.SSHConfig.from_text("\n".join(_expand_includes(path)) + "\n")
    except Exception as exc:  # paramiko's ConfigParseError and friends
        raise UserError(f"cannot parse ssh config {path} ({exc}); fix it or pass "
                        "--ssh-config FILE") from None
    config.qdeploy_path = path  # named in errors about its values
    return config


def resolve(target: Target, config=None, identity: Optional[Path] = None,
            known_hosts: Optional[Path] = None) -> Endpoint:
    """Apply ssh config to `target`; the target string's user and port win over the config's."""
    options = config.lookup(target.host) if config is not None else {}
    where = getattr(config, "qdeploy_path", None) or "~/.ssh/config"
    for key in ("proxyjump", "proxycommand"):
        if options.get(key) and str(options[key]).lower() != "none":
            raise UserError(f"~/.ssh/config sets {'ProxyJump' if key == 'proxyjump' else 'ProxyCommand'} "
                            f"for {target.host}, which qdeploy push does not support; push "
                            "from a machine that reaches the device directly")
    hostname = options.get("hostname", target.host)
    try:
        port = target.port or int(options.get("port", DEFAULT_PORT))
    except ValueError:
        raise UserError(f"ssh config: Port {options.get('port')!r} for {target.host} is not a "
                        "number; fix ~/.ssh/config") from None
    user = target.user or options.get("user") or getpass.getuser()
    identities = [str(identity)] if identity else []
    identities += [os.path.expanduser(p) for p in options.get("identityfile", [])]
    timeout = options.get("connecttimeout")
    if timeout is not None and str(timeout).lower() != "none":
        seconds = parse_time(timeout)
        if seconds is None:
            raise UserError(f"ssh config {where}: ConnectTimeout {timeout!r} for {target.host} "
                            "is not a time; write seconds or e.g. 30s, 1m, 1m30s")
        timeout = seconds or None  # 0: no limit of its own, the default applies
    else:
        timeout = None
    known = hostkeys.known_hosts_files(known_hosts, options.get("userknownhostsfile", ""))
    return Endpoint(
        name=target.name, hostname=hostname, port=port, user=user,
        identity_files=tuple(identities),
        identities_only=options.get("identitiesonly", "no").lower() == "yes",
        connect_timeout=timeout,
        known_hosts_files=known,
    )
