"""Remote dirs that a shell would read: spaces, quotes, `$`, backticks, `;`, a leading `-`,
non-ASCII letters. Every remote command names them through release.shell_path (shlex.quote),
and the runner runs as `venv/bin/python -m qrun`, never through pip's trampoline: each push
works and nothing else runs (a `$(touch X)` dir must not create X)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from qdeploy.push import fleet, release
from qdeploy.push import pipeline as push
from qdeploy.push.options import PushOptions
from qdeploy.remote import targets
from tests.fixtures.deployments import make_deployment
from tests.fixtures.sshd import push_options as options

MARK = "pwned"
NASTY = [
    "re mote/it's \"q\"",
    f"$(touch {MARK})",
    f"`touch {MARK}`",
    f"a;touch {MARK};b",
    "-leading-dash",
    "nön-äscii ñ",
    "$HOME and ${PATH}",
]


@pytest.mark.parametrize("name", NASTY)
def test_shell_path_is_one_word_the_shell_does_not_read(tmp_path, name):
    done = subprocess.run(["/bin/sh", "-c", f"printf '%s' {release.shell_path(name)}"],
                          cwd=tmp_path, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == (f"./{name}" if name.startswith("-") else name)
    assert list(tmp_path.iterdir()) == []
    home = subprocess.run(["/bin/sh", "-c", f"printf '%s' {release.shell_path('~/' + name)}"],
                          capture_output=True, env={"HOME": "/h"})
    assert home.stdout.decode() == f"/h/{name}"


@pytest.mark.parametrize("name", NASTY)
def test_a_push_to_the_local_target_under_a_shell_hostile_dir_works_and_runs_nothing_else(
        tmp_path, name, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a relative remote dir: the name is all the shell sees
    dep = make_deployment(tmp_path / "out")
    opts = PushOptions(remote_dir=name, bench=False, verify=False,
                       reports_dir=tmp_path / "reports")
    local = targets.Target("local", "local")
    first = push.push_target(local, push.transfer.load_deployment(dep), opts)
    assert first.ok, first.error
    remote = work / name
    assert (remote / "current" / "manifest.json").read_bytes() == \
        (dep / "manifest.json").read_bytes()
    again = push.push_target(local, push.transfer.load_deployment(dep), opts)
    assert again.ok and again.unchanged, again.error  # the probe read it back
    other = make_deployment(tmp_path / "out2", extra={"more.bin": b"more"})
    second = push.push_target(local, push.transfer.load_deployment(other), opts)
    assert second.ok and second.files_skipped, second.error  # linked from the first
    links = release.rollback(push.LocalConnection(), name, push.sys.executable)
    assert links == {"current": first.release_id, "previous": second.release_id}
    assert not list(tmp_path.rglob(MARK)) and not (Path.home() / MARK).exists()
    assert sorted(p.name for p in work.iterdir()) == [name.split("/")[0]]


def test_a_dir_the_file_system_cannot_take_is_one_error_line(tmp_path):
    dep = make_deployment(tmp_path / "out")
    too_long = str(tmp_path / ("x" * 300))  # NAME_MAX is 255
    opts = PushOptions(remote_dir=too_long, bench=False, verify=False,
                       reports_dir=tmp_path / "reports")
    result = push.push_target(targets.Target("local", "local"),
                              push.transfer.load_deployment(dep), opts)
    assert not result.ok and "\n" not in result.error
    assert "File name too long" in result.error and "--remote-dir" in result.error
    with pytest.raises(push.UserError, match="NUL byte"):
        push.for_target(targets.Target("local", "local"),
                        PushOptions(remote_dir="a\0b", bench=False))


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_home")
def test_over_ssh_the_runner_installs_and_benches_under_a_shell_hostile_dir(
        sshd, ssh_client_key, device_wheelhouse, first_push, tmp_path):
    """The issue's case, against a real sshd: the runner is installed into
    `<dir>/venv` (pip, from the wheelhouse), then bench and verify run through
    `<dir>/venv/bin/python -m qrun`; no command in the dir's name runs."""
    name = f"re mote/it's \"q\" $(touch {MARK}) `touch {MARK}`; ñ"
    remote = sshd.home / name
    dep = make_deployment(tmp_path / "out")
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=f"~/{name}", bench=True,
                   bench_runs=2, wheelhouse=device_wheelhouse)
    result = fleet.push_many([targets.parse_target(sshd.target)], dep, opts)[0]
    assert result.ok, result.error
    assert result.runner_installed and result.reports
    assert (remote / "current" / "manifest.json").read_bytes() == \
        (dep / "manifest.json").read_bytes()
    assert not list(sshd.home.rglob(MARK)) and not (sshd.root / MARK).exists()
    assert not os.path.exists(f"/{MARK}") and not (Path("/root") / MARK).exists()
