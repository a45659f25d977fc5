"""What quantization cost: float vs int8 accuracy on labelled data.

Both `.tflite` models of a convert output run through the device runtime (qrun),
one sample at a time with batch 1, fed exactly as the device feeds them: pixels go
through the manifest's preprocessing and are quantized with the input tensor's
scale and zero point. A model with several inputs reads an .npz with one array per
input name and `y`. A model converted from ONNX takes NHWC where the ONNX model took
NCHW; labelled arrays in the ONNX layout are transposed once, with a note, as convert
does for calibration data. A model with several outputs is scored on the output its task
names as the scores (`task.outputs.scores`), and a model whose task has no scores
output (detect, segment, pose, raw) is refused: evaluate measures top-1 accuracy.
The figures are stored in `manifest.json` so later reports can show size, accuracy
and latency side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qdeploy.quantize import datasets, signature
from qrun.tasks import adapters
from qrun import atomic
from qrun.model import manifest as mf
from qrun.model.deployment import int8_model
from qrun.errors import UserError
from qrun.model.preprocess import dequantize
from qrun.model.runtime import make_interpreter


@dataclass
class Evaluation:
    samples: int
    float_accuracy: float  # fraction in [0, 1]
    int8_accuracy: float
    delta_pp: float  # int8 minus float, percentage points
    agreement: float  # fraction of samples whose top-1 is the same
    float_size: int  # bytes
    int8_size: int
    size_ratio: float  # float size / int8 size
    data: str
    notes: list = field(default_factory=list)  # what the user should know (ONNX layout)
    fidelity: Optional[dict] = None  # convert's fidelity gate (manifest `fidelity`), if any

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(directory: Path, data: Path, labels: Optional[Path] = None,
             limit: Optional[int] = None, save: bool = True,
             progress: Optional[Callable[[int, int], None]] = None) -> Evaluation:
    """Accuracy of the float and int8 models in `directory` on labelled `data`."""
    directory = Path(directory)
    manifest = mf.load(directory)
    scores_output(manifest)
    float_path = _present(manifest.path_of(directory, mf.FLOAT), directory, mf.FLOAT)
    int8_path = _present(int8_model(directory, manifest), directory, mf.INT8)
    if save:
        atomic.check_writable(directory, "evaluate stores its figures in manifest.json there: "
                              "make it writable or copy the directory")
    samples, layout_note = load_samples(data, manifest, labels, limit)
    float_top1 = predict(float_path, samples, manifest, progress)
    int8_top1 = predict(int8_path, samples, manifest, progress)
    result = score(float_top1, int8_top1, samples[0].labels, float_path.stat().st_size,
                   int8_path.stat().st_size, samples[0].source)
    result.notes = [layout_note] if layout_note else []
    if save:
        manifest.evaluation = result.to_dict()
        try:
            mf.save(manifest, directory)
        except OSError as exc:
            raise UserError(f"cannot store the figures in {directory / mf.MANIFEST_NAME}: "
                            f"{exc.strerror or exc} (float {result.float_accuracy:.2%}, "
                            f"int8 {result.int8_accuracy:.2%} on {result.samples} "
                            "samples); free space or make it writable") from None
    result.fidelity = manifest.fidelity.to_dict() if manifest.fidelity is not None else None
    return result


def scores_output(manifest: mf.Manifest) -> int:
    """The position of the output evaluate scores; a UserError when the task has none."""
    position = manifest.task.output(mf.SCORES)
    if position is None:
        raise UserError(f"evaluate measures classification accuracy (top-1 on a scores "
                        f"output), but this model's task is {manifest.task.kind} with no "
                        "scores output; use qrun verify to compare the float and int8 "
                        "outputs instead")
    return position


def load_samples(data: Path, manifest: mf.Manifest, labels: Optional[Path],
                 limit: Optional[int]) -> tuple:
    """(samples, note): one labelled `Samples` per model input, in the manifest's order.

    Data that does not fit an ONNX-sourced model's NHWC inputs is read once more in the
    ONNX model's NCHW layout (arrays only; images are pixels, HWC) and transposed, and
    the note says so."""
    shapes = [(spec.name, spec.shape) for spec in manifest.inputs]
    try:
        return read_labelled(data, shapes, manifest.preprocess, labels, limit), None
    except UserError as first:
        nchw = nchw_inputs(manifest)
        if not nchw or Path(data).is_dir():
            raise
        try:
            samples = read_labelled(data, [(n, nchw.get(n, s)) for n, s in shapes],
                                    manifest.preprocess, labels, limit)
        except UserError:
            raise first from None
    for (name, _), s in zip(shapes, samples):
        if name in nchw:
            s.data = np.ascontiguousarray(np.moveaxis(s.data, 1, -1))
    moved = ", ".join(f"{list(nchw[n][1:])} -> {list(s[1:])}" for n, s in shapes if n in nchw)
    return samples, (f"data {data} is in the ONNX model's NCHW layout: transposed once to "
                     f"the converted model's NHWC ({moved}), as the device feeds it")


def read_labelled(data: Path, shapes: list, pre, labels: Optional[Path],
                  limit: Optional[int]) -> list:
    """One labelled `Samples` per (name, shape)."""
    if len(shapes) == 1:
        return [datasets.load_labelled(data, shapes[0][1], pre, labels=labels, limit=limit)]
    return datasets.load_labelled_inputs(data, shapes, limit=limit)


def nchw_inputs(manifest: mf.Manifest) -> dict:
    """Input name -> the ONNX source's NCHW shape, for the inputs onnx2tf moved to NHWC
    (what convert records in converter.extra); empty for any other source."""
    extra = manifest.converter.extra if manifest.converter else None
    if not isinstance(extra, dict) or extra.get("source_layout") != "NCHW":
        return {}
    shapes = extra.get("nchw_inputs")
    names = {spec.name for spec in manifest.inputs}
    if not isinstance(shapes, dict):
        return {}
    return {n: [int(d) for d in s] for n, s in shapes.items()
            if n in names and isinstance(s, list) and all(isinstance(d, int) for d in s)}


def predict(model_path: Path, samples, manifest: mf.Manifest,
            progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Top-1 class of every sample on the task's scores output, one invoke per sample.

    `samples` is one `Samples` per manifest input (or one `Samples` for a single
    input); the model's tensors are matched to the manifest's by signature name, so a
    float model that orders its inputs or outputs otherwise is still fed right.
    """
    if isinstance(samples, datasets.Samples):
        samples = [samples]
    interpreter = make_interpreter(model_path)
    inputs = signature.matching(interpreter, model_path, manifest.inputs, outputs=False)
    scores = signature.matching(interpreter, model_path, manifest.outputs,
                                outputs=True)[scores_output(manifest)]
    out = mf.TensorSpec.from_details(scores)
    count = len(samples[0])
    top1 = np.empty(count, dtype=np.int64)
    for i in range(count):
        for details, batch in zip(inputs, samples):
            spec = mf.TensorSpec.from_details(details)
            interpreter.set_tensor(details["index"], datasets.model_input(
                batch.data[i], spec.dtype, spec.scale, spec.zero_point,
                manifest.preprocess)[None])
        interpreter.invoke()
        raw = interpreter.get_tensor(scores["index"])
        adapters.check_scores_shape(raw.shape)
        top1[i] = int(np.argmax(dequantize(raw.reshape(-1), out.scale, out.zero_point)))
        if progress:
            progress(i + 1, count)
    return top1


def score(float_top1: np.ndarray, int8_top1: np.ndarray, labels: np.ndarray,
          float_size: int, int8_size: int, source: str) -> Evaluation:
    """Accuracies, their difference, agreement and sizes."""
    float_acc = float(np.mean(float_top1 == labels))
    int8_acc = float(np.mean(int8_top1 == labels))
    return Evaluation(
        samples=int(len(labels)),
        float_accuracy=float_acc,
        int8_accuracy=int8_acc,
        delta_pp=round((int8_acc - float_acc) * 100, 4),
        agreement=float(np.mean(float_top1 == int8_top1)),
        float_size=int(float_size),
        int8_size=int(int8_size),
        size_ratio=float(float_size) / float(int8_size),
        data=source,
    )


def _present(path: Optional[Path], directory: Path, role: str) -> Path:
    """`path` when its file is there, else the UserError naming the missing model."""
    if path is None or not path.is_file():
        raise UserError(f"{directory} has no {role} model; re-run qdeploy convert")
    return path
