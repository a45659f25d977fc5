"""Probe the Edge TPU delegate in a short-lived subprocess before loading it for real.

A libedgetpu built against another TensorFlow version can segfault the process
that loads it (google-coral/edgetpu issue 812), so `probe_delegate` runs
``python -m qrun.model.delegate_probe`` to load the library, create the delegate and, given a
model, allocate and invoke it once. The child prints one JSON line; the parent
turns it, or the child's death by a signal, into a `DelegateProbe` whose `reason` is one
line for the user (library missing, no device found, runtime too old, crashed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PROBE_TIMEOUT_S = 30.0
# DelegateProbe.kind values, worst news last.
KINDS = ("ok", "missing", "load-failed", "not-delegate", "no-device", "runtime-too-old",
         "model-failed", "crashed", "timeout", "error")


@dataclass(frozen=True)
class DelegateProbe:
    """What loading the delegate in a subprocess showed: ok, a failure `kind`, a one-line reason."""

    ok: bool
    kind: str
    reason: str
    library: str
    device: str = ""


def probe_delegate(library: str, device: str = "", model: Optional[Path] = None,
                   timeout: float = PROBE_TIMEOUT_S) -> DelegateProbe:
    """Load the delegate (and run `model` once on it) in a subprocess; never crashes this one.

    Args:
      library: delegate library name or path (see qrun.model.runtime.edgetpu_library).
      device: Edge TPU device option ("", "usb", "pci:0", ...).
      model: an Edge TPU model to allocate and invoke with the delegate, or None.
      timeout: seconds before the probe counts as hung.
    Returns:
      A DelegateProbe; `ok` True only when everything asked for worked in the child.
    """
    cmd = [sys.executable, "-m", "qrun.model.delegate_probe", library, device]
    if model is not None:
        cmd.append(str(model))
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return DelegateProbe(False, "timeout", f"loading {library} did not finish within "
                             f"{timeout:g} s (a USB Edge TPU may be busy or stuck; re-plug it)",
                             library, device)
    return read_outcome(done.returncode, done.stdout, done.stderr, library, device)


def read_outcome(returncode: int, stdout: str, stderr: str, library: str,
                 device: str = "") -> DelegateProbe:
    """Turn the probe child's exit status and output into a DelegateProbe (pure)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return DelegateProbe(False, "crashed", f"loading {library} crashed the probe ({name}); "
                             "it likely does not match the TFLite runtime (use a libedgetpu "
                             "built for it)", library, device)
    for line in reversed(stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("kind") in KINDS:
            return DelegateProbe(data["kind"] == "ok", data["kind"],
                                 str(data.get("reason", "")), library, device)
    last = (stderr.strip().splitlines() or ["no output"])[-1]
    return DelegateProbe(False, "error", f"the Edge TPU probe failed (exit {returncode}: "
                         f"{last[:200]})", library, device)


def failure(kind: str, library: str, message: str) -> str:
    """The one-line reason for a failure `kind` seen in the child."""
    short = " ".join(message.split())[:240]
    reasons = {
        "missing": f"{library} not found (install the Edge TPU runtime, libedgetpu1-std)",
        "load-failed": f"{library} could not be loaded ({short})",
        "not-delegate": f"{library} is not a TFLite delegate library ({short})",
        "no-device": f"{library} loaded but no Edge TPU was found ({short or 'plug one in'})",
        "runtime-too-old": f"the Edge TPU runtime is too old for this model ({short})",
        "model-failed": f"the model failed on the Edge TPU ({short})",
    }
    return reasons.get(kind, short)


def _child(library: str, device: str, model: Optional[str]) -> dict:
    """Run in the probe subprocess: load, create, optionally allocate and invoke."""
    import ctypes

    try:  # first the bare library, so a missing one costs no runtime import
        ctypes.CDLL(library).tflite_plugin_create_delegate  # noqa: B018 - a lookup is the test
    except OSError as exc:
        text = str(exc)
        missing = "cannot open shared object" in text or "not found" in text.lower() \
            or "No such file" in text or "image not found" in text
        own = Path(library).name in text or library in text
        kind = "missing" if missing and own else "load-failed"
        return {"kind": kind, "reason": failure(kind, library, text)}
    except AttributeError as exc:
        return {"kind": "not-delegate", "reason": failure("not-delegate", library, str(exc))}

    from qrun.model import runtime

    module = runtime.interpreter_module()
    try:
        delegate = module.load_delegate(library, runtime.delegate_options(device))
    except ValueError as exc:
        lines = str(exc).splitlines()
        return {"kind": "no-device", "reason": failure("no-device", library, " ".join(lines[1:]))}
    if model is None:
        return {"kind": "ok", "reason": f"{library} loaded"}
    try:
        interpreter = module.Interpreter(model_path=model, experimental_delegates=[delegate])
        interpreter.allocate_tensors()
        interpreter.invoke()
    except (ValueError, RuntimeError) as exc:
        text = str(exc)
        kind = "runtime-too-old" if "requires runtime version" in text else "model-failed"
        return {"kind": kind, "reason": failure(kind, library, text)}
    return {"kind": "ok", "reason": f"{library} loaded and ran {Path(model).name}"}


def main(argv: list[str]) -> int:
    """``python -m qrun.model.delegate_probe LIBRARY DEVICE [MODEL]``: print one JSON line."""
    library, device = argv[0], argv[1] if len(argv) > 1 else ""
    model = argv[2] if len(argv) > 2 else None
    try:
        result = _child(library, device, model)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, never raised
        result = {"kind": "error", "reason": f"{exc.__class__.__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
