"""Full-integer post-training quantization with TensorFlow's TFLiteConverter.

The steps, top to bottom: load the source model (Keras file or SavedModel), re-export
it with the batch fixed to 1 (the Edge TPU needs static shapes), read the
representative dataset, convert to a float and an int8 `.tflite`, check the int8
model really is integer-only, and publish both with `manifest.json`. All files are
staged in a temporary directory inside the output directory and renamed into place
only when every step succeeded, so a failed run never clobbers a good result.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qdeploy.quantize import datasets
from qdeploy.quantize.tfquiet import keras as import_keras
from qdeploy.quantize.tfquiet import quiet
from qdeploy.quantize.tfquiet import tensorflow as import_tf
from qrun import __version__, atomic
from qrun import manifest as mf
from qrun.errors import UserError
from qrun.preprocess import Preprocess
from qrun.runtime import make_interpreter

FLOAT_NAME = mf.CONVERT_FILES[mf.FLOAT]  # model_float.tflite
INT8_NAME = mf.CONVERT_FILES[mf.INT8]  # model_int8.tflite
LABELS_NAME = mf.CONVERT_FILES[mf.LABELS]  # labels.txt
REFERENCE_NAME = mf.CONVERT_FILES[mf.REFERENCE]  # reference_inputs.npy
REFERENCE_COUNT = 8
IO_TYPES = ("uint8", "int8")  # --io: the int8 model's input/output dtype
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
INTEGER_DTYPES = {"int8", "int32", "uint8", "int16", "int64"}
EDGE_OPS = {"QUANTIZE", "DEQUANTIZE", "DELEGATE"}


@dataclass
class SourceModel:
    """The float model to convert and the input shape it declares (batch may be None)."""

    path: Path
    kind: str  # "keras" or "saved_model"
    obj: object
    input_shape: tuple
    input_dtype: str
    input_name: Optional[str] = None  # a SavedModel signature's argument name

    @property
    def batch_was_dynamic(self) -> bool:
        return self.input_shape[0] is None or self.input_shape[0] == -1

    @property
    def batch_changed(self) -> bool:
        """Whether the re-export changes the batch (dynamic, or fixed to more than 1)."""
        return self.input_shape[0] != 1

    @property
    def fixed_shape(self) -> list:
        return [1, *[int(d) for d in self.input_shape[1:]]]


@dataclass
class ConvertResult:
    out_dir: Path
    manifest: mf.Manifest
    float_path: Path
    int8_path: Path
    batch_fixed: bool
    calibration_samples: int
    int8_ops: list


def convert(model_path: Path, calib: Path, out_dir: Path, num_calib: int = 100,
            io_type: str = "uint8", preprocess: Optional[Preprocess] = None,
            labels: Optional[Path] = None,
            progress: Optional[Callable[[int, int], None]] = None,
            calib_label: Optional[str] = None) -> ConvertResult:
    """Convert `model_path` to float and full-integer `.tflite` files in `out_dir`.

    `calib_label` names the representative dataset in the manifest when its path means
    nothing to a reader (a temporary file, say).
    """
    if io_type not in IO_TYPES:
        raise UserError(f"--io must be one of {', '.join(IO_TYPES)}, got '{io_type}'")
    if num_calib < 1:
        raise UserError("--num-calib must be at least 1")
    pre = preprocess or Preprocess()
    label_names = read_labels(Path(labels)) if labels is not None else None
    out_dir = prepare_out_dir(Path(out_dir))
    source = load_source_model(Path(model_path))
    samples = datasets.load_calibration(calib, source.fixed_shape, pre, limit=num_calib)
    if calib_label:
        samples.source = calib_label
    inputs = datasets.float_inputs(samples, pre)

    with atomic.staging_dir(out_dir) as stage:
        saved = export_fixed_batch(source, stage / "fixed_batch_savedmodel")
        (stage / FLOAT_NAME).write_bytes(convert_float(saved))
        if label_names is not None:
            check_labels(label_names, labels, stage / FLOAT_NAME)
        (stage / INT8_NAME).write_bytes(convert_int8(saved, inputs, io_type, progress))
        int8_ops = check_integer_only(stage / INT8_NAME, io_type)
        names = [FLOAT_NAME, INT8_NAME]
        if labels is not None:
            shutil.copyfile(labels, stage / LABELS_NAME)
            names.append(LABELS_NAME)
        np.save(stage / REFERENCE_NAME, samples.data[:REFERENCE_COUNT])
        names.append(REFERENCE_NAME)
        manifest = build_manifest(stage, source, samples, pre, io_type, names)
        mf.save(manifest, stage)
        atomic.publish(stage, out_dir, names + [mf.MANIFEST_NAME])
    return ConvertResult(out_dir, manifest, out_dir / FLOAT_NAME, out_dir / INT8_NAME,
                         source.batch_changed, len(samples), int8_ops)


def read_labels(path: Path):
    """The --labels file, read before any slow work (qrun's reader: both forms)."""
    from qrun.labels import read_labels as read

    if not path.is_file():
        raise UserError(f"labels file not found: {path}")
    names = read(path)
    if not names.names:
        raise UserError(f"--labels {path} holds no labels; give one label per line")
    return names


def check_labels(names, path: Path, model: Path) -> None:
    """Refuse a labels file that does not fit the model's scores, as the device would."""
    from qrun import adapters
    from qrun.labels import check_fit

    with quiet():  # the XNNPACK delegate announces itself on stderr
        classes = adapters.num_classes(make_interpreter(model))
    try:
        check_fit(names, classes, path)
    except UserError as exc:
        raise UserError(f"--labels {str(exc).split('; ')[0]}; give the labels file made for "
                        "this model (one label per output score)") from None


def prepare_out_dir(out_dir: Path) -> Path:
    """Create the output directory and prove it is writable before any slow work."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".qdeploy-write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to --out {out_dir}: {exc.strerror or exc}; choose a "
                        "writable directory") from None
    return out_dir


def load_source_model(path: Path) -> SourceModel:
    """Load a Keras file or a SavedModel directory; refuse anything else with a clear line."""
    if not path.exists():
        raise UserError(f"model not found: {path}")
    if path.suffix == ".tflite":
        raise UserError(f"{path} is already a TFLite model; convert needs the source model "
                        "(.keras, .h5 or a SavedModel directory) to quantize it")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise UserError(f"{path} is a directory without saved_model.pb; give a SavedModel "
                            "directory or a .keras/.h5 file")
        return check_input(_load_saved_model(path))
    if path.suffix.lower() in KERAS_SUFFIXES:
        return check_input(_load_keras(path))
    raise UserError(f"{path} is not a model qdeploy can convert; give a .keras or .h5 file "
                    "or a SavedModel directory")


def check_input(source: SourceModel) -> SourceModel:
    """Refuse, before reading any data, an input the fixed-batch int8 model cannot have."""
    shape = list(source.input_shape)
    if not shape or any(d is None or d == -1 for d in shape[1:]):
        raise UserError(f"{source.path.name} has input shape {shape}; the Edge TPU needs every "
                        "dimension but the batch fixed: rebuild it with a fixed input size "
                        "(e.g. Input((224, 224, 3)))")
    if "float" not in str(source.input_dtype):
        raise UserError(f"{source.path.name} takes {source.input_dtype} input; qdeploy converts "
                        "models with float input (the int8 model gets uint8 I/O itself): "
                        "export it with a float32 input and do the cast inside")
    return source


def _load_keras(path: Path) -> SourceModel:
    keras = import_keras()
    try:
        with quiet():
            model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} could not be loaded as a Keras model ({first[:200]})") from None
    if len(model.inputs) != 1:
        raise UserError(f"{path} has {len(model.inputs)} inputs; qdeploy converts "
                        "single-input models")
    if len(model.outputs) != 1:
        raise UserError(f"{path} has {len(model.outputs)} outputs; qdeploy converts "
                        "single-output models (build a model with the one head to deploy)")
    tensor = model.inputs[0]
    return SourceModel(path, "keras", model, tuple(tensor.shape), str(tensor.dtype))


def _load_saved_model(path: Path) -> SourceModel:
    tf = import_tf()

    try:
        with quiet():
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise UserError(f"{path} could not be loaded as a SavedModel "
                        f"({type(exc).__name__})") from None
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise UserError(f"{path} has no serving_default signature")
    specs = signature.structured_input_signature[1]
    if len(specs) != 1:
        raise UserError(f"{path} has {len(specs)} inputs; qdeploy converts single-input models")
    outputs = signature.structured_outputs
    if isinstance(outputs, dict) and len(outputs) != 1:
        raise UserError(f"{path} has {len(outputs)} outputs; qdeploy converts single-output "
                        "models (export a serving_default signature with the one output)")
    (name, spec), = specs.items()
    return SourceModel(path, "saved_model", loaded, tuple(spec.shape.as_list()),
                       spec.dtype.name, name)


def export_fixed_batch(source: SourceModel, target: Path) -> Path:
    """A SavedModel of the same weights whose only signature takes a batch of exactly 1."""
    tf = import_tf()

    check_input(source)
    spec = tf.TensorSpec(source.fixed_shape, tf.float32)
    try:
        _export(tf, source, spec, target)
    except Exception as exc:  # tracing errors of many types: keep the meaningful line
        raise UserError(f"cannot re-export {source.path.name} with batch 1: "
                        f"{converter_message(str(exc))}") from None
    return target


def _export(tf, source: SourceModel, spec, target: Path) -> None:
    with quiet():
        if source.kind == "keras":
            source.obj.export(str(target), format="tf_saved_model", input_signature=[spec],
                              verbose=False)
        else:
            signature = source.obj.signatures["serving_default"]
            name = source.input_name
            module = tf.Module()
            module.source = source.obj

            @tf.function(input_signature=[spec])
            def serve(x):
                return signature(**{name: x})

            tf.saved_model.save(module, str(target), signatures={"serving_default": serve})


def convert_float(saved_model: Path) -> bytes:
    """The float `.tflite` of the fixed-batch SavedModel (the accuracy reference)."""
    tf = import_tf()

    try:
        with quiet():
            return tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()
    except Exception as exc:  # ConverterError and friends: keep the first meaningful line
        raise UserError(f"float conversion failed: {converter_message(str(exc))}; replace "
                        "those ops in the model (the Edge TPU runs TFLite builtin ops "
                        "only)") from None


def convert_int8(saved_model: Path, inputs: np.ndarray, io_type: str,
                 progress: Optional[Callable[[int, int], None]] = None) -> bytes:
    """Full-integer conversion as the TFLite docs teach, calibrated on `inputs`."""
    tf = import_tf()

    def representative_dataset():
        for i, sample in enumerate(inputs):
            if progress:
                progress(i + 1, len(inputs))
            yield [sample[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = getattr(tf, io_type)
    converter.inference_output_type = getattr(tf, io_type)
    try:
        with quiet():
            return converter.convert()
    except Exception as exc:  # ConverterError and friends: keep the first meaningful line
        raise UserError(f"int8 conversion failed: {converter_message(str(exc))}") from None


def converter_message(text: str) -> str:
    """The line of a converter error that says what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("TF Select ops:", "Flex ops:")):
            return f"ops TFLite has no builtin for: {ln.split(':', 1)[1].strip()}"[:300]
    for ln in lines:
        if "error:" in ln:
            said = ln.split("error:", 1)[1].strip()
            if said and not said.startswith(("loc(", "failed while converting")):
                return said[:300]
    return (lines[0] if lines else "unknown error")[:300]


