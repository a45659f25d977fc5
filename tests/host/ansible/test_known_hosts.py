"""Both engines read and record host keys in one known_hosts file.

OpenSSH's default known_hosts is under the passwd entry's home, the native engine's under
$HOME: the ansible engine names the native engine's file to ssh, so a key it accepts with
--accept-new is one a native push trusts, even when $HOME is elsewhere.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from qdeploy.ansible import runner
from qdeploy.push import pipeline
from qdeploy.push.fleet import push_many
from qdeploy.push.options import PushOptions
from qdeploy.remote import targets
from tests.fixtures.deployments import make_deployment


def ssh_args(options: PushOptions) -> list:
    return shlex.split(runner.ssh_environment(options)["ANSIBLE_SSH_EXTRA_ARGS"])


def native_known_hosts(options: PushOptions, host: str = "127.0.0.1") -> tuple:
    """The known_hosts files a native push with `options` reads for `host`."""
    return pipeline.connect(targets.Target("dev", host, "root", 2222), options) \
        .endpoint.known_hosts_files


@pytest.mark.parametrize("ssh_config", ["missing", None])
def test_ansible_ssh_gets_the_known_hosts_file_the_native_engine_reads(
        isolated_home, tmp_path, ssh_config):
    opts = PushOptions(accept_new=True,
                       ssh_config=tmp_path / "no-config" if ssh_config else None)
    args = ssh_args(opts)
    assert native_known_hosts(opts) == (str(isolated_home / ".ssh" / "known_hosts"),)
    assert f"UserKnownHostsFile={isolated_home / '.ssh' / 'known_hosts'}" in args
    assert "StrictHostKeyChecking=accept-new" in args
    assert [a for a in args if a.startswith("UserKnownHostsFile=")] == [
        f"UserKnownHostsFile={native_known_hosts(opts)[0]}"]


def test_known_hosts_option_goes_to_both_engines(isolated_home, tmp_path):
    opts = PushOptions(known_hosts=tmp_path / "kh", ssh_config=tmp_path / "no-config")
    assert native_known_hosts(opts) == (str(tmp_path / "kh"),)
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in ssh_args(opts)
    assert "StrictHostKeyChecking=accept-new" not in ssh_args(opts)


def test_an_ssh_config_naming_known_hosts_decides_per_host_for_both(isolated_home, tmp_path):
    config = tmp_path / "config"
    config.write_text(f"Host 127.0.0.1\n  UserKnownHostsFile {tmp_path / 'pis'}\n")
    opts = PushOptions(ssh_config=config)
    assert native_known_hosts(opts) == (str(tmp_path / "pis"),)
    assert native_known_hosts(opts, "other") == (str(isolated_home / ".ssh" / "known_hosts"),)
    args = ssh_args(opts)
    assert args[:2] == ["-F", str(config)]  # ssh reads the same config, per host
    assert not [a for a in args if a.startswith("UserKnownHostsFile=")]
    # ... and --known-hosts wins over it in both
    opts.known_hosts = tmp_path / "kh"
    assert native_known_hosts(opts) == (str(tmp_path / "kh"),)
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in ssh_args(opts)


def known(path: Path, server) -> bool:
    """Whether known_hosts `path` holds a key for `server` (hashed names too)."""
    if not path.is_file():
        return False
    return subprocess.run(["ssh-keygen", "-F", f"[{server.host}]:{server.port}", "-f",
                           str(path)], capture_output=True).returncode == 0


@pytest.mark.slow
def test_native_push_trusts_a_key_the_ansible_engine_accepted(fleet, tmp_path, isolated_home):
    """$HOME is not the passwd entry's home here: an Ansible push with --accept-new and no
    --known-hosts records the key in $HOME/.ssh/known_hosts (creating ~/.ssh, as the native
    engine does), and a native push without --accept-new then connects."""
    shutil.rmtree(isolated_home / ".ssh")
    server, remote = fleet.servers[0], fleet.remote_dirs[0]
    passwd_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    assert passwd_home != isolated_home
    inventory = fleet.write_inventory(tmp_path / "one.ini")
    inventory.write_text("\n".join(inventory.read_text().splitlines()[:2]) + "\n")
    dep = make_deployment(tmp_path / "a")

    [ansible] = runner.push_fleet(dep, inventory, fleet.options(known_hosts=None,
                                                                accept_new=True))
    assert ansible.outcome == "updated", ansible.error
    home_known = isolated_home / ".ssh" / "known_hosts"
    assert known(home_known, server)
    assert (home_known.parent.stat().st_mode & 0o777) == 0o700
    assert not known(passwd_home / ".ssh" / "known_hosts", server)

    target = targets.Target("dev0", server.host, "root", server.port, remote_dir=str(remote))
    [native] = push_many([target], dep, fleet.options(known_hosts=None, accept_new=False))
    assert native.ok, native.error
    assert native.release_id == ansible.release_id and native.unchanged
