"""What a convert output directory holds besides the two models: the labels file, the
reference inputs verify feeds, the task and `manifest.json`.

The manifest lists every input and output in the int8 interpreter's order, named as the
source model names them, with how the models were made (converter, source, calibration).
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from qdeploy.modelfile import onnxmeta, selfdescribe, tasks, tflite_graph
from qdeploy.quantize import datasets, signature
from qdeploy.quantize.converter import IOTypes
from qdeploy.quantize.sources import SourceModel
from qdeploy.quantize.tfquiet import quiet
from qdeploy.quantize.tfquiet import tensorflow as import_tf
from qrun import __version__
from qrun.measure import reference
from qrun.model import manifest as mf
from qrun.model.labels import Labels, fit, to_text
from qrun.model.preprocess import Preprocess
from qrun.model.runtime import make_interpreter

FLOAT_NAME = mf.CONVERT_FILES[mf.FLOAT]  # model_float.tflite
INT8_NAME = mf.CONVERT_FILES[mf.INT8]  # model_int8.tflite
LABELS_NAME = mf.CONVERT_FILES[mf.LABELS]  # labels.txt
REFERENCE_NAME = mf.CONVERT_FILES[mf.REFERENCE]  # reference_inputs.npy: one input
REFERENCE_NPZ_NAME = reference.NPZ_NAME  # reference_inputs.npz: several inputs
REFERENCE_COUNT = 8


def copy_labels(stage: Path, labels: Optional[Path]) -> list:
    """The --labels file copied into the stage: its name in a list, or an empty list."""
    if labels is None:
        return []
    shutil.copyfile(labels, stage / LABELS_NAME)
    return [LABELS_NAME]


def model_names(source: SourceModel) -> Optional[Labels]:
    """The class names the source model carries: an ONNX file's metadata_props `names`
    (as Ultralytics writes them; a value that is not a literal dict is refused)."""
    if source.kind != "onnx":
        return None
    return onnxmeta.read(source.obj.proto, source.path.name).names


def classes_of(task: mf.Task, int8_path: Path) -> Optional[int]:
    """How many classes the labels must name, when the task's outputs tell."""
    if "classes" in task.params:
        return int(task.params["classes"])
    position = task.output(mf.SCORES)
    if position is None:
        return None
    with quiet():  # the XNNPACK delegate announces itself on stderr
        shape = make_interpreter(int8_path).get_output_details()[position]["shape"]
    return int(np.prod(shape))


def stage_labels(stage: Path, given: Optional[Path], read: Optional[Labels],
                 own: Optional[Labels], task: mf.Task, notes: list) -> list:
    """labels.txt in the stage: the --labels file (`read` from `given`) when it fits the
    scores, mapped onto the model's own names when it does not and they exist (a note says
    so), else the model's own names; its name in a list, or [] without labels. Labels that
    do not fit are one UserError naming both counts."""
    labels = read if read is not None else own
    if labels is None:
        return []
    classes = classes_of(task, stage / INT8_NAME)
    how = None
    if classes is not None:
        path = given if given is not None else Path("the model's metadata_props names")
        labels, how = fit(labels, classes, path, own if given is not None else None,
                          given=given is not None)
    if how is not None:
        notes.append(how)
    if given is not None and how is None:
        return copy_labels(stage, given)
    (stage / LABELS_NAME).write_text(to_text(labels), encoding="utf-8")
    return [LABELS_NAME]


def write_reference(stage: Path, source: SourceModel, samples: list, pre: Preprocess) -> str:
    """Reference inputs for verify; returns the file name.

    One input: `reference_inputs.npy`, the samples as read (pixels or floats), as
    before. Several: `reference_inputs.npz` (qrun.measure.reference), one array per input in
    the int8 interpreter's order, in that input's dtype, fed as they are.
    """
    if len(samples) == 1:
        np.save(stage / REFERENCE_NAME, samples[0].data[:REFERENCE_COUNT])
        return REFERENCE_NAME
    by_name = {i.name: s for i, s in zip(source.inputs, samples)}
    interpreter = make_interpreter(stage / INT8_NAME)
    specs, _ = signature.specs(interpreter, stage / INT8_NAME)
    arrays = []
    for spec in specs:
        data = by_name[spec.name].data[:REFERENCE_COUNT]
        arrays.append(np.stack([datasets.model_input(x, spec.dtype, spec.scale,
                                                     spec.zero_point, pre) for x in data]))
    reference.save_npz(stage / REFERENCE_NPZ_NAME, arrays)
    return REFERENCE_NPZ_NAME