def check_integer_only(int8_path: Path, io_type: str) -> list:
    """The op names of the int8 model, after proving it has no float op or dynamic shape.

    TFLiteConverter keeps an op that has no int8 kernel in float, wrapped in
    DEQUANTIZE/QUANTIZE, even with TFLITE_BUILTINS_INT8; the Edge TPU cannot run that,
    so it is refused here, naming the op.
    """
    interpreter = make_interpreter(int8_path)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    for op in ops:
        if op["op_name"] in EDGE_OPS:
            continue
        used = [i for i in list(op["inputs"]) + list(op["outputs"]) if i in tensors]
        if any(np.dtype(tensors[i]["dtype"]).name not in INTEGER_DTYPES for i in used):
            raise UserError(f"op {op['op_name']} has no int8 kernel: the converter left it in "
                            "float, which the Edge TPU cannot run; replace it in the model")
    for t in tensors.values():
        if -1 in list(t.get("shape_signature", [])):
            raise UserError(f"tensor {t['name']} has a dynamic shape after conversion; the Edge "
                            "TPU needs static shapes")
    for detail in interpreter.get_input_details() + interpreter.get_output_details():
        if np.dtype(detail["dtype"]).name != io_type:
            raise UserError(f"model I/O is {np.dtype(detail['dtype']).name}, expected {io_type}")
    return [op["op_name"] for op in ops]


