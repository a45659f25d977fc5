"""Connecting to a device: host keys, authentication, timeouts, ~/.ssh/config, target strings.

Against a real sshd on 127.0.0.1; every key and known_hosts file is the test's own.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from qdeploy.remote import inventory
from qdeploy.push import pipeline as push
from qdeploy.remote import targets
from qdeploy.remote.hostkeys import fingerprint
from qdeploy.remote.ssh import Connection
from qrun.errors import UserError


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def _connect(server, tmp_path, key=None, accept_new=False, known=None, **kw):
    endpoint = targets.Endpoint(
        name=server.target, hostname="127.0.0.1", port=kw.pop("port", server.port),
        user="root", identity_files=(str(key.private),) if key else (),
        known_hosts_files=(str(known or tmp_path / "known_hosts"),))
    return Connection(endpoint, accept_new=accept_new, **kw).open()


def _host_fp(server) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(server.host_key)], capture_output=True,
                         text=True, check=True).stdout
    return out.split()[1]


@pytest.mark.slow
def test_unknown_host_refused_with_fingerprint_then_accept_new_records_it(
        sshd, ssh_client_key, tmp_path):
    known = tmp_path / "known_hosts"
    with pytest.raises(UserError) as info:
        _connect(sshd, tmp_path, ssh_client_key)
    msg = str(info.value)
    assert "not known" in msg and _host_fp(sshd) in msg and "--accept-new" in msg
    assert not known.exists()

    conn = _connect(sshd, tmp_path, ssh_client_key, accept_new=True)
    try:
        assert conn.run("echo hello").stdout == b"hello\n"
    finally:
        conn.close()
    # Recorded the way OpenSSH does, so plain ssh (and the next push) trusts it.
    assert known.read_text().split() == sshd.known_hosts_line().split()
    check = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{sshd.port}", "-f", str(known)],
                           capture_output=True, text=True)
    assert check.returncode == 0
    _connect(sshd, tmp_path, ssh_client_key).close()  # now known, no flag needed


@pytest.mark.slow
def test_changed_host_key_is_refused_even_with_accept_new(sshd, ssh_client_key, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    keytype, b64 = other.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {keytype} {b64}\n")
    for accept_new in (False, True):
        with pytest.raises(UserError) as info:
            _connect(sshd, tmp_path, ssh_client_key, accept_new=accept_new)
        msg = str(info.value)
        assert "CHANGED" in msg and _host_fp(sshd) in msg and "ssh-keygen -R" in msg
    assert known.read_text() == f"[127.0.0.1]:{sshd.port} {keytype} {b64}\n"


@pytest.mark.slow
def test_hashed_known_hosts_entry_is_honoured(sshd, ssh_client_key, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    assert known.read_text().startswith("|1|")
    _connect(sshd, tmp_path, ssh_client_key).close()


@pytest.mark.slow
def test_wrong_key_is_refused_in_one_line(sshd, tmp_path):
    (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)

    class Key:
        private = wrong

    with pytest.raises(UserError) as info:
        _connect(sshd, tmp_path, Key())
    msg = str(info.value)
    assert "refused authentication" in msg and str(wrong) in msg and "--identity" in msg
    assert "\n" not in msg


@pytest.mark.slow
def test_passphrase_key_points_to_ssh_agent(sshd, tmp_path):
    (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
    locked = tmp_path / "locked_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(locked)],
                   check=True)

    class Key:
        private = locked

    with pytest.raises(UserError, match="ssh-agent|refused authentication"):
        _connect(sshd, tmp_path, Key())


@pytest.mark.slow
def test_ssh_agent_key_is_used(sshd, ssh_client_key, tmp_path, monkeypatch):
    (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {"SSH_AUTH_SOCK": str(sock), "PATH": "/usr/bin:/bin"}
        subprocess.run(["ssh-add", str(ssh_client_key.private)], env=env, check=True,
                       capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        conn = _connect(sshd, tmp_path, key=None)  # no identity file: the agent's key
        try:
            assert conn.run("true").ok
        finally:
            conn.close()
    finally:
        agent.terminate()
        agent.wait(timeout=5)


def test_unreachable_port_is_one_clear_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    endpoint = targets.Endpoint(name=f"pi@127.0.0.1:{port}", hostname="127.0.0.1", port=port,
                                user="pi", known_hosts_files=(str(tmp_path / "kh"),))
    with pytest.raises(UserError) as info:
        Connection(endpoint, connect_timeout=2).open()
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "refused" in msg.lower() and "\n" not in msg


def test_silent_server_times_out(tmp_path):
    """A port that accepts but never speaks SSH: the connect timeout ends the wait."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        endpoint = targets.Endpoint(name="mute", hostname="127.0.0.1", port=port, user="pi",
                                    known_hosts_files=(str(tmp_path / "kh"),))
        with pytest.raises(UserError, match="mute: .*127.0.0.1:%d" % port):
            Connection(endpoint, connect_timeout=0.5).open()