def choose_task(int8_path: Path, labels: bool, kind: Optional[str] = None) -> mf.Task:
    """The model's task: `kind` (--task) with the roles it reads when given; else a
    classifier when exactly one output is a [1, N] score vector (N > 1; a [1, 1] output is
    one value), else what the graph says (tasks.task_from_graph)."""
    if kind is not None:
        return tasks.task_of_kind(kind, selfdescribe.describe(int8_path),
                                  tflite_graph.load(int8_path), labels)
    interpreter = make_interpreter(int8_path)
    _, outputs = signature.specs(interpreter, int8_path)
    if len(outputs) == 1 and len(outputs[0].shape) == 2 and outputs[0].shape[0] == 1:
        return mf.classifier_task(labels)
    vectors = [k for k, o in enumerate(outputs)
               if len(o.shape) == 2 and o.shape[0] == 1 and o.shape[1] > 1]
    if len(vectors) == 1:
        k = vectors[0]
        return mf.Task(mf.CLASSIFY, labels=mf.LABELS if labels else None,
                       outputs={mf.SCORES: k}, source="convert",
                       reason=f"output {k} ({outputs[k].name}) is the one [1, N] score vector "
                              f"among {[o.shape for o in outputs]}")
    return tasks.task_from_graph(selfdescribe.describe(int8_path),
                                 tflite_graph.load(int8_path), labels)


def build_manifest(stage: Path, source: SourceModel, samples: list, pre: Preprocess,
                   io: IOTypes, names: list, task: mf.Task) -> mf.Manifest:
    """The manifest of the staged artifacts: every input and output in the int8
    interpreter's order, named as the source model names them."""
    tf = import_tf()

    interpreter = make_interpreter(stage / INT8_NAME)
    files = {**{name: role for role, name in mf.CONVERT_FILES.items()},
             REFERENCE_NPZ_NAME: mf.REFERENCE}
    artifacts = {files[n]: mf.artifact_for(stage / n) for n in names}
    inputs, outputs = signature.specs(interpreter, stage / INT8_NAME)
    extra = {"source_path": str(source.path.resolve())}  # evaluate --layers rebuilds from it
    if io.outputs != io.inputs:
        extra["inference_output_type"] = io.outputs
    tool = "tf.lite.TFLiteConverter.from_saved_model"
    if source.kind == "onnx":
        extra.update(onnx_record(source.obj))
        extra["nchw_inputs"] = nchw_inputs(source)
        tool = "onnx2tf + " + tool
    if len(source.inputs) > 1:
        extra["source_inputs"] = [{"name": i.name, "shape": [None if d is None else int(d)
                                                            for d in i.shape]}
                                  for i in source.inputs]
    calibration = {"samples": len(samples[0]), "source": samples[0].source,
                   "kind": samples[0].kind, "pixels": all(s.are_pixels for s in samples)}
    if samples[0].resize:
        calibration["resize"] = samples[0].resize
    if len(samples) > 1:
        calibration["pixel_inputs"] = [i.name for i, s in zip(source.inputs, samples)
                                       if s.are_pixels]
    return mf.Manifest(
        inputs=inputs,
        outputs=outputs,
        task=task,
        preprocess=pre,
        artifacts=artifacts,
        labels=LABELS_NAME if LABELS_NAME in names else None,
        converter=mf.Converter(
            tool=tool,
            tensorflow=tf.__version__,
            optimizations=["DEFAULT"],
            supported_ops=["TFLITE_BUILTINS_INT8"],
            inference_io_type=io.inputs,
            batch_fixed_to_1=source.batch_changed,
            source_input_shape=source_input_shape(source),
            source_model=source.path.name,
            source_kind=source.kind,
            extra=extra,
        ),
        calibration=calibration,
        created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        qdeploy_version=__version__,
    )


def source_input_shape(source: SourceModel) -> list:
    """The first input's shape as the source declares it (ONNX: in its own layout)."""
    shape = source.obj.inputs[0].shape if source.kind == "onnx" else source.input_shape
    return [None if d is None or d == -1 else int(d) for d in shape]


def nchw_inputs(source: SourceModel) -> dict:
    """Manifest input name -> the ONNX input's shape (batch 1) for every input onnx2tf
    moved to NHWC: how evaluate reads labelled data given in the ONNX layout."""
    return {i.name: [1, *(int(d) for d in o.shape[1:])]
            for i, o in zip(source.inputs, source.obj.inputs) if o.transposed}


def onnx_record(model) -> dict:
    """What the manifest's converter.extra says about an ONNX source."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        onnx2tf = version("onnx2tf")
    except PackageNotFoundError:
        onnx2tf = None
    record = {"onnx_opset": model.opset, "onnx_producer": model.producer,
              "onnx2tf": onnx2tf, **model.layout}
    meta = onnxmeta.read(model.proto, model.path.name).to_dict()
    if meta:
        record["onnx_metadata"] = meta  # Ultralytics' task, imgsz, stride, class count
    check = getattr(model, "float_check", None)
    if check is not None:
        record["onnxruntime_check"] = check.to_dict()
    return record

