"""The source model convert quantizes: a Keras file, a SavedModel directory or an ONNX file.

`load_source_model` reads it and describes it as a `SourceModel`: its inputs (name,
declared shape, dtype) and the names of its outputs, in its order, made usable as
signature keys. An ONNX file goes through onnx_source, its inputs described in the
layout the converted model takes (NHWC for NCHW). `check_input` refuses, before any data
is read, an input the fixed-batch int8 model cannot have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qdeploy.quantize.tfquiet import keras as import_keras
from qdeploy.quantize.tfquiet import quiet
from qdeploy.quantize.tfquiet import tensorflow as import_tf
from qrun.errors import UserError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
ONNX_SUFFIX = ".onnx"


@dataclass
class SourceInput:
    """One input of the source model: its name, declared shape (batch may be None), dtype."""

    name: str  # the Keras input name / SavedModel signature argument: the manifest's name
    shape: tuple
    dtype: str

    @property
    def fixed_shape(self) -> list:
        return [1, *[int(d) for d in self.shape[1:]]]


@dataclass
class SourceModel:
    """The float model to convert: its inputs and the names of its outputs, in its order."""

    path: Path
    kind: str  # "keras", "saved_model" or "onnx" (obj: an onnx_source.OnnxModel)
    obj: object
    inputs: list  # SourceInput
    outputs: list  # output names (Keras output layer names, signature output keys)

    @property
    def input_shape(self) -> tuple:
        """The first input's shape as the source declares it."""
        return self.inputs[0].shape

    @property
    def batch_was_dynamic(self) -> bool:
        return any(i.shape[0] is None or i.shape[0] == -1 for i in self.inputs)

    @property
    def batch_changed(self) -> bool:
        """Whether the re-export changes the batch (dynamic, or fixed to more than 1)."""
        return any(i.shape[0] != 1 for i in self.inputs)

    @property
    def fixed_shape(self) -> list:
        return self.inputs[0].fixed_shape



def load_source_model(path: Path, input_shape: Optional[str] = None,
                      task: Optional[str] = None) -> SourceModel:
    """Load a Keras file or a SavedModel directory; refuse anything else with a clear line.
    `input_shape` (--input-shape, ONNX only) fixes a dynamic input's size."""
    if not path.exists():
        raise UserError(f"model not found: {path}")
    if path.suffix == ".tflite":
        raise UserError(f"{path} is already a TFLite model; convert needs the source model "
                        "(.keras, .h5, .onnx or a SavedModel directory) to quantize it")
    if path.suffix.lower() == ONNX_SUFFIX and path.is_file():
        return check_input(_load_onnx(path, input_shape, task))
    if input_shape is not None:
        raise UserError("--input-shape is for ONNX models; a Keras model or SavedModel "
                        "declares its own input shape")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise UserError(f"{path} is a directory without saved_model.pb; give a SavedModel "
                            "directory or a .keras/.h5 file")
        return check_input(_load_saved_model(path))
    if path.suffix.lower() in KERAS_SUFFIXES:
        return check_input(_load_keras(path))
    raise UserError(f"{path} is not a model qdeploy can convert; give a .keras, .h5 or "
                    ".onnx file or a SavedModel directory")


def check_input(source: SourceModel) -> SourceModel:
    """Refuse, before reading any data, an input the fixed-batch int8 model cannot have."""
    many = len(source.inputs) > 1
    for i in source.inputs:
        shape = list(i.shape)
        which = f"input {i.name} of {source.path.name}" if many else source.path.name
        if not shape or any(d is None or d == -1 for d in shape[1:]):
            raise UserError(f"{which} has input shape {shape}; the Edge TPU needs every "
                            "dimension but the batch fixed: rebuild it with a fixed input "
                            "size (e.g. Input((224, 224, 3)))")
        if "float" not in str(i.dtype):
            raise UserError(f"{which} takes {i.dtype} input; qdeploy converts models with "
                            "float input (the int8 model gets uint8 I/O itself): export it "
                            "with a float32 input and do the cast inside")
    return source


def _load_keras(path: Path) -> SourceModel:
    keras = import_keras()
    try:
        with quiet():
            model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} could not be loaded as a Keras model ({first[:200]})") from None
    inputs = [SourceInput(name, tuple(t.shape), str(t.dtype))
              for name, t in zip(unique_names([t.name for t in model.inputs], "input"),
                                 model.inputs)]
    return SourceModel(path, "keras", model, inputs, keras_output_names(model))


def keras_output_names(model) -> list:
    """The names of a Keras model's outputs: the layer that makes each one (a Sequential
    model has no `output_names`), as signature keys."""
    def layer_name(tensor):
        history = getattr(tensor, "_keras_history", None)
        return getattr(getattr(history, "operation", None), "name", None) or tensor.name

    names = getattr(model, "output_names", None) or [layer_name(t) for t in model.outputs]
    return unique_names(list(names), "output")


def unique_names(names: list, stem: str) -> list:
    """Names usable as signature keys ([A-Za-z0-9_], not empty, distinct), in order."""
    out = []
    for k, name in enumerate(names):
        clean = "".join(c if c.isalnum() or c == "_" else "_" for c in str(name)) or \
            f"{stem}_{k}"
        if clean[0].isdigit():
            clean = f"{stem}_{clean}"
        while clean in out:
            clean = f"{clean}_{k}"
        out.append(clean)
    return out


def _load_saved_model(path: Path) -> SourceModel:
    tf = import_tf()

    try:
        with quiet():
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise UserError(f"{path} could not be loaded as a SavedModel "
                        f"({type(exc).__name__})") from None
    serving = loaded.signatures.get("serving_default")
    if serving is None:
        raise UserError(f"{path} has no serving_default signature")
    specs = serving.structured_input_signature[1]
    if not specs:
        raise UserError(f"{path}'s serving_default signature takes no inputs")
    outputs = serving.structured_outputs
    names = list(outputs) if isinstance(outputs, dict) else ["output_0"]
    inputs = [SourceInput(name, tuple(spec.shape.as_list()), spec.dtype.name)
              for name, spec in sorted(specs.items())]
    return SourceModel(path, "saved_model", loaded, inputs, names)


def _load_onnx(path: Path, input_shape: Optional[str] = None,
               task: Optional[str] = None) -> SourceModel:
    """An ONNX file as a source: its inputs in the layout the converted model takes
    (NHWC for NCHW), named as the graph names them (made signature-safe)."""
    from qdeploy.quantize import onnx_source

    model = onnx_source.load(path, input_shape, task)
    for i in model.inputs:
        if not i.shape or any(d is None for d in i.shape[1:]):
            example = ",".join(str(d or s) for d, s in
                               zip((1, *i.shape[1:]), (1, 3, 640, 640, 1)))
            raise UserError(f"input {i.name} of {path.name} has shape "
                            f"{['?' if d is None else d for d in i.shape]}; the Edge TPU "
                            "needs every dimension but the batch fixed: pass --input-shape "
                            f"with the size it was trained at (e.g. {example}), or export "
                            "with dynamic_axes for the batch only (or none)")
    names = unique_names([i.name for i in model.inputs], "input")
    inputs = [SourceInput(name, i.converted_shape, i.dtype)
              for name, i in zip(names, model.inputs)]
    return SourceModel(path, "onnx", model, inputs, unique_names(model.outputs, "output"))

