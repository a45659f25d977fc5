"""What quantization cost: float vs int8 accuracy on labelled data.

Both `.tflite` models of a convert output run through the device runtime (qrun),
one sample at a time with batch 1, fed exactly as the device feeds them: pixels go
through the manifest's preprocessing and are quantized with the input tensor's
scale and zero point. The figures are stored in `manifest.json` so later reports
can show size, accuracy and latency side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qdeploy.quantize import datasets
from qrun import adapters, atomic
from qrun import manifest as mf
from qrun.deployment import int8_model
from qrun.errors import UserError
from qrun.preprocess import quantize, to_input
from qrun.runtime import make_interpreter


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

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(directory: Path, data: Path, labels: Optional[Path] = None,
             limit: Optional[int] = None, save: bool = True,
             progress: Optional[Callable[[int, int], None]] = None) -> Evaluation:
    """Accuracy of the float and int8 models in `directory` on labelled `data`."""
    directory = Path(directory)
    manifest = mf.load(directory)
    float_path = _present(manifest.path_of(directory, mf.FLOAT), directory, mf.FLOAT)
    int8_path = _present(int8_model(directory, manifest), directory, mf.INT8)
    if save:
        atomic.check_writable(directory, "evaluate stores its figures in manifest.json there: "
                              "make it writable or copy the directory")
    samples = datasets.load_labelled(data, manifest.input.shape, manifest.preprocess,
                                     labels=labels, limit=limit)
    float_top1 = predict(float_path, samples, manifest, progress)
    int8_top1 = predict(int8_path, samples, manifest, progress)
    result = score(float_top1, int8_top1, samples.labels, float_path.stat().st_size,
                   int8_path.stat().st_size, samples.source)
    if save:
        manifest.evaluation = result.to_dict()
        try:
            mf.save(manifest, directory)
        except OSError as exc:
            raise UserError(f"cannot store the figures in {directory / mf.MANIFEST_NAME}: "
                            f"{exc.strerror or exc} (float {result.float_accuracy:.2%}, "
                            f"int8 {result.int8_accuracy:.2%} on {result.samples} "
                            "samples); free space or make it writable") from None
    return result


def predict(model_path: Path, samples: datasets.Samples, manifest: mf.Manifest,
            progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Top-1 class of every sample, one invoke per sample."""
    interpreter = make_interpreter(model_path)
    inp = mf.TensorSpec.from_details(adapters.input_details(interpreter))
    top1 = np.empty(len(samples), dtype=np.int64)
    for i, sample in enumerate(samples.data):
        adapters.set_input(interpreter, model_input(sample, inp.dtype, inp.scale, inp.zero_point,
                                                    manifest)[None])
        interpreter.invoke()
        top1[i] = int(np.argmax(adapters.output_scores(interpreter)))
        if progress:
            progress(i + 1, len(samples))
    return top1


def model_input(sample: np.ndarray, dtype, scale: float, zero_point: int,
                manifest: mf.Manifest) -> np.ndarray:
    """One sample as the input tensor wants it: pixels preprocessed, floats quantized."""
    if sample.dtype == np.uint8:
        return to_input(sample, manifest.preprocess, dtype, scale, zero_point)
    if np.issubdtype(np.dtype(dtype), np.floating):
        return sample.astype(dtype)
    return quantize(sample, scale, zero_point, dtype)


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
