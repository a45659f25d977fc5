"""Facts about the machine a benchmark ran on: host name, CPU, Pi model, OS, Python, peak RSS.

Read from `/proc` and `/etc/os-release` where they exist (Linux, Raspberry Pi
OS), with `platform` as the fallback elsewhere. Nothing here raises: a fact
that cannot be read is reported as None (or `platform`'s best guess).
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Optional

CPUINFO = Path("/proc/cpuinfo")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
OS_RELEASE = Path("/etc/os-release")
CPU_KEYS = ("model name", "Hardware", "Model", "Processor")
# ARM "CPU part" ids of the cores found on Raspberry Pis (arm64 kernels print no model name).
ARM_PARTS = {"0xb76": "ARM1176", "0xc07": "Cortex-A7", "0xd03": "Cortex-A53",
             "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76"}


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def cpu_model(cpuinfo: Optional[str] = None) -> str:
    """The CPU's name from /proc/cpuinfo (model name, ARM core by CPU part, ...), else platform's."""
    text = _read(CPUINFO) if cpuinfo is None else cpuinfo
    fields: dict = {}
    for line in (text or "").splitlines():
        name, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(name.strip(), value.strip())
    if "model name" in fields:
        return fields["model name"]
    part = ARM_PARTS.get(fields.get("CPU part", "").lower())
    if part:
        return part
    for key in CPU_KEYS:
        if key in fields:
            return fields[key]
    return platform.processor() or platform.machine()


def pi_model(path: Path = DEVICE_TREE_MODEL) -> Optional[str]:
    """The board name from the device tree (e.g. "Raspberry Pi 5 Model B Rev 1.0"), or None."""
    text = (_read(path) or "").replace("\x00", "").strip()
    return text or None


def os_name() -> str:
    """PRETTY_NAME from /etc/os-release, else platform.platform()."""
    for line in (_read(OS_RELEASE) or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def peak_rss_kb() -> Optional[int]:
    """This process's peak resident set size in KiB (None where `resource` is missing)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak // 1024 if sys.platform == "darwin" else peak)  # macOS reports bytes


def host_facts() -> dict:
    """The report's "host" object."""
    return {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "pi_model": pi_model(),
        "os": os_name(),
        "python": platform.python_version(),
    }