def build_manifest(stage: Path, source: SourceModel, samples: datasets.Samples,
                   pre: Preprocess, io_type: str, names: list) -> mf.Manifest:
    """The manifest of the staged artifacts."""
    tf = import_tf()

    interpreter = make_interpreter(stage / INT8_NAME)
    roles = {name: role for role, name in mf.CONVERT_FILES.items()}
    artifacts = {roles[n]: mf.artifact_for(stage / n) for n in names}
    return mf.Manifest(
        inputs=[mf.TensorSpec.from_details(d) for d in interpreter.get_input_details()],
        outputs=[mf.TensorSpec.from_details(d) for d in interpreter.get_output_details()],
        task=mf.classifier_task(LABELS_NAME in names),
        preprocess=pre,
        artifacts=artifacts,
        labels=LABELS_NAME if LABELS_NAME in names else None,
        converter=mf.Converter(
            tool="tf.lite.TFLiteConverter.from_saved_model",
            tensorflow=tf.__version__,
            optimizations=["DEFAULT"],
            supported_ops=["TFLITE_BUILTINS_INT8"],
            inference_io_type=io_type,
            batch_fixed_to_1=source.batch_changed,
            source_input_shape=[None if d is None else int(d) for d in source.input_shape],
            source_model=source.path.name,
            source_kind=source.kind,
        ),
        calibration={"samples": len(samples), "source": samples.source, "kind": samples.kind,
                     "pixels": samples.are_pixels},
        created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        qdeploy_version=__version__,
    )
