"""The runner on the device: build the `qrun` wheel on the host, install it into a device venv.

`build_wheel` writes `qrun-<version>-py3-none-any.whl` from the `qrun` package alone (never
`qdeploy`), straight to the wheel format (PEP 427): no build backend, no network, and the same
bytes for the same sources. Its dependencies are the `device` extra of the installed qdeploy.

The wheel's version is `qrun.__version__` with a digest of the package's sources as a local
label (`0.1.0+1a2b3c4d5e6f`), so a runner whose code changed is reinstalled even when the release
number did not. `ensure_runner` compares the device's installed runner version with that and,
when they differ, uploads the wheel (and a `--wheelhouse` of dependency wheels for offline
devices), creates `<remote-dir>/venv` with the device's Python and pip-installs into it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
import tempfile
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

import qrun
from qrun.errors import UserError
from qdeploy.push import agent, release
from qdeploy.remote.connection import Link

DIST = "qrun"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
INSTALL_TIMEOUT_S = 1800.0
FALLBACK_REQUIRES = ["numpy", "pillow", "typer>=0.12,<0.29", "ai-edge-litert>=2.3"]
# The runner's own extras (qrun[video]), installed on a device when a push asks for them
# (--runner-extras, or --bench-video): qdeploy's extra of the same name, else these.
RUNNER_EXTRAS = {"video": ["av>=12"]}
_EXTRA = re.compile(
    r"""^\s*(?:\(?(?P<before>.*?)\)?\s+and\s+)?extra\s*==\s*["'](?P<name>[\w.-]+)["']\s*$""")


def extra_requirements(extra: str = "device") -> list[str]:
    """The requirements of one extra of the installed qdeploy distribution, markers kept."""
    try:
        requires = metadata.requires("qdeploy") or []
    except metadata.PackageNotFoundError:
        return []
    out = []
    for req in requires:
        spec, _, marker = req.partition(";")
        m = _EXTRA.match(marker)
        if m and m.group("name") == extra:
            before = (m.group("before") or "").strip()
            out.append(spec.strip() + (f"; {before}" if before else ""))
    return out


def device_requirements() -> list[str]:
    """Requires-Dist of the wheel: the `device` extra of the installed qdeploy distribution."""
    return extra_requirements("device") or list(FALLBACK_REQUIRES)


def check_extras(extras) -> tuple:
    """The runner extras asked for, sorted; an unknown one is a UserError."""
    unknown = sorted(set(extras) - set(RUNNER_EXTRAS))
    if unknown:
        raise UserError(f"--runner-extras {','.join(unknown)}: the runner has no such extra; "
                        f"give one of {', '.join(RUNNER_EXTRAS)}")
    return tuple(sorted(set(extras)))


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def package_files() -> list[tuple[str, bytes]]:
    """(archive name, content) of every source file of the qrun package, in a stable order."""
    source = Path(qrun.__file__).resolve().parent
    files = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_dir() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".tmp") \
                or path.name.startswith("."):
            continue
        files.append((f"qrun/{rel.as_posix()}", path.read_bytes()))
    return files


def runner_version(files: Optional[list] = None, extras: tuple = ()) -> str:
    """`qrun.__version__` plus a digest of the sources, e.g. `0.1.0+1a2b3c4d5e6f` (PEP 440),
    and the extras installed with it (`0.1.0+1a2b3c4d5e6f.video`): a device whose runner
    lacks an extra a push asks for gets it installed."""
    digest = hashlib.sha256()
    for name, data in files if files is not None else package_files():
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return f"{qrun.__version__}+{digest.hexdigest()[:12]}" + "".join(f".{e}" for e in extras)


