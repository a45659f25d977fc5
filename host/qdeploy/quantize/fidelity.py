"""The fidelity gate of `qdeploy convert`: does the int8 model still tell what the float
model tells, on samples it was not calibrated on?

Convert reads up to HELD_BACK representative samples beyond `--num-calib` and keeps them
out of calibration (`hold_back`; a dataset with no sample to spare is checked on its first
calibration samples instead, and the record says so). The float and the int8 `.tflite`
run on them through the device runtime, fed as the device feeds them, and their outputs
are compared in the task's terms by qrun.measure.agreement: top-1 agreement, matched
detections, pixel agreement or keypoint distance. When int8 loses it (agreement under
90%, no int8 detection where float has some, keypoints more than 5% of the input apart),
the result carries a `warning:` line naming the output, the figure and the likely cause
(`likely_cause`), read from the int8 model's quantization and the float outputs' ranges:
e.g. one int8 scale shared between channels of very different float ranges ("output0
shares one int8 scale of 2.54 between boxes in pixels (0..640) and scores in 0..1").
`--strict` makes that warning an error before anything is published.

The figures go into the manifest as its `fidelity` record (qrun.model.manifest.Fidelity).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Optional

import numpy as np

from qdeploy.quantize import datasets, signature
from qrun.errors import UserError
from qrun.measure import agreement
from qrun.model import manifest as mf
from qrun.model.preprocess import dequantize
from qrun.model.runtime import make_interpreter
from qrun.tasks import roles

HELD_BACK = 8  # samples read beyond --num-calib and kept out of calibration
GAP = 20.0  # channel ranges this many times apart are "very different"
FEW_STEPS = 16  # channels with fewer int8 steps than this over their range are starved
FIGURES = {"top1_agreement": "top-1 agreement", "detection_agreement": "detections matched",
           "pixel_agreement": "pixel agreement", "keypoint_distance": "keypoint distance"}


def hold_back(samples: list, num_calib: int) -> tuple:
    """(calibration samples, held-back samples, held_back): `samples` (one `Samples` per
    input, read up to num_calib + HELD_BACK) split after `num_calib`. Without samples to
    spare, the first HELD_BACK calibration samples are checked (held_back False)."""
    count = len(samples[0])
    if count > num_calib:
        return ([part(s, 0, num_calib) for s in samples],
                [part(s, num_calib, count) for s in samples], True)
    return samples, [part(s, 0, min(HELD_BACK, count)) for s in samples], False


def part(samples: datasets.Samples, start: int, stop: int) -> datasets.Samples:
    labels = None if samples.labels is None else samples.labels[start:stop]
    return datasets.Samples(samples.data[start:stop], samples.source, samples.kind, labels,
                            samples.class_names)


def run(model: Path, samples: list, names: list, manifest: mf.Manifest) -> list:
    """Every output of `model` for every sample, dequantized, [N, *shape] each, in the
    manifest's output order; `samples` are one `Samples` per input named `names`, matched
    to the model's inputs by signature name."""
    interpreter = make_interpreter(model)
    inputs = signature.matching(interpreter, model, manifest.inputs, outputs=False)
    outputs = signature.matching(interpreter, model, manifest.outputs, outputs=True)
    by_name = dict(zip(names, samples))
    fed = [by_name.get(spec.name, samples[k]) for k, spec in enumerate(manifest.inputs)]
    got = [[] for _ in outputs]
    for n in range(len(samples[0])):
        for details, batch in zip(inputs, fed):
            spec = mf.TensorSpec.from_details(details)
            interpreter.set_tensor(details["index"], datasets.model_input(
                batch.data[n], spec.dtype, spec.scale, spec.zero_point,
                manifest.preprocess)[None])
        interpreter.invoke()
        for row, details in zip(got, outputs):
            spec = mf.TensorSpec.from_details(details)
            row.append(dequantize(interpreter.get_tensor(details["index"]), spec.scale,
                                  spec.zero_point))
    return [np.stack(row) for row in got]


def input_size(manifest: mf.Manifest) -> tuple:
    """The first input's (w, h) for an image [1, H, W, C]; (1, 1) otherwise."""
    shape = manifest.inputs[0].shape
    return (shape[2], shape[1]) if len(shape) == 4 else (1, 1)


def gate(float_path: Path, int8_path: Path, manifest: mf.Manifest, held: list,
         input_names: list, held_back: bool,
         label_names: Optional[dict] = None) -> Optional[mf.Fidelity]:
    """The fidelity record of a converted pair: float against int8 on the held-back
    samples, in the task's terms; None for a task qrun cannot decode (raw)."""
    start = time.perf_counter()
    task = manifest.task
    shapes = [spec.shape for spec in manifest.outputs]
    size = input_size(manifest)
    floats = run(float_path, held, input_names, manifest)
    ints = run(int8_path, held, input_names, manifest)
    expected = agreement.decode(task, shapes, [f.reshape(len(f), -1) for f in floats], size)
    got = agreement.decode(task, shapes, [i.reshape(len(i), -1) for i in ints], size)
    if expected is None or got is None:
        return None
    verdict = agreement.compare(task, expected, got, names=label_names)
    position = first_output(task)
    spec = manifest.outputs[position]
    cause = None
    if not verdict.ok:
        cause = likely_cause(int8_path, spec, floats[position], task)
    return mf.Fidelity(task=task.kind, metric=verdict.metric, value=round(verdict.value, 6),
                       ok=verdict.ok, samples=verdict.samples, held_back=held_back,
                       output=spec.name or f"output {position}", text=verdict.text,
                       cause=cause, seconds=round(time.perf_counter() - start, 3))


