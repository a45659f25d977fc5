"""Host keys without a server: which known_hosts files are read, how they are parsed, and what
an unknown or revoked key does (qdeploy.remote.hostkeys)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from qdeploy.remote import hostkeys, targets
from qrun.errors import UserError


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture(scope="module")
def keys() -> list:
    return [paramiko.ECDSAKey.generate() for _ in range(3)]


def config(text: str):
    return paramiko.SSHConfig.from_text(text)


def test_default_known_hosts_follows_home(home):
    assert hostkeys.default_known_hosts() == home / ".ssh" / "known_hosts"
    assert hostkeys.known_hosts_files() == (str(home / ".ssh" / "known_hosts"),)


def test_known_hosts_given_wins_over_the_ssh_config(home, tmp_path):
    given = tmp_path / "kh"
    assert hostkeys.known_hosts_files(given, "~/a ~/b") == (str(given),)
    assert hostkeys.known_hosts_files(None, "~/a /abs/b") == (str(home / "a"), "/abs/b")
    assert hostkeys.known_hosts_files(None, "") == (str(home / ".ssh" / "known_hosts"),)


def test_resolve_uses_the_same_resolution(home, tmp_path):
    target = targets.parse_target("pi@box")
    plain = targets.resolve(target, config("Host other\n  Port 2\n"))
    assert plain.known_hosts_files == hostkeys.known_hosts_files()
    named = targets.resolve(target, config("Host box\n  UserKnownHostsFile ~/x ~/y\n"))
    assert named.known_hosts_files == (str(home / "x"), str(home / "y"))
    given = targets.resolve(target, config("Host box\n  UserKnownHostsFile ~/x\n"),
                            known_hosts=tmp_path / "kh")
    assert given.known_hosts_files == (str(tmp_path / "kh"),)


def test_fleet_known_hosts(home, tmp_path):
    default = str(home / ".ssh" / "known_hosts")
    assert hostkeys.fleet_known_hosts(None, None) == default
    assert hostkeys.fleet_known_hosts(None, config("Host *\n  Port 2222\n")) == default
    assert hostkeys.fleet_known_hosts(tmp_path / "kh", None) == str(tmp_path / "kh")
    # The ssh config names one (for some hosts): each host's is the config's, so none for all.
    named = config("Host pi*\n  UserKnownHostsFile ~/pis\n")
    assert hostkeys.fleet_known_hosts(None, named) is None
    assert hostkeys.fleet_known_hosts(tmp_path / "kh", named) == str(tmp_path / "kh")


def test_load_known_hosts_skips_what_openssh_skips_and_collects_revoked(tmp_path, keys):
    good, revoked, hashed = keys
    hashed_name = paramiko.HostKeys.hash_host("hashed.example")
    known = tmp_path / "known_hosts"
    known.write_text(
        "# a comment\n\n"
        f"pi.local,10.0.0.2 {good.get_name()} {good.get_base64()}\n"
        f"@cert-authority *.example {good.get_name()} {good.get_base64()}\n"
        f"@revoked * {revoked.get_name()} {revoked.get_base64()}\n"
        "not a host key line\n"
        "weird.example ssh-unknown AAAAB3NzaC1yc2E=\n"
        f"{hashed_name} {hashed.get_name()} {hashed.get_base64()}\n"
        f"[pi.local]:2222 {good.get_name()} {good.get_base64()}")  # no final newline
    host_keys = paramiko.HostKeys()
    found = hostkeys.load_known_hosts(host_keys, str(known))
    assert found == {revoked.get_base64()}
    assert host_keys.lookup("pi.local")[good.get_name()] == good
    assert host_keys.lookup("10.0.0.2")[good.get_name()] == good
    assert host_keys.lookup("[pi.local]:2222")[good.get_name()] == good
    assert host_keys.lookup("hashed.example")[hashed.get_name()] == hashed
    assert host_keys.lookup("weird.example") is None
    assert host_keys.lookup("ca.example") is None


def test_unreadable_known_hosts_is_one_line_naming_it(tmp_path):
    with pytest.raises(UserError, match=r"cannot read known_hosts .*--known-hosts") as info:
        hostkeys.load_known_hosts(paramiko.HostKeys(), str(tmp_path))  # a directory
    assert str(tmp_path) in str(info.value)


def test_fingerprint_is_openssh_sha256(tmp_path):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    expected = subprocess.run(["ssh-keygen", "-lf", str(key.with_suffix(".pub"))],
                              capture_output=True, text=True, check=True).stdout.split()[1]
    assert hostkeys.fingerprint(paramiko.Ed25519Key.from_private_key_file(str(key))) == expected


class Client:
    def __init__(self):
        self.keys = paramiko.HostKeys()

    def get_host_keys(self):
        return self.keys


def endpoint(known: Path) -> targets.Endpoint:
    return targets.Endpoint(name="pi", hostname="pi.local", port=2222, user="pi",
                            known_hosts_files=(str(known), "/nonexistent/second"))


def test_policy_refuses_an_unknown_key_with_its_fingerprint(tmp_path, keys):
    known = tmp_path / "known_hosts"
    policy = hostkeys.HostKeyPolicy(endpoint(known), accept_new=False)
    with pytest.raises(UserError) as info:
        policy.missing_host_key(Client(), "[pi.local]:2222", keys[0])
    msg = str(info.value)
    assert msg.startswith("pi: host key of [pi.local]:2222 is not known")
    assert hostkeys.fingerprint(keys[0]) in msg and "--accept-new" in msg and str(known) in msg
    assert not known.exists()


def test_policy_records_a_new_key_in_the_first_file(tmp_path, keys):
    known = tmp_path / "new" / "dir" / "known_hosts"  # created, as OpenSSH creates ~/.ssh
    client = Client()
    hostkeys.HostKeyPolicy(endpoint(known), accept_new=True).missing_host_key(
        client, "[pi.local]:2222", keys[0])
    assert known.read_text() == f"[pi.local]:2222 {keys[0].get_name()} {keys[0].get_base64()}\n"
    assert (known.parent.stat().st_mode & 0o777) == 0o700
    assert client.keys.lookup("[pi.local]:2222")[keys[0].get_name()] == keys[0]
    # a last line without its newline keeps both entries
    known.write_text("other ssh-ed25519 AAAA")
    hostkeys.HostKeyPolicy(endpoint(known), accept_new=True).missing_host_key(
        Client(), "pi.local", keys[1])
    assert known.read_text().splitlines() == [
        "other ssh-ed25519 AAAA", f"pi.local {keys[1].get_name()} {keys[1].get_base64()}"]


def test_policy_refuses_a_revoked_key_even_with_accept_new(tmp_path, keys):
    known = tmp_path / "known_hosts"
    policy = hostkeys.HostKeyPolicy(endpoint(known), accept_new=True,
                                    revoked=frozenset({keys[2].get_base64()}))
    with pytest.raises(UserError, match="@revoked"):
        policy.missing_host_key(Client(), "pi.local", keys[2])
    assert not known.exists()


def test_policy_cannot_record_is_one_line(tmp_path, keys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    policy = hostkeys.HostKeyPolicy(endpoint(blocker / "known_hosts"), accept_new=True)
    with pytest.raises(UserError, match=r"cannot record the host key .*--known-hosts FILE"):
        policy.missing_host_key(Client(), "pi.local", keys[0])
