"""`qrun verify`: the deployment's reference inputs through each variant, outputs as JSON.

`qdeploy convert` and `qdeploy import` store reference inputs in every deployment
(manifest role "reference", read by qrun.measure.reference: an .npy of uint8 pixels or float
model inputs for a single-input model, an .npz of raw values, one array per input).
This module feeds them, one sample at a time and exactly as classify would (an .npy
through the manifest's preprocessing, then the input tensor's quantization; an .npz
as it is), through the CPU int8 model and, when its delegate loads, the Edge TPU
model, and returns every output. `qdeploy push --verify` runs the same inputs through
the same int8 model on the host and compares (see qdeploy.push.crosscheck), which
catches a device that computes something else: other preprocessing, another runtime,
a bad delegate.

Each output travels, in the interpreter's order, as its raw little-endian bytes in
base64 (exact, and compact for large outputs), with name, tensor index, dtype, shape,
scale and zero point; a score vector (the output the manifest's task names as
scores, see `scored_outputs`) also carries each sample's top-1 class and
dequantized score for a human reader.

A model whose task qrun decodes (detect, segment, pose) is also read in the task's terms
(qrun.measure.agreement): each variant record says what it found (`task_outputs`:
detections per sample, or the classes of the class maps), and when the Edge TPU model ran
beside the CPU int8 model its record compares the two (`agreement`: detections matched,
pixel agreement, keypoint distance), as `qdeploy push --verify` compares the device with
the host.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import qrun
from qrun.model import deployment, preprocess, runtime
from qrun.measure import reference
from qrun.errors import UserError
from qrun.model.layout import FLOAT, REFERENCE
from qrun.model.tensors import TensorSpec

SCHEMA_VERSION = 2  # 2: every input fed and every output recorded ("outputs" per variant)
KIND = "qrun-verify"
RERUN_CONVERT = "re-run qdeploy convert (it stores reference_inputs.npy) and push again"


def reference_path(dep: deployment.Deployment) -> Path:
    """The deployment's reference inputs file, or a UserError saying how to get one."""
    path = dep.artifact(REFERENCE)
    if path is None:
        where = dep.root or dep.model
        missing = dep.manifest is not None and REFERENCE in dep.manifest.artifacts
        what = "its reference inputs file is missing" if missing else "it has no reference inputs"
        raise UserError(f"cannot verify {where}: {what}; {RERUN_CONVERT}, or pass --inputs "
                        "FILE (.npy or .npz)")
    return path


def load_reference(path: Path) -> reference.Reference:
    """Read a reference inputs file, .npy or .npz (see qrun.measure.reference)."""
    return reference.load(path)


def as_reference(samples) -> reference.Reference:
    """A Reference, given one or an array of samples of input 0 (the .npy form)."""
    if isinstance(samples, reference.Reference):
        return samples
    return reference.Reference([np.asarray(samples)], raw=False)


def model_input(sample: np.ndarray, details: dict, pre: preprocess.Preprocess) -> np.ndarray:
    """One .npy sample as input 0 wants it (batch of one): pixels preprocessed, floats quantized.

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


def feed(interpreter, inputs: list, sample: list, raw: bool,
         pre: preprocess.Preprocess) -> None:
    """Set every input tensor to one sample: `sample[i]` for input i (`inputs`: details)."""
    for details, value in zip(inputs, sample):
        data = (np.asarray(value).reshape(details["shape"]) if raw
                else model_input(value, details, pre))
        interpreter.set_tensor(details["index"], data)


def run_samples(interpreter, samples, pre: preprocess.Preprocess,
                model_path: Path) -> list:
    """Every output of every sample, raw: one [N, values] array per output, in order.

    `samples` is a qrun.measure.reference.Reference (or an array of input-0 samples); a
    UserError when it does not fit the model's inputs.
    """
    ref = as_reference(samples)
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    reference.check(ref, [TensorSpec.from_details(d) for d in inputs])
    rows: list = [[] for _ in outputs]
    try:
        for n in range(ref.count):
            feed(interpreter, inputs, ref.sample(n), ref.raw, pre)
            interpreter.invoke()
            for row, details in zip(rows, outputs):
                row.append(interpreter.get_tensor(details["index"]).reshape(-1).copy())
    except (RuntimeError, ValueError) as exc:
        raise UserError(runtime.runtime_error_message(model_path, str(exc))) from None
    return [np.stack(row) for row in rows]


def output_specs(interpreter) -> list:
    """The TensorSpec of every output, in the interpreter's order."""
    return [TensorSpec.from_details(d) for d in interpreter.get_output_details()]


def is_score_vector(spec: TensorSpec) -> bool:
    """[1, N] with N > 1: one score per class."""
    return len(spec.shape) == 2 and spec.shape[0] == 1 and spec.shape[1] > 1


