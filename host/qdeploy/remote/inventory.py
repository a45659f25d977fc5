"""Inventory files: the targets of a fleet, one host per line.

Two forms are read, line by line: a plain list of `[user@]host[:port]` (or `local`), and the
host lines of an Ansible INI inventory (`name ansible_host=... ansible_user=... ansible_port=...`
under `[group]` headers; `[group:vars]` and `[group:children]` sections are skipped). Besides
Ansible's own variables, a host line may set `qdeploy_remote_dir` (default ~/qdeploy),
`qdeploy_python` (default python3) and `ansible_ssh_private_key_file`. Blank lines
and `#`/`;` comments are ignored. A line that is neither is an error naming its file and number.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from qrun.errors import UserError
from qdeploy.remote.targets import Target, parse_target

_SECTION_RE = re.compile(r"^\[([^\]]+)\]$")
_ANSIBLE_KEYS = {"ansible_host": "host", "ansible_ssh_host": "host", "ansible_user": "user",
                 "ansible_ssh_user": "user", "ansible_port": "port", "ansible_ssh_port": "port",
                 "ansible_ssh_private_key_file": "identity",
                 "ansible_private_key_file": "identity",
                 "qdeploy_remote_dir": "remote_dir", "qdeploy_python": "python"}


def _ansible_line(words: list[str], where: str) -> tuple[Target, dict]:
    """`alias key=value ...`: the alias names the target, ansible_* variables say where it is.
    Returns the alias and the variables the line sets (host, user, port, remote_dir, python,
    identity)."""
    alias = parse_target(words[0], origin=where)
    found = {}
    for word in words[1:]:
        if "=" not in word:
            raise UserError(f"{where}: {word!r} is not a key=value host variable; write "
                            "'name ansible_host=ADDR ansible_user=USER' or '[user@]host[:port]'")
        key, value = word.split("=", 1)
        if key in _ANSIBLE_KEYS:
            found[_ANSIBLE_KEYS[key]] = value
    if "port" in found:
        try:
            found["port"] = int(found["port"])
        except ValueError:
            raise UserError(f"{where}: ansible_port {found['port']!r} is not a number") from None
        if not 0 < found["port"] < 65536:
            raise UserError(f"{where}: port {found['port']} is out of range (1-65535)")
    for key, name in (("remote_dir", "qdeploy_remote_dir"), ("python", "qdeploy_python")):
        if key in found and not found[key].strip():
            raise UserError(f"{where}: {name} is empty; give a path or leave the variable out")
    return alias, found


def load(path: Path) -> list[Target]:
    """The targets listed in an inventory file, in order of first mention.

    A host listed again (in another group, as Ansible allows) is the same target: its
    variables are merged, a later line's ansible_* values overriding earlier ones.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read inventory {path} ({exc}); pass a text file with one "
                        "host per line") from None
    hosts: dict[str, dict] = {}
    skipping = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        where = f"inventory {path} line {number}"
        section = _SECTION_RE.match(line)
        if section:
            skipping = ":" in section.group(1)  # [group:vars], [group:children]
            continue
        if skipping:
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise UserError(f"{where}: {exc} in {line!r}") from None
        alias, found = _ansible_line(words, where)
        entry = hosts.setdefault(alias.name, {"host": alias.host, "user": alias.user,
                                              "port": alias.port})
        entry.update(found)
    if not hosts:
        raise UserError(f"inventory {path} lists no hosts; write one [user@]host[:port] per line")
    return [Target(name=name, **entry) for name, entry in hosts.items()]
