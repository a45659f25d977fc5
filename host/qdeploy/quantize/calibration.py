"""The representative dataset of a source model: one `Samples` per input, and the float
arrays the converter calibrates on.

Images, .npy and idx files feed a model with one input; an .npz with one array per input
name feeds several (datasets). Arrays given in an ONNX model's NCHW layout are transposed
once to the converted model's NHWC, with a note; `--input-layout` forces one reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from qdeploy.quantize import datasets
from qdeploy.quantize.sources import SourceInput, SourceModel
from qrun.errors import UserError
from qrun.model.preprocess import Preprocess

LAYOUTS = ("nchw", "nhwc")  # --input-layout: how calibration arrays of an ONNX model are laid


def read_samples(calib: Path, source: SourceModel, pre: Preprocess, limit: int,
                 layout: Optional[str], label: Optional[str]) -> tuple:
    """(samples, notes): one `Samples` per source input, read from `calib` (up to `limit`
    each), and what the user should know about how they were read. `label` names the
    dataset in the manifest in place of its path."""
    if layout is not None and source.kind != "onnx":
        raise UserError("--input-layout is for ONNX models; a Keras model or SavedModel "
                        "takes its calibration data in its own layout")
    notes = []
    if source.kind == "onnx":
        samples, layout_note = onnx_calibration(calib, source, pre, limit, layout)
        notes += [layout_note] if layout_note else []
    else:
        samples = load_calibration(calib, source, pre, limit)
    if label:
        for s in samples:
            s.source = label
    return samples, notes


def float_inputs(source: SourceModel, samples: list, pre: Preprocess) -> dict:
    """Input name -> the samples as the float model takes them ([N, ...] float32)."""
    return {i.name: datasets.float_inputs(s, pre) for i, s in zip(source.inputs, samples)}


def load_calibration(calib: Path, source: SourceModel, pre: Preprocess,
                     limit: int) -> list:
    """One `Samples` per source input: images/npy/idx for one input, an .npz with one
    array per input name for several. Images for a detector with a YOLO head are
    letterboxed, as qrun detect feeds it; others are stretched to the input size."""
    if len(source.inputs) == 1:
        return [datasets.load_calibration(calib, source.fixed_shape, pre, limit=limit,
                                          resize=resize_for(source))]
    return datasets.load_calibration_inputs(
        calib, [(i.name, i.fixed_shape) for i in source.inputs], pre, limit=limit)


def resize_for(source: SourceModel) -> str:
    """How images meet the input: letterboxed for an ONNX model with a YOLO head."""
    head = getattr(source.obj, "head", None) if source.kind == "onnx" else None
    return datasets.LETTERBOX if head is not None else datasets.STRETCH


def onnx_calibration(calib: Path, source: SourceModel, pre: Preprocess, limit: int,
                     layout: Optional[str]) -> tuple:
    """(samples, note): calibration data for an ONNX model in the converted model's
    layout. Arrays laid out as the ONNX model takes them (NCHW) are transposed once, with
    a note; images are always read as pixels (HWC). `layout` forces one reading."""
    from qdeploy.quantize import onnx_source

    model = source.obj
    moved = [i.transposed for i in model.inputs]
    if layout == "nhwc" or not any(moved) or Path(calib).is_dir():
        return load_calibration(calib, source, pre, limit), None
    as_onnx = SourceModel(source.path, source.kind, model,
                          [SourceInput(s.name, (1, *o.shape[1:]), s.dtype)
                           for s, o in zip(source.inputs, model.inputs)], source.outputs)
    if layout is None:
        try:
            return load_calibration(calib, source, pre, limit), None
        except UserError as first:
            try:
                samples = load_calibration(calib, as_onnx, pre, limit)
            except UserError:
                raise first from None
    else:
        samples = load_calibration(calib, as_onnx, pre, limit)
    for s, o in zip(samples, model.inputs):
        s.data = np.ascontiguousarray(onnx_source.from_onnx_layout(s.data, o))
    shapes = ", ".join(f"{list(o.shape[1:])} -> {list(i.shape[1:])}"
                       for i, o, m in zip(source.inputs, model.inputs, moved) if m)
    return samples, (f"calibration data {calib} is in the ONNX model's NCHW layout: "
                     f"transposed once to the converted model's NHWC ({shapes}); the "
                     "device and evaluate feed NHWC")

