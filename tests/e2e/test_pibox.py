"""scripts/pi-in-a-box: the emulated arm64 device, reached over a real SSH connection.

The box's tests skip where this machine cannot host it (see tests/fixtures/pibox.py); the
fault tests run the script for real against a refused mirror and a too-small disk. The
device runtime itself is proven on the box by tests/test_pibox_push.py: the push installs
qrun (numpy, pillow, ai-edge-litert) there and classifies parrot.jpg.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.pibox import SCRIPT


@pytest.mark.slow
def test_uname_over_ssh_says_aarch64(pibox):
    assert pibox.run("uname -m").stdout.strip() == "aarch64"


@pytest.mark.slow
def test_python3_in_the_box_is_bookworms_arm64_python(pibox):
    out = pibox.run("python3 -c 'import platform, sys; "
                    "print(platform.machine(), sys.version_info[:2])'").stdout
    assert out.split(maxsplit=1) == ["aarch64", "(3, 11)\n"]


@pytest.mark.slow
def test_nothing_of_qdeploy_is_preinstalled(pibox):
    result = pibox.run("command -v qrun || python3 -c 'import qrun'", check=False)
    assert result.returncode != 0, "the box must not have qrun: a push installs it"
    assert "ModuleNotFoundError" in result.stderr


@pytest.mark.slow
def test_sftp_reaches_the_box(pibox, tmp_path):
    """Pushes copy files with SFTP: a put lands in the user's home."""
    local = tmp_path / "hello.txt"
    local.write_text("hello from the host\n")
    subprocess.run(["sftp", "-F", str(pibox.ssh_config), "-b", "-", "pibox"], check=True,
                   input=f"put {local} hello.txt\n".encode(), capture_output=True, timeout=120)
    assert pibox.run("cat ~/hello.txt").stdout == "hello from the host\n"


@pytest.mark.slow
# --- faults: one clear line, non-zero exit, nothing half-built left behind ------------------

def _run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout)


def _needs_root_and_debootstrap():
    if os.geteuid() != 0:
        pytest.skip("the build checks run as root only (chroot, mount)")
    if not Path("/usr/sbin/debootstrap").exists():
        pytest.skip("debootstrap not installed (scripts/test installs it)")


def _nothing_half_built(cache: Path) -> None:
    leftovers = [p.name for p in cache.iterdir() if p.name not in (".lock", "build.log")]
    assert leftovers == []
    mounts = Path("/proc/self/mounts").read_text()
    assert f" {cache}/" not in mounts


def test_unreachable_mirror_is_one_clear_line(tmp_path):
    _needs_root_and_debootstrap()
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mirror = f"http://127.0.0.1:{port}/debian"
    result = _run_script("--cache-dir", str(tmp_path), "--mirror", mirror, "build")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "debootstrap mirror unreachable" in lines[0]
    assert mirror in lines[0]
    _nothing_half_built(tmp_path)


def test_too_small_disk_is_one_clear_line(tmp_path):
    _needs_root_and_debootstrap()
    cache = tmp_path / "small"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "pibox-test", str(cache)],
                   check=True)
    try:
        result = _run_script("--cache-dir", str(cache), "build")
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "disk too small" in lines[0] and str(cache) in lines[0]
        _nothing_half_built(cache)
    finally:
        subprocess.run(["umount", str(cache)], check=True)


def test_binfmt_unavailable_is_one_clear_line(tmp_path):
    """As in an unprivileged container: qemu-aarch64 not registered in the binfmt_misc this
    process sees, and no CAP_SYS_ADMIN to mount one (a private mount namespace, for real)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make the private mount namespace")
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs util-linux's unshare and setpriv")
    hide = ("mount -t tmpfs -o ro,size=4k nobinfmt /proc/sys/fs/binfmt_misc && "
            "exec setpriv --bounding-set -sys_admin --inh-caps -sys_admin \"$@\"")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", hide,
                             "sh", sys.executable, str(SCRIPT), "--cache-dir", str(tmp_path),
                             "start"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3  # the fixture skips on 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "binfmt unavailable" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_states_the_limits():
    out = " ".join(_run_script("--help").stdout.split())
    assert "not the Pi's kernel, firmware, hardware" in out
    assert "~100x slower than native" in out