@pytest.mark.slow
def test_ssh_config_alias_through_include(sshd, ssh_client_key, tmp_path, _isolated_home):
    """Host alias with HostName/User/Port/IdentityFile, defined in a file pulled in by Include."""
    ssh_dir = _isolated_home / ".ssh"
    (ssh_dir / "config.d").mkdir()
    (ssh_dir / "config").write_text("Include config.d/*.conf\n\nHost *\n  ConnectTimeout 7\n")
    (ssh_dir / "config.d" / "pis.conf").write_text(
        f"Host mypi\n  HostName 127.0.0.1\n  User root\n  Port {sshd.port}\n"
        f"  IdentityFile {ssh_client_key.private}\n")
    (ssh_dir / "known_hosts").write_text(sshd.known_hosts_line())
    config = targets.load_ssh_config()
    endpoint = targets.resolve(targets.parse_target("mypi"), config)
    assert (endpoint.hostname, endpoint.port, endpoint.user) == ("127.0.0.1", sshd.port, "root")
    assert endpoint.identity_files == (str(ssh_client_key.private),)
    assert endpoint.connect_timeout == 7.0
    # The target string's user and port win over the config's.
    over = targets.resolve(targets.parse_target("pi@mypi:2200"), config)
    assert (over.user, over.port, over.hostname) == ("pi", 2200, "127.0.0.1")
    conn = push.connect(targets.parse_target("mypi"), push.PushOptions())
    with conn:
        assert conn.run("echo $HOME").stdout.decode().strip() == str(sshd.home)


def test_fingerprint_matches_ssh_keygen(sshd):
    import paramiko

    key = paramiko.Ed25519Key.from_private_key_file(str(sshd.host_key))
    assert fingerprint(key) == _host_fp(sshd)


@pytest.mark.parametrize("text, expected", [
    ("pi.local", ("pi.local", None, None)),
    ("pi@raspberrypi.local", ("raspberrypi.local", "pi", None)),
    ("pi@192.168.1.20:2222", ("192.168.1.20", "pi", 2222)),
    ("root@[::1]:22", ("::1", "root", 22)),
    ("mypi", ("mypi", None, None)),
])
def test_parse_target(text, expected):
    t = targets.parse_target(text)
    assert (t.host, t.user, t.port) == expected and t.name == text and not t.is_local


@pytest.mark.parametrize("bad", ["", "pi@", "@host", "pi@host:", "pi@host:99999",
                                 "pi@host:22:33", "pi host", "ssh://pi@host", "pi@-host"])
def test_bad_target_strings_are_refused(bad):
    with pytest.raises(UserError, match="--target|port"):
        targets.parse_target(bad)


def test_local_target():
    assert targets.parse_target("local").is_local
    assert not targets.parse_target("pi@local").is_local


def test_inventory_plain_and_ansible_ini(tmp_path):
    inv = tmp_path / "hosts.ini"
    inv.write_text(
        "# lab devices\n"
        "pi@10.0.0.5\n"
        "\n"
        "[pis]\n"
        "kitchen ansible_host=192.168.1.20 ansible_user=pi ansible_port=2222\n"
        "garage.local ansible_user=admin  # trailing comment\n"
        "\n"
        "[pis:vars]\n"
        "ansible_python_interpreter=/usr/bin/python3\n"
        "\n"
        "[all:children]\n"
        "pis\n"
        "[bench]\n"
        "kitchen ansible_host=192.168.1.20 ansible_user=pi ansible_port=2222\n"
        "local\n")
    found = inventory.load(inv)
    assert [(t.name, t.host, t.user, t.port) for t in found] == [
        ("pi@10.0.0.5", "10.0.0.5", "pi", None),
        ("kitchen", "192.168.1.20", "pi", 2222),
        ("garage.local", "garage.local", "admin", None),
        ("local", "local", None, None),
    ]


