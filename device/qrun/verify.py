"""`qrun verify`: the deployment's reference inputs through each variant, outputs as JSON.

`qdeploy convert` stores a few calibration samples in every deployment
(`reference_inputs.npy`, manifest role "reference": uint8 pixels or float model
inputs). This module feeds them, one at a time and exactly as classify would (the
manifest's preprocessing, then the input tensor's quantization), through the CPU
int8 model and, when its delegate loads, the Edge TPU model, and returns the raw
outputs. `qdeploy push --verify` runs the same inputs through the same int8 model
on the host and compares (see qdeploy.push.crosscheck), which catches a device that
computes something else: other preprocessing, another runtime, a bad delegate.

Outputs travel as the output tensor's raw little-endian bytes in base64 (exact,
and compact for large outputs), with dtype, shape, scale and zero point, plus each
sample's top-1 class and dequantized score for a human reader.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import qrun
from qrun import deployment, preprocess, runtime
from qrun.errors import UserError
from qrun.layout import FLOAT, REFERENCE
from qrun.tensors import TensorSpec

SCHEMA_VERSION = 1
KIND = "qrun-verify"
RERUN_CONVERT = "re-run qdeploy convert (it stores reference_inputs.npy) and push again"


def reference_path(dep: deployment.Deployment) -> Path:
    """The deployment's reference inputs file, or a UserError saying how to get one."""
    path = dep.artifact(REFERENCE)
    if path is None:
        where = dep.root or dep.model
        missing = dep.manifest is not None and REFERENCE in dep.manifest.artifacts
        what = "its reference inputs file is missing" if missing else "it has no reference inputs"
        raise UserError(f"cannot verify {where}: {what}; {RERUN_CONVERT}, or pass --inputs FILE.npy")
    return path


def load_reference(path: Path) -> np.ndarray:
    """Read a reference inputs `.npy` ([N, *input shape without batch], N >= 1)."""
    try:
        data = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path} is not a readable .npy array ({exc.__class__.__name__}); "
                        f"{RERUN_CONVERT}") from None
    if not isinstance(data, np.ndarray) or data.ndim < 1 or len(data) == 0:
        raise UserError(f"{path} holds no samples; {RERUN_CONVERT}")
    return data


def model_input(sample: np.ndarray, details: dict, pre: preprocess.Preprocess) -> np.ndarray:
    """One sample as input 0 wants it (batch of one): pixels preprocessed, floats quantized.

    Args:
      sample: uint8 pixels or float model inputs, the input's shape without its batch axis.
      details: the runtime's details dict of the input tensor.
      pre: the deployment's preprocessing.
    Returns:
      An array of the input's dtype and shape.
    """
    spec = TensorSpec.from_details(details)
    if int(np.prod(sample.shape)) != int(np.prod(spec.shape)):
        raise UserError(f"a reference input has shape {list(sample.shape)}, the model wants "
                        f"{spec.shape}; {RERUN_CONVERT}")
    dtype = np.dtype(spec.dtype)
    if sample.dtype == np.uint8:
        data = preprocess.to_input(sample, pre, dtype, spec.scale, spec.zero_point)
    elif np.issubdtype(dtype, np.floating):
        data = sample.astype(dtype)
    else:
        data = preprocess.quantize(sample.astype(np.float32), spec.scale, spec.zero_point, dtype)
    return np.asarray(data).reshape(spec.shape)


def run_outputs(interpreter, samples: np.ndarray, pre: preprocess.Preprocess,
                model_path: Path) -> np.ndarray:
    """Output 0 of every sample, raw (the tensor's dtype), as [N, outputs] flattened."""
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    rows = []
    try:
        for sample in samples:
            interpreter.set_tensor(inp["index"], model_input(sample, inp, pre))
            interpreter.invoke()
            rows.append(interpreter.get_tensor(out["index"]).reshape(-1).copy())
    except (RuntimeError, ValueError) as exc:
        raise UserError(runtime.runtime_error_message(model_path, str(exc))) from None
    return np.stack(rows)


def output_spec(interpreter) -> dict:
    """dtype, shape, scale and zero point of output 0."""
    spec = TensorSpec.from_details(interpreter.get_output_details()[0])
    return {"dtype": spec.dtype, "shape": spec.shape, "scale": spec.scale,
            "zero_point": spec.zero_point}


def encode(raw: np.ndarray) -> str:
    """An array's values as base64 of little-endian bytes."""
    return base64.b64encode(raw.astype(raw.dtype.newbyteorder("<")).tobytes()).decode("ascii")


def decode(text: str, dtype: str, count: int) -> np.ndarray:
    """The inverse of `encode` for `count` values of `dtype`."""
    data = np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))
    if data.size != count:
        raise ValueError(f"expected {count} values, got {data.size}")
    return data.astype(np.dtype(dtype))


