"""`qdeploy push --verify`: does the device compute what the host computes?

The device runs the deployment's reference inputs through its models (`qrun verify
--json -`, see qrun.verify); the host runs the same inputs through the same int8
model with the same runtime code (`qrun.runtime.make_interpreter`, the manifest's
preprocessing; `host_side` gathers them) and `compare_outputs`, per variant: top-1
agreement and the largest difference of dequantized outputs, also counted in output
quantization steps.

A variant fails when its largest difference exceeds the tolerance (`DEFAULT_STEPS`
output steps), or when a top-1 class differs on a sample where the host's top-1
leads the device's by more than the tolerance (a closer flip is a near-tie: counted,
reported, not a failure). Different CPU kernels differ by a few steps
(x86 XNNPACK vs TFLite's reference kernels: up to 5 on Coral's MobileNets; arm64
vs x86: about 8 on the iNat birds model's top score); mismatched preprocessing or
a wrong model moves outputs by tens to hundreds of steps and flips classes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qrun import deployment
from qrun import manifest as qmanifest
from qrun import verify as device_verify
from qrun.errors import UserError
from qrun.preprocess import Preprocess, dequantize

DEFAULT_STEPS = 16.0  # output quantization steps: 16/256 = 0.0625 of a uint8 softmax's range
FLOAT_STEP = 1.0 / 256  # the "step" of an output that is not quantized
KIND = device_verify.KIND


@dataclass
class Comparison:
    """One variant on the device against the host's int8 model, on the reference inputs."""

    variant: str
    device_used: str
    model_sha256: str
    samples: int
    agree: int  # samples whose top-1 is the same
    near_ties: int  # top-1 flips between classes the host scores within the tolerance
    max_abs_diff: float  # largest |device - host| of dequantized outputs
    max_steps: float  # the same in output quantization steps
    worst_sample: int  # index of the sample holding max_abs_diff
    tolerance_steps: float
    ok: bool

    @property
    def agreement(self) -> float:
        return self.agree / self.samples if self.samples else 0.0

    def text(self) -> str:
        """One line: `int8 on cpu: top-1 8/8, max |Δ| 0.0039 (1 step, sample 3)`."""
        steps = "step" if self.max_steps == 1 else "steps"
        ties = f" ({self.near_ties} near-tie)" if self.near_ties else ""
        return (f"{self.variant} on {self.device_used}: top-1 {self.agree}/{self.samples}{ties}, "
                f"max |Δ| {self.max_abs_diff:.4g} ({self.max_steps:g} {steps}, "
                f"sample {self.worst_sample})")

    def to_dict(self) -> dict:
        return {**asdict(self), "agreement": self.agreement}


@dataclass
class VerifyResult:
    """All variants verified on one target, what was skipped, and the device's document."""

    comparisons: list = field(default_factory=list)  # Comparison
    skipped: list = field(default_factory=list)  # {"variant", "reason"}
    timestamp: str = ""
    reference_sha256: str = ""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)

    def failure(self, tolerance_steps: float) -> Optional[str]:
        """The line a failed verify prints, or None when every variant passed."""
        bad = [c for c in self.comparisons if not c.ok]
        if not bad:
            return None
        return ("the device's outputs differ from the host's: " + "; ".join(
            c.text() for c in bad) + f" (tolerance {tolerance_steps:g} steps)")


def compare_outputs(host: np.ndarray, device: np.ndarray, step: float,
                    tolerance_steps: float = DEFAULT_STEPS, variant: str = qmanifest.INT8,
                    device_used: str = "cpu", model_sha256: str = "") -> Comparison:
    """Compare dequantized outputs, [samples, outputs] each, of the host and the device.

    Args:
      host, device: dequantized outputs, one row per reference input.
      step: the output's quantization scale (one step in output units).
      tolerance_steps: largest difference allowed, in steps.
    Returns:
      A Comparison; `ok` as the module docstring says.
    """
    host = np.asarray(host, dtype=np.float64)
    device = np.asarray(device, dtype=np.float64)
    if host.shape != device.shape or host.ndim != 2 or host.shape[0] == 0:
        raise UserError(f"the device returned outputs of shape {list(device.shape)}, the host "
                        f"computed {list(host.shape)}: the device runs another model; push again")
    step = float(step) if step and step > 0 else FLOAT_STEP
    diff = np.abs(device - host)
    per_sample = diff.max(axis=1)
    worst = int(np.argmax(per_sample))
    max_abs = float(per_sample[worst])
    host_top = np.argmax(host, axis=1)
    device_top = np.argmax(device, axis=1)
    rows = np.arange(len(host))
    margin = host[rows, host_top] - host[rows, device_top]  # >= 0; 0 where the top-1 agrees
    flips = host_top != device_top
    ties = flips & (margin <= tolerance_steps * step + 1e-12)
    max_steps = round(max_abs / step, 3)
    ok = bool(max_steps <= tolerance_steps and not np.any(flips & ~ties))
    return Comparison(variant=variant, device_used=device_used, model_sha256=model_sha256,
                      samples=int(len(host)), agree=int(np.sum(~flips)),
                      near_ties=int(np.sum(ties)), max_abs_diff=max_abs, max_steps=max_steps,
                      worst_sample=worst, tolerance_steps=float(tolerance_steps), ok=ok)


