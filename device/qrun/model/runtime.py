"""Which TFLite runtime is installed, the Edge TPU delegate, and interpreters made with them.

`ai_edge_litert` (LiteRT) is preferred; `tflite_runtime` is the fallback for Pi
images that pin it. Neither is imported until an interpreter is needed. The
Edge TPU delegate is a shared library named per platform (`EDGETPU_LIBRARIES`);
`QRUN_EDGETPU_LIBRARY` overrides the name, e.g. for a library outside the loader
path. Load it in-process only after `qrun.model.delegate_probe` loaded it in a subprocess:
a libedgetpu built against another TensorFlow can segfault the process.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qrun.errors import UserError

RUNTIME_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
RUNTIME_PACKAGES = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}

# Delegate library per platform.system(), as in pycoral.utils.edgetpu.
EDGETPU_LIBRARIES = {
    "Linux": "libedgetpu.so.1",
    "Darwin": "libedgetpu.1.dylib",
    "Windows": "edgetpu.dll",
}
LIBRARY_ENV = "QRUN_EDGETPU_LIBRARY"
EDGETPU_CUSTOM_OP = b"edgetpu-custom-op"
# "" (first found), ":N", "usb", "usb:N", "pci", "pci:N".
DEVICE_PATTERN = re.compile(r"^(|:\d+|usb|usb:\d+|pci|pci:\d+)$")


@dataclass(frozen=True)
class RuntimeInfo:
    """The TFLite runtime in use: module name ("ai_edge_litert" or "tflite_runtime") and version."""

    name: str
    version: str


def interpreter_module():
    """The first importable runtime module, or a UserError naming what to install."""
    import importlib

    for name in RUNTIME_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise UserError("no TFLite runtime is installed; install one with: pip install ai-edge-litert")


def runtime_info() -> RuntimeInfo:
    """Name and version of the runtime `interpreter_module` picks."""
    import sys

    module = interpreter_module()
    name = module.__name__.split(".")[0]
    version = getattr(sys.modules.get(name), "__version__", None)
    if not version:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version(RUNTIME_PACKAGES.get(name, name))
        except Exception:  # noqa: BLE001 - a version is informative only
            version = "unknown"
    return RuntimeInfo(name=name, version=str(version))


def edgetpu_library(system: Optional[str] = None) -> str:
    """The delegate library to load: `QRUN_EDGETPU_LIBRARY`, else this platform's name.

    Args:
      system: a `platform.system()` value; the running one when None.
    Returns:
      A library name for the dynamic loader, or a path.
    """
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return override
    if system is None:
        import platform

        system = platform.system()
    try:
        return EDGETPU_LIBRARIES[system]
    except KeyError:
        raise UserError(f"the Edge TPU runtime has no build for {system}; use --device cpu") \
            from None


def check_device(device: str) -> str:
    """Validate an Edge TPU `device` option: "", ":N", "usb", "usb:N", "pci" or "pci:N"."""
    device = (device or "").strip()
    if not DEVICE_PATTERN.match(device):
        raise UserError(f"--tpu '{device}' is not an Edge TPU name; use usb, usb:N, pci, pci:N "
                        "or :N (N counts from 0)")
    return device


def check_threads(threads: Optional[int]) -> Optional[int]:
    """Validate `--threads`: None (the runtime's choice) or at least 1."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}; leave it out for the "
                        "runtime's default")
    return threads


def delegate_options(device: str = "") -> dict:
    """Options for `load_delegate`: {"device": device}, or none for the first TPU found."""
    return {"device": device} if device else {}