def build_wheel(dest: Path, extras: tuple = ()) -> Path:
    """Write the qrun wheel into `dest` (its version naming `extras`); returns its path."""
    files: list[tuple[str, bytes]] = package_files()
    version = runner_version(files, extras)
    dist_info = f"{DIST}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {DIST}", f"Version: {version}",
            "Summary: qdeploy's device runner: classify and benchmark TFLite / Edge TPU models",
            "Requires-Python: >=3.9"]
    meta += [f"Requires-Dist: {r}" for r in device_requirements()]
    for extra, fallback in RUNNER_EXTRAS.items():
        meta.append(f"Provides-Extra: {extra}")
        meta += [f'Requires-Dist: {r}{" and" if ";" in r else ";"} extra == "{extra}"'
                 for r in extra_requirements(extra) or fallback]
    files.append((f"{dist_info}/METADATA", ("\n".join(meta) + "\n").encode()))
    files.append((f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: qdeploy.push.wheel\n"
                                        b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    files.append((f"{dist_info}/entry_points.txt",
                  b"[console_scripts]\nqrun = qrun.cli:main\n"))
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files)
    record += f"{dist_info}/RECORD,,\n"
    files.append((f"{dist_info}/RECORD", record.encode()))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{DIST}-{version}-py3-none-any.whl"
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    tmp.replace(wheel)
    return wheel


@dataclass
class RunnerResult:
    version: str
    installed: bool  # False when the device already had this version
    seconds: float


def _remote_listing(conn: Link, remote_dir: str, sub: str) -> dict:
    r = release.shell_path(remote_dir)
    result = conn.run(f'cd {r}/{sub} 2>/dev/null && for f in *.whl; do [ -f "$f" ] && '
                      'printf "%s %s\\n" "$(wc -c < "$f")" "$f"; done; true',
                      what="the listing of the wheelhouse")
    listing = {}
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        size, _, name = line.strip().partition(" ")
        if size.isdigit():
            listing[name] = int(size)
    return listing


def install_command(remote_dir: str, python: str, wheel_name: str, offline: bool,
                    extras: tuple = ()) -> str:
    """The shell command that installs `<remote_dir>/runner/<wheel_name>` into the device
    venv (from `<remote_dir>/wheelhouse` only when `offline`) and prints `qrun --version`.

    In the remote dir, every path is ours and plain (`./venv`, `./runner/<wheel>`): pip
    reads a requirement's `;` as a marker, so the remote dir's name never reaches pip. The
    runner is run as `venv/bin/python -m qrun`, never through pip's console-script
    trampoline (a #!/bin/sh line that does not quote the venv's path).
    """
    r = release.shell_path(remote_dir)
    venv_py = "./venv/bin/python"
    index = "--no-index --find-links ./wheelhouse" if offline else ""
    spec = f"./runner/{wheel_name}" + (f"[{','.join(extras)}]" if extras else "")
    # A venv whose pip does not run (e.g. an interrupted creation) is made again.
    return (f"cd {r} || exit 1; "
            f"{{ {venv_py} -m pip --version >/dev/null 2>&1 || {{ rm -rf ./venv; "
            f"{shlex.quote(python)} -m venv ./venv || exit {agent.VENV_EXIT}; }}; "
            f"{venv_py} -m pip install --disable-pip-version-check --no-input --no-compile "
            f"--progress-bar off {index} {shlex.quote(spec)} "
            f"|| exit {agent.PIP_EXIT}; }} 1>&2; {venv_py} -m qrun --version")


def ensure_runner(conn: Link, remote_dir: str, python: str = "python3",
                  wheelhouse: Optional[Path] = None, device_version: Optional[str] = None,
                  on_line: Optional[Callable[[str], None]] = None,
                  extras: tuple = ()) -> RunnerResult:
    """Install the host's qrun (with `extras`) into `<remote_dir>/venv` unless the device has
    that version."""
    start = time.perf_counter()
    extras = check_extras(extras)
    want = runner_version(extras=extras)
    if device_version == want:
        return RunnerResult(want, False, time.perf_counter() - start)
    uploads = []
    if wheelhouse is not None:
        wheelhouse = Path(wheelhouse)
        uploads = sorted(wheelhouse.glob("*.whl"))
        if not wheelhouse.is_dir() or not uploads:
            raise UserError(f"--wheelhouse {wheelhouse} holds no .whl files; fill it with "
                            "`pip download -d DIR --platform ... numpy pillow typer "
                            "ai-edge-litert` for the device")
        have = _remote_listing(conn, remote_dir, "wheelhouse")
        uploads = [p for p in uploads if have.get(p.name) != p.stat().st_size]
    with tempfile.TemporaryDirectory(prefix="qdeploy-wheel-") as tmp:
        wheel = build_wheel(Path(tmp), extras)
        if uploads:
            release.put_files(conn, python, remote_dir, "wheelhouse", uploads,
                              "the upload of the runner's wheelhouse")
        release.put_files(conn, python, remote_dir, "runner", [wheel],
                          "the upload of the runner")
    cmd = install_command(remote_dir, python, wheel.name, wheelhouse is not None, extras)
    # Under the device's lock: two pushes to one device must not build venv/ at once.
    result = conn.run(release.locked_command(python, remote_dir, cmd), on_stderr=on_line,
                      timeout=INSTALL_TIMEOUT_S, what="the runner install")
    failure = release.agent_answer(result).get("error")
    if failure == "locked":
        raise release.locked_error(conn, remote_dir, result)
    if failure == "venv":
        raise UserError(f"{conn.name}: cannot create a venv with {python!r} on the device "
                        f"({release.failure_text(result)}); install python3-venv there "
                        "(sudo apt install python3-venv) or pass --python PATH")
    if failure == "pip":
        hint = ("the --wheelhouse lacks a dependency for the device's Python and platform"
                if wheelhouse is not None else
                "connect the device to the internet or pass --wheelhouse DIR with the "
                "dependency wheels for the device")
        raise UserError(f"{conn.name}: pip on the device could not install qrun "
                        f"({release.failure_text(result)}); {hint}")
    got = result.stdout.decode("utf-8", "replace").strip().split()
    if not result.ok or got[-1:] != [qrun.__version__]:
        raise UserError(f"{conn.name}: the installed runner does not answer `qrun --version` "
                        f"with {qrun.__version__} ({release.failure_text(result)}); see the "
                        "output above")
    return RunnerResult(want, True, time.perf_counter() - start)