def first_output(task: mf.Task) -> int:
    """The output the task's answer comes from: a head, scores, mask or keypoints."""
    for role in (mf.HEAD, mf.SCORES, mf.MASK, mf.KEYPOINTS, mf.BOXES):
        if task.output(role) is not None:
            return task.output(role)
    return 0


def warning(record: mf.Fidelity) -> Optional[str]:
    """The `warning:` text (without the prefix) when int8 lost the task, else None."""
    if record is None or record.ok:
        return None
    figure = FIGURES.get(record.metric, record.metric)
    value = (f"{record.value:.3f} of the input's size" if record.metric == "keypoint_distance"
             else f"{record.value:.0%}")
    where = "held-back" if record.held_back else "calibration"
    text = (f"int8 loses the {record.task} output {record.output}: {figure} {value} against "
            f"the float model on {record.samples} {where} samples ({record.text})")
    if record.cause:
        text += f"; likely cause: {record.cause}"
    return text


class StrictError(UserError):
    """--strict and int8 lost the task: the convert writes nothing."""


@contextlib.contextmanager
def nothing_left(out_dir: Path):
    """Around a convert: when --strict refuses it, remove the --out directory if the
    convert created it (the staged files are gone already)."""
    made = not out_dir.exists()
    try:
        yield
    except StrictError:
        if made:
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise


# --- why --------------------------------------------------------------------------------

def output_scale(int8_path: Path, spec: mf.TensorSpec) -> float:
    """The int8 scale of an output: its own, or for a float output (--output-io float32)
    that of the tensor its DEQUANTIZE reads."""
    if spec.scale:
        return float(spec.scale)
    interpreter = make_interpreter(int8_path)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():
        if op["op_name"] == "DEQUANTIZE" and spec.index in list(op["outputs"]):
            source = tensors.get(int(op["inputs"][0]))
            if source is not None:
                return float(source["quantization"][0])
    return 0.0


def channel_axis(shape: list, task: mf.Task) -> int:
    """The axis holding an output's channels: rows of a YOLOv8 head, else the last."""
    if task.decoder == roles.YOLOV8 and len(shape) == 3:
        return 1
    return len(shape) - 1


def channel_spans(values: np.ndarray, axis: int) -> tuple:
    """(lowest, highest) float value of each channel along `axis` (values [N, *shape])."""
    moved = np.moveaxis(np.asarray(values, dtype=np.float64), axis + 1, 0)
    flat = moved.reshape(moved.shape[0], -1)
    return flat.min(axis=1), flat.max(axis=1)


def shared_scale(low: np.ndarray, high: np.ndarray, scale: float) -> Optional[int]:
    """The first channel of the wide group when the channels split into a group whose
    float range is at least GAP times that of the rest, which gets fewer than FEW_STEPS
    int8 steps of `scale` and stays within a probability's 0..1 scale (range under 1.5),
    while the wide group's reaches beyond it; None otherwise. Channels must be two runs
    in order (boxes then scores, a branch then another), as a concatenation leaves them."""
    span = np.maximum(np.abs(low), np.abs(high))
    for cut in range(1, len(span)):
        for wide, narrow in ((span[:cut], span[cut:]), (span[cut:], span[:cut])):
            if (wide.min() >= GAP * max(narrow.max(), 1e-9) and narrow.max() < 1.5
                    and narrow.max() < FEW_STEPS * scale and wide.min() > 1.5):
                return cut
    return None


def channels_text(first: int, last: int, low: float, high: float, what: str) -> str:
    where = f"channel {first}" if first == last else f"channels {first}-{last}"
    return f"{what or where} ({low:.3g}..{high:.3g})"


def likely_cause(int8_path: Path, spec: mf.TensorSpec, floats: np.ndarray,
                 task: mf.Task) -> str:
    """Why int8 lost the output `spec` (float values `floats`, [N, *shape]), in one
    phrase: a scale shared with a much wider channel, else the output's scale against its
    float range."""
    scale = output_scale(int8_path, spec)
    name = spec.name or "the output"
    axis = channel_axis(spec.shape, task)
    low, high = channel_spans(floats, axis)
    cut = shared_scale(low, high, scale) if scale and len(low) > 1 else None
    if cut is not None:
        yolo = task.decoder in (roles.YOLOV8, roles.YOLOV5) and cut == 4
        first = channels_text(0, cut - 1, low[:cut].min(), high[:cut].max(),
                              "boxes in pixels" if yolo else "")
        rest = channels_text(cut, len(low) - 1, low[cut:].min(), high[cut:].max(),
                             "scores" if yolo else "")
        narrow = min(np.abs(np.r_[low[:cut], high[:cut]]).max(),
                     np.abs(np.r_[low[cut:], high[cut:]]).max())
        steps = narrow / scale
        got = "less than one step" if steps < 1 else f"{steps:.0f} steps"
        fix = ("divide the boxes by the input size before the concatenation, as "
               "Ultralytics' TFLite export does" if yolo else
               "scale the wide branch down before the concatenation")
        return (f"{name} shares one int8 scale of {scale:.3g} between {first} and {rest}: "
                f"the narrow ones get {got} of it; {fix}, or give it an output of its own")
    if scale:
        return (f"{name}'s int8 scale {scale:.3g} over a float range of "
                f"{float(low.min()):.3g}..{float(high.max()):.3g} on these samples; check "
                "that the representative dataset (--calib) looks like what the model sees")
    return ("the int8 rounding inside the model; check that the representative dataset "
            "(--calib) looks like what the model sees")