@pytest.mark.parametrize("line, problem", [
    ("web[01:20].example.com", "is not a target"),
    ("kitchen ansible_host", "not a key=value"),
    ("kitchen ansible_port=ssh", "not a number"),
])
def test_inventory_bad_line_is_named(tmp_path, line, problem):
    inv = tmp_path / "hosts"
    inv.write_text("pi@ok.local\n\n" + line + "\n")
    with pytest.raises(UserError, match=f"inventory {inv} line 3.*{problem}"):
        inventory.load(inv)


def test_empty_inventory_is_refused(tmp_path):
    inv = tmp_path / "hosts"
    inv.write_text("# nothing yet\n")
    with pytest.raises(UserError, match="lists no hosts"):
        inventory.load(inv)


@pytest.mark.slow
def test_command_timeout_is_one_line(sshd, ssh_client_key, tmp_path):
    (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
    conn = _connect(sshd, tmp_path, ssh_client_key)
    try:
        with pytest.raises(UserError, match=r"no answer from .* for 0.5 s \(command timeout\)"):
            conn.run("sleep 5", timeout=0.5)
    finally:
        conn.close()


def test_proxy_jump_in_ssh_config_is_refused_not_ignored(tmp_path, _isolated_home):
    (_isolated_home / ".ssh" / "config").write_text(
        "Host behind\n  HostName 10.1.2.3\n  ProxyJump gateway\n")
    with pytest.raises(UserError, match="ProxyJump for behind"):
        targets.resolve(targets.parse_target("pi@behind"), targets.load_ssh_config())


@pytest.mark.slow
def test_known_hosts_with_cert_authority_and_bad_lines_still_works(sshd, ssh_client_key,
                                                                   tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(
        "@cert-authority *.example.com ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
        "garbage line here\n"
        "[x]:22 ssh-ed25519 notbase64!!\n"
        + sshd.known_hosts_line())
    _connect(sshd, tmp_path, ssh_client_key).close()


@pytest.mark.slow
def test_revoked_host_key_is_refused_even_with_accept_new(sshd, ssh_client_key, tmp_path):
    keytype, b64 = sshd.host_pub.split()[:2]
    (tmp_path / "known_hosts").write_text(f"@revoked * {keytype} {b64}\n")
    with pytest.raises(UserError, match="@revoked"):
        _connect(sshd, tmp_path, ssh_client_key, accept_new=True)
    # Revoked wins over a plain entry for the same key, as in OpenSSH.
    (tmp_path / "known_hosts").write_text(f"@revoked * {keytype} {b64}\n"
                                          + sshd.known_hosts_line())
    with pytest.raises(UserError, match="@revoked"):
        _connect(sshd, tmp_path, ssh_client_key)


@pytest.mark.slow
def test_accept_new_after_a_last_line_without_newline_keeps_both_entries(sshd, ssh_client_key,
                                                                          tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    keytype, b64 = other.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"otherpi {keytype} {b64}")  # no trailing newline, as editors leave it
    _connect(sshd, tmp_path, ssh_client_key, accept_new=True).close()
    for name in ("otherpi", f"[127.0.0.1]:{sshd.port}"):
        found = subprocess.run(["ssh-keygen", "-F", name, "-f", str(known)],
                               capture_output=True, text=True)
        assert found.returncode == 0, (name, known.read_text())
    _connect(sshd, tmp_path, ssh_client_key).close()  # recorded intact: no flag needed now


@pytest.mark.slow
def test_accept_new_into_an_unwritable_known_hosts_is_one_line(sshd, ssh_client_key, tmp_path):
    known = tmp_path / "known_hosts_dir"
    known.mkdir()  # not a file: cannot be appended to
    with pytest.raises(UserError) as info:
        _connect(sshd, tmp_path, ssh_client_key, accept_new=True, known=known)
    msg = str(info.value)
    assert f"cannot record the host key of [127.0.0.1]:{sshd.port} in {known}" in msg
    assert "--known-hosts" in msg and "\n" not in msg


@pytest.mark.parametrize("value, seconds", [("45", 45.0), ("1m", 60.0), ("1m30s", 90.0),
                                            ("2H", 7200.0)])
def test_ssh_config_connect_timeout_in_openssh_time_format(tmp_path, value, seconds):
    config = tmp_path / "config"
    config.write_text(f"Host pi\n  HostName 10.0.0.5\n  ConnectTimeout {value}\n")
    endpoint = targets.resolve(targets.parse_target("pi"), targets.load_ssh_config(config))
    assert endpoint.connect_timeout == seconds
    shown = subprocess.run(["ssh", "-G", "-F", str(config), "pi"], capture_output=True,
                           text=True, check=True).stdout.split("\n")
    assert f"connecttimeout {seconds:g}" in shown  # what OpenSSH makes of it


def test_ssh_config_bad_connect_timeout_is_one_line_naming_file_and_host(tmp_path):
    config = tmp_path / "config"
    config.write_text("Host pi\n  ConnectTimeout soon\n")
    with pytest.raises(UserError) as info:
        targets.resolve(targets.parse_target("pi"), targets.load_ssh_config(config))
    msg = str(info.value)
    assert str(config) in msg and "'soon' for pi is not a time" in msg and "\n" not in msg


def test_cli_connect_timeout_comes_from_ssh_config_unless_given(tmp_path):
    """A port that accepts but never speaks SSH: ConnectTimeout from the ssh config bounds
    the wait (not a hidden 10 s default), --connect-timeout wins over it; one clear line."""
    import os
    import sys

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        config = tmp_path / "config"
        config.write_text(f"Host mute\n  HostName 127.0.0.1\n  Port {port}\n  User pi\n"
                          "  ConnectTimeout 1\n")
        for flag, want in (([], "within 1 s"), (["--connect-timeout", "2"], "within 2 s")):
            done = subprocess.run(
                [sys.executable, "-m", "qdeploy", "rollback", "-t", "mute", "--ssh-config",
                 str(config), "--known-hosts", str(tmp_path / "kh"), *flag],
                capture_output=True, text=True, timeout=60, env=dict(os.environ))
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 1 and len(lines) == 1, done.stderr
            assert "sent no SSH banner" in lines[0] and want in lines[0]


def test_options_after_an_include_apply_as_openssh_applies_them(tmp_path):
    """The included file's last Host block ends with the file: what follows the Include belongs
    to the including context again (global here, the enclosing Host block there)."""
    (tmp_path / "extra.conf").write_text("Host other\n    User bob\n")
    (tmp_path / "more.conf").write_text("Host lab\n    Port 2200\n")
    config = tmp_path / "config"
    config.write_text(f"Include {tmp_path}/extra.conf\nUser fleet\nPort 2222\n\n"
                      f"Host pi\n    HostName 10.0.0.5\n    Include {tmp_path}/more.conf\n"
                      "    User pi\n\nHost lab\n    HostName 10.0.0.9\n")
    parsed = targets.load_ssh_config(config)
    for alias in ("pi", "other", "lab"):
        endpoint = targets.resolve(targets.parse_target(alias), parsed)
        shown = dict(line.split(" ", 1) for line in subprocess.run(
            ["ssh", "-G", "-F", str(config), alias], capture_output=True, text=True,
            check=True).stdout.splitlines() if " " in line)
        assert (endpoint.user, str(endpoint.port), endpoint.hostname) == \
            (shown["user"], shown["port"], shown["hostname"]), alias


def test_inventory_host_in_two_groups_is_one_target_with_merged_variables(tmp_path):
    inv = tmp_path / "hosts.ini"
    inv.write_text("[kitchen]\npi1 ansible_host=10.0.0.5 ansible_user=pi\npi2\n\n"
                   "[edgetpu]\npi1\npi2 ansible_port=2222\n\n[lab]\npi1 ansible_user=admin\n")
    found = inventory.load(inv)
    assert [(t.name, t.host, t.user, t.port) for t in found] == [
        ("pi1", "10.0.0.5", "admin", None),
        ("pi2", "pi2", None, 2222),
    ]


@pytest.mark.slow
def test_key_file_that_is_not_a_key_is_named_in_one_line(sshd, tmp_path):
    (tmp_path / "known_hosts").write_text(sshd.known_hosts_line())
    broken = tmp_path / "id_broken"
    broken.write_text("this is not a key\n")

    class Key:
        private = broken

    with pytest.raises(UserError) as info:
        _connect(sshd, tmp_path, Key())
    msg = str(info.value)
    assert f"cannot use the key file(s) {broken}" in msg and "--identity" in msg
    assert "listens there" not in msg and "\n" not in msg