def reference_file(directory: Path, manifest: qmanifest.Manifest) -> Optional[Path]:
    """The deployment's reference inputs, if its manifest lists them and the file is there."""
    path = manifest.path_of(Path(directory), qmanifest.REFERENCE)
    return path if path is not None and path.is_file() else None


def host_outputs(model: Path, samples: np.ndarray, pre: Preprocess) -> tuple[np.ndarray, float]:
    """Dequantized outputs of `model` on the host for `samples`, and the output's scale."""
    from qrun.runtime import make_interpreter

    interpreter = make_interpreter(model)
    raw = device_verify.run_outputs(interpreter, samples, pre, Path(model))
    spec = device_verify.output_spec(interpreter)
    return dequantize(raw, spec["scale"], spec["zero_point"]), spec["scale"]


def device_outputs(record: dict) -> np.ndarray:
    """Dequantized outputs of one variant record of a `qrun verify` document."""
    spec = record["output"]
    count = int(np.prod(spec["shape"]))
    try:
        rows = [device_verify.decode(text, spec["dtype"], count) for text in record["outputs"]]
    except (ValueError, TypeError) as exc:
        raise UserError(f"qrun verify sent outputs that cannot be read ({exc}); "
                        "check `qrun verify` on the device") from None
    return dequantize(np.stack(rows), spec["scale"], spec["zero_point"])


def int8_model(directory: Path, manifest: qmanifest.Manifest) -> Path:
    """The deployment's int8 model, which the host runs; a UserError when it has none."""
    model = deployment.int8_model(Path(directory), manifest)
    if model is None:
        raise UserError(f"{directory} has no int8 model for the host to compare with; "
                        "re-run qdeploy convert")
    return model


@dataclass
class HostSide:
    """What the host compares the device with: reference inputs, int8 model, preprocessing."""

    samples: np.ndarray
    reference_sha256: str
    model: Path
    preprocess: Preprocess


def host_side(directory: Path, manifest: qmanifest.Manifest, against: Optional[Path] = None,
              required: bool = False) -> Optional[HostSide]:
    """The host's half of verify for the deployment in `directory`, or None when it has no
    reference inputs.

    `required` (`--verify` given explicitly) makes missing reference inputs an error. With
    `against`, the host runs that deployment's int8 model and preprocessing on the pushed
    deployment's reference inputs.
    """
    reference = reference_file(directory, manifest)
    if reference is None:
        if required:
            raise UserError(f"--verify: {directory} has no reference inputs "
                            f"(reference_inputs.npy); {device_verify.RERUN_CONVERT}")
        return None
    source_dir, source = Path(directory), manifest
    if against is not None:
        source_dir = Path(against)
        source = qmanifest.load(source_dir)
    return HostSide(samples=device_verify.load_reference(reference),
                    reference_sha256=manifest.artifacts[qmanifest.REFERENCE].sha256,
                    model=int8_model(source_dir, source), preprocess=source.preprocess)


def check(document: dict, samples: np.ndarray, model: Path, pre: Preprocess,
          tolerance_steps: float = DEFAULT_STEPS,
          reference_sha256: Optional[str] = None) -> VerifyResult:
    """Compare a device's `qrun verify` document with the host's run of `model`.

    Args:
      document: what `qrun verify --json -` printed on the device.
      samples: the reference inputs the device used (the host's copy).
      model, pre: the host's int8 model and the preprocessing to feed it with.
      tolerance_steps: see `compare_outputs`.
      reference_sha256: when given, the device must have used inputs with this sha256.
    """
    if not isinstance(document, dict) or document.get("kind") != KIND:
        raise UserError("qrun verify printed JSON that is not a qrun-verify document")
    used = str((document.get("reference") or {}).get("sha256") or "")
    if reference_sha256 is not None and used != reference_sha256:
        raise UserError(f"the device verified with other reference inputs (sha256 {used[:12]}, "
                        f"the deployment's are {reference_sha256[:12]}); push again")
    expected, step = host_outputs(model, samples, pre)
    result = VerifyResult(skipped=list(document.get("skipped") or []),
                          timestamp=str(document.get("timestamp") or ""),
                          reference_sha256=used)
    for record in document.get("variants") or []:
        result.comparisons.append(compare_outputs(
            expected, device_outputs(record), step, tolerance_steps,
            variant=record["variant"], device_used=record["device"]["used"],
            model_sha256=record["model"]["sha256"]))
    return result


def run_on_device(conn, runner: str, home: str, timeout: float,
                  on_line: Callable[[str], None]) -> dict:
    """Run `qrun verify --json -` against the device's current release; the parsed document."""
    cmd = f"QDEPLOY_HOME={home} {runner} verify --json -"
    result = conn.run(cmd, on_stderr=on_line, timeout=timeout)
    if not result.ok:
        line = result.last_error_line()
        if "No such command" in line:
            raise UserError(f"{conn.name}: the device's qrun has no verify command (an older "
                            "runner of the same version); remove ~/qdeploy/venv on the device "
                            "so the push reinstalls it, or pass --no-verify")
        raise UserError(f"{conn.name}: qrun verify failed on the device ({line})")
    try:
        document = json.loads(result.stdout)
    except ValueError:
        raise UserError(f"{conn.name}: qrun verify printed no JSON ({result.stdout[:120]!r}); "
                        "check `qrun verify` on the device") from None
    return document