def load_edgetpu_delegate(device: str = "", library: Optional[str] = None):
    """Load the Edge TPU delegate in this process (probe it first: see qrun.model.delegate_probe).

    Args:
      device: "", ":N", "usb", "usb:N", "pci" or "pci:N".
      library: the delegate library; `edgetpu_library()` when None.
    Returns:
      The runtime's Delegate object, to pass to `make_interpreter(delegates=[...])`.
    """
    module = interpreter_module()
    library = library or edgetpu_library()
    try:
        return module.load_delegate(library, delegate_options(check_device(device)))
    except (ValueError, OSError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise UserError(f"the Edge TPU delegate did not load from {library} ({first}); "
                        "run qrun info, or use --device cpu") from None


def is_edgetpu_model(model_path: Path) -> bool:
    """True when the model file holds the `edgetpu-custom-op` (compiled by edgetpu_compiler)."""
    try:
        stat = os.stat(model_path)
    except OSError:
        return False
    return _holds_custom_op(os.path.realpath(model_path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _holds_custom_op(path: str, size: int, mtime_ns: int) -> bool:
    """Search the file once per (path, size, mtime); mapped, not read, so big models stay cheap."""
    import mmap

    if size == 0:
        return False
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(EDGETPU_CUSTOM_OP) >= 0
    except (OSError, ValueError):
        return False


def make_interpreter(model_path: Path, num_threads: Optional[int] = None,
                     delegates: Optional[Sequence] = None):
    """An interpreter for `model_path`, tensors allocated; on the CPU unless `delegates` given.

    Args:
      model_path: a .tflite file.
      num_threads: CPU threads; the runtime's default when None.
      delegates: loaded delegates (e.g. `[load_edgetpu_delegate()]`).
    Returns:
      The runtime's Interpreter. A file that is not a loadable model, or an Edge TPU
      model without the delegate, raises UserError.
    """
    check_threads(num_threads)
    module = interpreter_module()
    model_path = Path(model_path)
    if not model_path.is_file():
        raise UserError(f"model not found: {model_path}")
    try:
        with announcements_dropped():
            interpreter = module.Interpreter(model_path=str(model_path),
                                             num_threads=num_threads,
                                             experimental_delegates=list(delegates or [])
                                             or None)
            interpreter.allocate_tensors()
    except ValueError as exc:
        raise UserError(f"{model_path} cannot be loaded as a TFLite model: "
                        f"{str(exc).splitlines()[0]}; check the file is complete "
                        "(re-copy or re-convert it)") from None
    except RuntimeError as exc:
        raise UserError(runtime_error_message(model_path, str(exc))) from None
    return interpreter


# What the runtime's C++ logger prints on file descriptor 2 when all is well: dropped.
ANNOUNCEMENTS = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


SHOW_RUNTIME_LOG = False  # `qrun --verbose`: announcements_dropped drops nothing


def show_runtime_log(show: bool = True) -> None:
    """Let the runtime's own log lines (ANNOUNCEMENTS too) reach fd 2 as it writes them."""
    global SHOW_RUNTIME_LOG
    SHOW_RUNTIME_LOG = show


@contextlib.contextmanager
def announcements_dropped():
    """Run the block with fd 2 captured, then write back every line but ANNOUNCEMENTS.

    The runtime announces its CPU delegate from C++ (Python-level redirection does not
    see it) on every first interpreter, which put an `INFO:` line into every command's
    output; its warnings and errors still reach stderr, after the block. After
    `show_runtime_log()` (qrun --verbose) the block runs untouched.
    """
    if SHOW_RUNTIME_LOG:
        yield
        return
    with fd2_filtered(lambda line: line.rstrip(b"\r\n") not in ANNOUNCEMENTS):
        yield


@contextlib.contextmanager
def fd2_filtered(keep):
    """Point file descriptor 2 at a scratch file for the block (C++ code writes there, which
    Python-level redirection does not see), then write back the lines `keep(line)` accepts."""
    import tempfile  # lazy: `qrun --help` does not make interpreters

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().splitlines(keepends=True) if keep(line)]
            if kept:
                os.write(2, b"".join(kept))


def runtime_error_message(model_path: Path, text: str) -> str:
    """One line for a RuntimeError the runtime raised while preparing or running a model."""
    first = " ".join(text.split())
    if "edgetpu-custom-op" in text:
        return (f"{model_path} is compiled for the Edge TPU and needs the delegate "
                "(libedgetpu); run it with --device auto so qrun can fall back to its CPU "
                "twin, or give the int8 model")
    custom = re.search(r"unresolved custom op: ([\w.-]+)", text)
    if custom:
        return (f"{model_path} uses the custom op '{custom.group(1).rstrip('.')}', which this runtime "
                "does not provide; convert the model with builtin ops only")
    if "requires runtime version" in text:
        return (f"{model_path} needs a newer Edge TPU runtime ({first}); upgrade libedgetpu "
                "or recompile with edgetpu_compiler -m <version>")
    return f"{model_path} failed in the TFLite runtime: {first[:300]}"