def scored_outputs(specs: list, task=None) -> list:
    """Positions of the outputs whose top-1 verify reports and push compares.

    With a task naming a scores output: that output, when the task classifies and the
    output is a score vector (a detector's scores are per box, not per class). A task
    without one: none, unless it is "raw" or a classifier; then, as without a
    manifest, every score vector.
    """
    from qrun.model.manifest import CLASSIFY, RAW, SCORES

    if task is not None and task.output(SCORES) is not None:
        position = task.output(SCORES)
        fits = task.kind == CLASSIFY and position < len(specs)
        return [position] if fits and is_score_vector(specs[position]) else []
    if task is not None and task.kind not in (CLASSIFY, RAW):
        return []
    return [i for i, spec in enumerate(specs) if is_score_vector(spec)]


def output_record(spec: TensorSpec, raw: np.ndarray, scored: bool) -> dict:
    """One output of a variant record: the tensor's spec, its raw values per sample, and
    for a score vector the top-1 class and score of each sample."""
    record = {"name": spec.name, "index": spec.index, "dtype": spec.dtype,
              "shape": spec.shape, "scale": spec.scale, "zero_point": spec.zero_point,
              "values": [encode(row) for row in raw]}
    if scored:
        scores = preprocess.dequantize(raw, spec.scale, spec.zero_point)
        top1 = [int(np.argmax(row)) for row in scores]
        record["top1"] = top1
        record["top1_score"] = [float(scores[i, t]) for i, t in enumerate(top1)]
    return record


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
    from qrun.measure.bench import compare_choices

    if device not in deployment.DEVICES:
        raise UserError(f"--device must be one of {', '.join(deployment.DEVICES)}, not '{device}'")
    if device == "cpu":
        return [deployment.choose(dep, "cpu", tpu)], []
    if device == "edgetpu":
        return [deployment.choose(dep, "edgetpu", tpu, probe)], []
    choices, skipped = compare_choices(dep, tpu, probe)
    return [c for c in choices if c.variant != FLOAT], skipped


def verify_choice(choice: deployment.Choice, samples, pre: preprocess.Preprocess,
                  threads: Optional[int] = None, task=None) -> dict:
    """Run `samples` (a Reference) through the model `choice` names; the variant's record.

    `task` is the manifest's (None without one): it says which outputs get a top-1.
    """
    from qrun.model.manifest import sha256_file

    loaded = deployment.load(choice, threads)
    raw = run_samples(loaded.interpreter, samples, pre, choice.path)
    specs = output_specs(loaded.interpreter)
    scored = scored_outputs(specs, task)
    return {
        "variant": loaded.variant,
        "model": {"path": str(Path(choice.path).resolve()), "sha256": sha256_file(choice.path)},
        "device": {"requested": choice.requested, "used": choice.used, "reason": choice.reason},
        "outputs": [output_record(spec, values, i in scored)
                    for i, (spec, values) in enumerate(zip(specs, raw))],
    }


def decoded(record: dict, task, input_size: tuple):
    """What a variant record's outputs say in the task's terms (agreement.decode), or None."""
    from qrun.measure import agreement

    values = []
    for out in record["outputs"]:
        count = int(np.prod(out["shape"]))
        raw = np.stack([decode(text, out["dtype"], count) for text in out["values"]])
        values.append(preprocess.dequantize(raw, out["scale"], out["zero_point"]))
    return agreement.decode(task, [out["shape"] for out in record["outputs"]], values,
                            input_size)


def task_outputs(found) -> dict:
    """A variant's decoded outputs, short: detections per sample, classes per class map,
    or keypoints per sample."""
    if isinstance(found, list):
        return {"detections": [len(d) for d in found],
                "classes": [sorted({int(i) for i in d.ids}) for d in found]}
    if found.ndim == 1:
        return {"top1": [int(t) for t in found]}
    if found.ndim == 3 and found.shape[-1] == 3 and found.dtype.kind == "f":
        return {"keypoints": int(found.shape[1])}
    return {"classes": [sorted(int(c) for c in np.unique(m)) for m in found]}


def in_task_terms(variants: list, task, input_size: Optional[tuple]) -> None:
    """Add `task_outputs` to each variant record, and to every variant after the first
    an `agreement` with the first (the CPU int8 model), for a task qrun decodes."""
    from qrun.measure import agreement
    from qrun.model.manifest import CLASSIFY

    if task is None or task.kind == CLASSIFY or input_size is None:
        return
    found = [decoded(v, task, input_size) for v in variants]
    if any(f is None for f in found):
        return
    for v, f in zip(variants, found):
        v["task_outputs"] = task_outputs(f)
    for v, f in zip(variants[1:], found[1:]):
        v["agreement"] = {**agreement.compare(task, found[0], f, every_sample=True).to_dict(),
                          "against": variants[0]["variant"]}


