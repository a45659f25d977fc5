"""qrun.atomic: files written through a temporary name get the mode open() would give them,
or keep the mode they had (mkstemp alone makes every file 0600)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from qrun import atomic

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_new_file_follows_the_umask(tmp_path, umask):
    """In a fresh process with that umask (the module reads it once), as open() would."""
    target = tmp_path / "new.json"
    code = ("import os, sys; from pathlib import Path; from qrun import atomic; "
            f"os.umask({umask:#o}); atomic.write_text(Path(sys.argv[1]), 'x')")
    subprocess.run([sys.executable, "-c", code, str(target)], check=True)
    reference = tmp_path / "reference"
    code = f"import os, sys; os.umask({umask:#o}); open(sys.argv[1], 'w').close()"
    subprocess.run([sys.executable, "-c", code, str(reference)], check=True)
    assert target.read_text() == "x"
    assert mode_of(target) == mode_of(reference) == 0o666 & ~umask


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o664, 0o640], ids=oct)
def test_rewrite_keeps_the_existing_mode(tmp_path, mode):
    target = tmp_path / "report.json"
    target.write_text("old")
    os.chmod(target, mode)
    atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert mode_of(target) == mode


def test_umask_is_read_without_changing_it():
    before = os.umask(0o027)
    try:
        atomic._UMASK = None
        assert atomic.umask() == 0o027
        assert os.umask(0o027) == 0o027  # still set as it was
    finally:
        os.umask(before)
        atomic._UMASK = None


def test_bench_json_report_gets_the_umask_mode(qrun_process, tmp_path):
    """The real CLI: a report written by qrun bench --json is as readable as any new file."""
    from tests.fixtures.deployments import V1_025
    from tests.paths import CORAL

    report = tmp_path / "bench.json"
    out = qrun_process("bench", "--model", CORAL / f"{V1_025}.tflite", "--runs", 1,
                       "--warmup", 0, "--json", report)
    assert out.code == 0, out.err
    current = os.umask(0)
    os.umask(current)
    assert mode_of(report) == 0o666 & ~current