def variant_choices(dep: deployment.Deployment, device: str = "auto", tpu: str = "",
                    probe: Optional[Callable] = None) -> tuple[list, list]:
    """The models to verify, and the variants skipped with why.

    `device` "auto": the CPU int8 model, and the Edge TPU model when its delegate loads;
    "cpu": the CPU int8 model only; "edgetpu": the Edge TPU model, or a UserError.
    """
    from qrun.bench import compare_choices

    if device not in deployment.DEVICES:
        raise UserError(f"--device must be one of {', '.join(deployment.DEVICES)}, not '{device}'")
    if device == "cpu":
        return [deployment.choose(dep, "cpu", tpu)], []
    if device == "edgetpu":
        return [deployment.choose(dep, "edgetpu", tpu, probe)], []
    choices, skipped = compare_choices(dep, tpu, probe)
    return [c for c in choices if c.variant != FLOAT], skipped


def verify_choice(choice: deployment.Choice, samples: np.ndarray,
                  pre: preprocess.Preprocess, threads: Optional[int] = None) -> dict:
    """Run `samples` through the model `choice` names; the variant's JSON record."""
    from qrun.manifest import sha256_file

    loaded = deployment.load(choice, threads)
    raw = run_outputs(loaded.interpreter, samples, pre, choice.path)
    spec = output_spec(loaded.interpreter)
    scores = preprocess.dequantize(raw, spec["scale"], spec["zero_point"])
    top1 = [int(np.argmax(row)) for row in scores]
    return {
        "variant": loaded.variant,
        "model": {"path": str(Path(choice.path).resolve()), "sha256": sha256_file(choice.path)},
        "device": {"requested": choice.requested, "used": choice.used, "reason": choice.reason},
        "output": spec,
        "top1": top1,
        "top1_score": [float(scores[i, t]) for i, t in enumerate(top1)],
        "outputs": [encode(row) for row in raw],
    }


def verify(model: Optional[Path] = None, device: str = "auto", tpu: str = "",
           inputs: Optional[Path] = None, threads: Optional[int] = None,
           progress: Callable[[str], None] = lambda _: None) -> dict:
    """`qrun verify`: the reference inputs through every variant that runs here.

    Args:
      model: model file or deployment directory; the current deployment when None.
      device: "auto", "cpu" or "edgetpu" (see `variant_choices`).
      tpu: the Edge TPU device option.
      inputs: a `.npy` of inputs instead of the deployment's reference inputs.
      threads: CPU threads for the interpreter.
      progress: called with one-line status messages.
    Returns:
      {"schema_version": 1, "kind": "qrun-verify", "reference": {...}, "variants": [...],
       "skipped": [...]}; one variant record per model run (see `verify_choice`).
    """
    from qrun.bench import utc_now
    from qrun.manifest import sha256_file

    runtime.check_threads(threads)
    dep = deployment.resolve(model)
    path = Path(inputs) if inputs is not None else reference_path(dep)
    if not path.is_file():
        raise UserError(f"--inputs {path} does not exist; give a .npy file")
    samples = load_reference(path)
    pre = deployment.preprocess_of(dep)
    choices, skipped = variant_choices(dep, device, tpu)
    for s in skipped:
        progress(f"note: skipping {s['variant']}: {s['reason']}")
    if not choices:
        raise UserError(f"{dep.root or dep.model} holds no int8 or Edge TPU model to verify; "
                        "push a deployment with an int8 model")
    variants = []
    for choice in choices:
        progress(f"{len(samples)} reference inputs through {choice.path.name} on {choice.used}")
        variants.append(verify_choice(choice, samples, pre, threads))
    info = runtime.runtime_info()
    return {"schema_version": SCHEMA_VERSION, "kind": KIND, "timestamp": utc_now(),
            "qrun_version": qrun.__version__,
            "runtime": {"name": info.name, "version": info.version},
            "reference": {"path": str(path), "sha256": sha256_file(path),
                          "samples": int(len(samples))},
            "preprocess": pre.to_dict(), "variants": variants, "skipped": skipped}


def summary(document: dict) -> str:
    """One line per variant: top-1 of each reference input (what `qrun verify` prints)."""
    lines = []
    for v in document["variants"]:
        tops = " ".join(str(t) for t in v["top1"])
        lines.append(f"{v['variant']} on {v['device']['used']}: top-1 {tops}")
    for s in document.get("skipped", []):
        lines.append(f"{s['variant']}: skipped ({s['reason']})")
    return "\n".join(lines)


def stderr_progress(message: str) -> None:
    """Print a progress line on stderr (stdout stays for the JSON)."""
    import sys

    print(f"qrun verify: {message}", file=sys.stderr, flush=True)
