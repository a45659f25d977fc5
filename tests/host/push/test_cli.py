"""The `qdeploy push` / `qdeploy rollback` command lines end to end, against a real sshd."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fixtures.deployments import make_deployment

pytestmark = pytest.mark.slow


def qdeploy(*args, home):
    env = dict(os.environ, HOME=str(home))
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.run([sys.executable, "-m", "qdeploy", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_push_accept_new_and_rollback(sshd, ssh_client_key, device, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "out"
    make_deployment(out)
    kh = tmp_path / "known_hosts"
    common = ["-t", sshd.target, "--identity", ssh_client_key.private, "--known-hosts", kh,
              "--remote-dir", device]

    refused = qdeploy("push", out, *common, "--no-bench", home=home)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and refused.stderr.strip().splitlines()[-1] == errors[0]
    assert "not known" in errors[0] and "SHA256:" in errors[0] and "--accept-new" in errors[0]
    assert not (device / "current").exists()

    first = qdeploy("push", out, *common, "--no-bench", "--accept-new", home=home)
    assert first.returncode == 0, first.stderr
    assert "pushed" in first.stdout and "4/0" in first.stdout
    assert kh.read_text().split() == sshd.known_hosts_line().split()
    release1 = os.readlink(device / "current")

    no_previous = qdeploy("rollback", *common, home=home)
    assert no_previous.returncode == 1
    assert no_previous.stderr.strip().startswith("error:") and "no previous release" in \
        no_previous.stderr

    make_deployment(out, extra={"notes.txt": b"v2\n"})
    second = qdeploy("push", out, *common, "--no-bench", home=home)
    assert second.returncode == 0, second.stderr
    assert "pushed" in second.stdout and "2/3" in second.stdout
    release2 = os.readlink(device / "current")
    assert release2 != release1

    back = qdeploy("rollback", *common, home=home)
    assert back.returncode == 0, back.stderr
    assert f"current -> {release1.split('/')[-1]}" in back.stdout
    assert os.readlink(device / "current") == release1