def verify(model: Optional[Path] = None, device: str = "auto", tpu: str = "",
           inputs: Optional[Path] = None, threads: Optional[int] = None,
           progress: Callable[[str], None] = lambda _: None) -> dict:
    """`qrun verify`: the reference inputs through every variant that runs here.

    Args:
      model: model file or deployment directory; the current deployment when None.
      device: "auto", "cpu" or "edgetpu" (see `variant_choices`).
      tpu: the Edge TPU device option.
      inputs: a `.npy` or `.npz` of inputs instead of the deployment's reference inputs.
      threads: CPU threads for the interpreter.
      progress: called with one-line status messages.
    Returns:
      {"schema_version": 2, "kind": "qrun-verify", "reference": {...}, "variants": [...],
       "skipped": [...]}; one variant record per model run (see `verify_choice`), each
      with every output (see `output_record`).
    """
    from qrun.measure.bench import utc_now
    from qrun.model.manifest import sha256_file

    runtime.check_threads(threads)
    dep = deployment.resolve(model)
    path = Path(inputs) if inputs is not None else reference_path(dep)
    if not path.is_file():
        raise UserError(f"--inputs {path} does not exist; give a .npy or .npz file")
    samples = load_reference(path)
    task = dep.manifest.task if dep.manifest is not None else None
    pre = deployment.preprocess_of(dep)
    choices, skipped = variant_choices(dep, device, tpu)
    for s in skipped:
        progress(f"note: skipping {s['variant']}: {s['reason']}")
    if not choices:
        raise UserError(f"{dep.root or dep.model} holds no int8 or Edge TPU model to verify; "
                        "push a deployment with an int8 model")
    variants = []
    for choice in choices:
        progress(f"{samples.count} reference inputs through {choice.path.name} on {choice.used}")
        variants.append(verify_choice(choice, samples, pre, threads, task))
    in_task_terms(variants, task, image_size(dep))
    info = runtime.runtime_info()
    return {"schema_version": SCHEMA_VERSION, "kind": KIND, "timestamp": utc_now(),
            "qrun_version": qrun.__version__,
            "runtime": {"name": info.name, "version": info.version},
            "reference": {"path": str(path), "sha256": sha256_file(path),
                          "samples": samples.count, "inputs": len(samples.arrays),
                          "form": "npz" if samples.raw else "npy"},
            "preprocess": pre.to_dict(), "variants": variants, "skipped": skipped}


def image_size(dep: deployment.Deployment) -> Optional[tuple]:
    """The (w, h) of the manifest's first input when it is an image [1, H, W, C]."""
    if dep.manifest is None:
        return None
    shape = dep.manifest.inputs[0].shape
    return (shape[2], shape[1]) if len(shape) == 4 else None


def summary(document: dict) -> str:
    """What `qrun verify` prints: per variant the top-1 of each reference input where an
    output is a score vector, and for a model with several outputs (or no score vector)
    the outputs compared."""
    lines = []
    samples = (document.get("reference") or {}).get("samples")
    for v in document["variants"]:
        head = f"{v['variant']} on {v['device']['used']}"
        outputs = v["outputs"]
        several = len(outputs) > 1
        for i, out in enumerate(outputs):
            if "top1" in out:
                tops = " ".join(str(t) for t in out["top1"])
                lines.append(f"{head}: top-1 {tops}" + (f" (output {i} '{out['name']}')"
                                                         if several else ""))
        found = v.get("task_outputs") or {}
        if "detections" in found:
            lines.append(f"{head}: detections per sample "
                         + " ".join(str(n) for n in found["detections"]))
        elif "classes" in found:
            lines.append(f"{head}: classes per sample " + " ".join(
                ",".join(map(str, c)) or "-" for c in found["classes"]))
        elif several or not any("top1" in out for out in outputs):
            listed = ", ".join(f"{i} '{out['name']}' {out['dtype']} {out['shape']}"
                               for i, out in enumerate(outputs))
            lines.append(f"{head}: {samples} samples through output(s) {listed}")
        if "agreement" in v:
            a = v["agreement"]
            lines.append(f"{head} against {a['against']}: {a['text']}"
                         + ("" if a["ok"] else " (differs)"))
    for s in document.get("skipped", []):
        lines.append(f"{s['variant']}: skipped ({s['reason']})")
    return "\n".join(lines)


def stderr_progress(message: str) -> None:
    """Print a progress line on stderr (stdout stays for the JSON)."""
    import sys

    print(f"qrun verify: {message}", file=sys.stderr, flush=True)
