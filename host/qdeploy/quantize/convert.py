"""Full-integer post-training quantization with TensorFlow's TFLiteConverter.

The steps, top to bottom: load the source model (Keras file, SavedModel or ONNX file,
one or several inputs and outputs; ONNX goes through onnx2tf, see onnx_source),
re-export it with the batch fixed to 1 (the Edge TPU needs static shapes) and its
inputs and outputs named as the source names them, read the representative dataset
(one array per input), convert to a float and an int8 `.tflite`, check the int8 model
really is integer-only with the I/O types asked for, choose its task, and publish both
with `manifest.json`. All files are
staged in a temporary directory inside the output directory and renamed into place
only when every step succeeded, so a failed run never clobbers a good result.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qdeploy.modelfile import tflite_graph
from qdeploy.modelfile import selfdescribe, tasks
from qdeploy.quantize import datasets, signature
from qdeploy.quantize.tfquiet import keras as import_keras
from qdeploy.quantize.tfquiet import quiet
from qdeploy.quantize.tfquiet import tensorflow as import_tf
from qrun import __version__, atomic
from qrun.model import manifest as mf
from qrun.measure import reference
from qrun.errors import UserError
from qrun.model.preprocess import Preprocess
from qrun.model.runtime import make_interpreter

FLOAT_NAME = mf.CONVERT_FILES[mf.FLOAT]  # model_float.tflite
INT8_NAME = mf.CONVERT_FILES[mf.INT8]  # model_int8.tflite
LABELS_NAME = mf.CONVERT_FILES[mf.LABELS]  # labels.txt
REFERENCE_NAME = mf.CONVERT_FILES[mf.REFERENCE]  # reference_inputs.npy: one input
REFERENCE_NPZ_NAME = reference.NPZ_NAME  # reference_inputs.npz: several inputs
REFERENCE_COUNT = 8
IO_TYPES = ("uint8", "int8")  # --io: the int8 model's input (and output) dtype
OUTPUT_IO_TYPES = IO_TYPES + ("float32",)  # --output-io: float32 leaves a DEQUANTIZE
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
ONNX_SUFFIX = ".onnx"
LAYOUTS = ("nchw", "nhwc")  # --input-layout: how calibration arrays of an ONNX model are laid
INTEGER_DTYPES = {"int8", "int32", "uint8", "int16", "int64"}
EDGE_OPS = {"QUANTIZE", "DEQUANTIZE", "DELEGATE"}


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


@dataclass(frozen=True)
class IOTypes:
    """The int8 model's input and output dtypes (--io, --output-io)."""

    inputs: str = "uint8"
    outputs: str = "uint8"


@dataclass
class ConvertResult:
    out_dir: Path
    manifest: mf.Manifest
    float_path: Path
    int8_path: Path
    batch_fixed: bool
    calibration_samples: int
    int8_ops: list
    notes: list = field(default_factory=list)  # what the user should know (ONNX: layout)


def convert(model_path: Path, calib: Path, out_dir: Path, num_calib: int = 100,
            io_type: str = "uint8", preprocess: Optional[Preprocess] = None,
            labels: Optional[Path] = None,
            progress: Optional[Callable[[int, int], None]] = None,
            calib_label: Optional[str] = None,
            output_io: Optional[str] = None,
            input_layout: Optional[str] = None) -> ConvertResult:
    """Convert `model_path` to float and full-integer `.tflite` files in `out_dir`.

    `io_type` is the dtype of every input (and of every output unless `output_io` says
    otherwise: "float32" keeps float outputs behind a DEQUANTIZE, as Coral's SSDs do).
    `calib_label` names the representative dataset in the manifest when its path means
    nothing to a reader (a temporary file, say). `input_layout` ("nchw" or "nhwc", ONNX
    only) says how calibration arrays are laid out; by default their shape tells.
    """
    io = io_types(io_type, output_io)
    if input_layout is not None and input_layout not in LAYOUTS:
        raise UserError(f"--input-layout must be nchw or nhwc, got '{input_layout}'")
    if num_calib < 1:
        raise UserError("--num-calib must be at least 1")
    pre = preprocess or Preprocess()
    label_names = read_labels(Path(labels)) if labels is not None else None
    out_dir = prepare_out_dir(Path(out_dir))
    source = load_source_model(Path(model_path))
    if input_layout is not None and source.kind != "onnx":
        raise UserError("--input-layout is for ONNX models; a Keras model or SavedModel "
                        "takes its calibration data in its own layout")
    notes = []
    if source.kind == "onnx":
        samples, layout_note = onnx_calibration(calib, source, pre, num_calib, input_layout)
        notes += [layout_note] if layout_note else []
    else:
        samples = load_calibration(calib, source, pre, num_calib)
    if calib_label:
        for s in samples:
            s.source = calib_label
    inputs = {i.name: datasets.float_inputs(s, pre) for i, s in zip(source.inputs, samples)}

    with atomic.staging_dir(out_dir) as stage:
        saved = export_fixed_batch(source, stage / "fixed_batch_savedmodel", inputs)
        (stage / FLOAT_NAME).write_bytes(convert_float(saved))
        if source.kind == "onnx":
            notes += check_onnx_float(source, stage / FLOAT_NAME, inputs)
        (stage / INT8_NAME).write_bytes(convert_int8(saved, inputs, io, progress))
        int8_ops = check_integer_only(stage / INT8_NAME, io)
        task = choose_task(stage / INT8_NAME, labels is not None)
        if label_names is not None:
            check_labels(label_names, labels, stage / INT8_NAME, task)
        names = [FLOAT_NAME, INT8_NAME]
        if labels is not None:
            shutil.copyfile(labels, stage / LABELS_NAME)
            names.append(LABELS_NAME)
        names.append(write_reference(stage, source, samples, pre))
        manifest = build_manifest(stage, source, samples, pre, io, names, task)
        mf.save(manifest, stage)
        atomic.publish(stage, out_dir, names + [mf.MANIFEST_NAME])
    return ConvertResult(out_dir, manifest, out_dir / FLOAT_NAME, out_dir / INT8_NAME,
                         source.batch_changed, len(samples[0]), int8_ops, notes)


def io_types(io_type: str, output_io: Optional[str]) -> IOTypes:
    """--io and --output-io checked; outputs default to the inputs' type."""
    if io_type not in IO_TYPES:
        raise UserError(f"--io must be one of {', '.join(IO_TYPES)}, got '{io_type}'")
    if output_io is not None and output_io not in OUTPUT_IO_TYPES:
        raise UserError(f"--output-io must be one of {', '.join(OUTPUT_IO_TYPES)}, got "
                        f"'{output_io}'")
    return IOTypes(io_type, output_io or io_type)


def load_calibration(calib: Path, source: SourceModel, pre: Preprocess,
                     limit: int) -> list:
    """One `Samples` per source input: images/npy/idx for one input, an .npz with one
    array per input name for several."""
    if len(source.inputs) == 1:
        return [datasets.load_calibration(calib, source.fixed_shape, pre, limit=limit)]
    return datasets.load_calibration_inputs(
        calib, [(i.name, i.fixed_shape) for i in source.inputs], pre, limit=limit)


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


def read_labels(path: Path):
    """The --labels file, read before any slow work (qrun's reader: both forms)."""
    from qrun.model.labels import read_labels as read

    if not path.is_file():
        raise UserError(f"labels file not found: {path}")
    names = read(path)
    if not names.names:
        raise UserError(f"--labels {path} holds no labels; give one label per line")
    return names


def check_labels(names, path: Path, model: Path, task: mf.Task) -> None:
    """Refuse a labels file that does not fit the scores output, as the device would."""
    from qrun.model.labels import check_fit

    position = task.output(mf.SCORES)
    if position is None:
        return  # nothing to count the labels against
    with quiet():  # the XNNPACK delegate announces itself on stderr
        shape = make_interpreter(model).get_output_details()[position]["shape"]
    try:
        check_fit(names, int(np.prod(shape)), path)
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
                        "(.keras, .h5, .onnx or a SavedModel directory) to quantize it")
    if path.suffix.lower() == ONNX_SUFFIX and path.is_file():
        return check_input(_load_onnx(path))
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


def _load_onnx(path: Path) -> SourceModel:
    """An ONNX file as a source: its inputs in the layout the converted model takes
    (NHWC for NCHW), named as the graph names them (made signature-safe)."""
    from qdeploy.quantize import onnx_source

    model = onnx_source.load(path)
    for i in model.inputs:
        if not i.shape or any(d is None for d in i.shape[1:]):
            raise UserError(f"input {i.name} of {path.name} has shape {list(i.shape)}; the "
                            "Edge TPU needs every dimension but the batch fixed: export with "
                            "dynamic_axes for the batch only (or none)")
    names = unique_names([i.name for i in model.inputs], "input")
    inputs = [SourceInput(name, i.converted_shape, i.dtype)
              for name, i in zip(names, model.inputs)]
    return SourceModel(path, "onnx", model, inputs, unique_names(model.outputs, "output"))


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


def check_onnx_float(source: SourceModel, float_path: Path, inputs: dict) -> list:
    """ONNX Runtime vs the float TFLite (refused beyond the tolerance), and the
    TRANSPOSE ops onnx2tf left, as notes; the figure is kept for the manifest."""
    from qdeploy.quantize import onnx_source

    names = [i.name for i in source.inputs]
    check = onnx_source.check_float(source.obj, names, source.outputs, float_path, inputs)
    source.obj.float_check = check
    return [f"float TFLite vs ONNX Runtime: max difference {check.worst:.2e} of the output "
            f"range over {check.samples} calibration samples (tolerance "
            f"{check.tolerance:.0e})"] + onnx_source.transposes(source.obj, float_path)


def export_fixed_batch(source: SourceModel, target: Path, inputs: Optional[dict] = None
                       ) -> Path:
    """A SavedModel of the same weights whose only signature takes a batch of exactly 1,
    its arguments and outputs named as the source names its inputs and outputs. An ONNX
    source goes through onnx2tf, which sees the first input's calibration `inputs`."""
    tf = import_tf()

    check_input(source)
    if source.kind == "onnx":
        from qdeploy.quantize import onnx_source

        first = next(iter(inputs.values())) if inputs else None
        return onnx_source.export_saved_model(source.obj, [i.name for i in source.inputs],
                                              source.outputs, target, first)
    specs = [tf.TensorSpec(i.fixed_shape, tf.float32, name=i.name) for i in source.inputs]
    try:
        _export(tf, source, specs, target)
    except Exception as exc:  # tracing errors of many types: keep the meaningful line
        raise UserError(f"cannot re-export {source.path.name} with batch 1: "
                        f"{converter_message(str(exc))}") from None
    return target


def _export(tf, source: SourceModel, specs: list, target: Path) -> None:
    with quiet():
        if source.kind == "keras":
            keras = import_keras()
            model, names = source.obj, source.outputs

            def serve(*args):
                outputs = model(args[0] if len(args) == 1 else list(args))
                if not isinstance(outputs, (list, tuple)):
                    outputs = [outputs]
                return dict(zip(names, outputs))

            archive = keras.export.ExportArchive()
            archive.track(model)
            archive.add_endpoint("serving_default", serve, input_signature=specs)
            archive.write_out(str(target), verbose=False)
        else:
            serving = source.obj.signatures["serving_default"]
            names = [i.name for i in source.inputs]
            module = tf.Module()
            module.source = source.obj

            @tf.function(input_signature=specs)
            def serve(*args):
                return serving(**dict(zip(names, args)))

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


def convert_int8(saved_model: Path, inputs: dict, io: IOTypes,
                 progress: Optional[Callable[[int, int], None]] = None) -> bytes:
    """Full-integer conversion as the TFLite docs teach, calibrated on `inputs` (input
    name -> [N, ...] float array: one dict per sample, keyed by signature name)."""
    tf = import_tf()
    count = len(next(iter(inputs.values())))

    def representative_dataset():
        for i in range(count):
            if progress:
                progress(i + 1, count)
            yield {name: x[i][None].astype(np.float32) for name, x in inputs.items()}

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = getattr(tf, io.inputs)
    converter.inference_output_type = getattr(tf, io.outputs)
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


def check_integer_only(int8_path: Path, io: IOTypes) -> list:
    """The op names of the int8 model, after proving it has no float op or dynamic shape
    and every input and output has the dtype asked for.

    TFLiteConverter keeps an op that has no int8 kernel in float, wrapped in
    DEQUANTIZE/QUANTIZE, even with TFLITE_BUILTINS_INT8; the Edge TPU cannot run that,
    so it is refused here, naming the op and its float tensor. Float outputs asked for
    with --output-io float32 are fed by a DEQUANTIZE only, which is allowed.
    """
    interpreter = make_interpreter(int8_path)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    for op in ops:
        if op["op_name"] in EDGE_OPS:
            continue
        used = [i for i in list(op["inputs"]) + list(op["outputs"]) if i in tensors]
        floats = [tensors[i] for i in used
                  if np.dtype(tensors[i]["dtype"]).name not in INTEGER_DTYPES]
        if floats:
            raise UserError(f"op {op['op_name']} has no int8 kernel: the converter left it in "
                            f"float (tensor {floats[0]['name']} is "
                            f"{np.dtype(floats[0]['dtype']).name}), which the Edge TPU cannot "
                            "run; replace it in the model")
    for t in tensors.values():
        if -1 in list(t.get("shape_signature", [])):
            raise UserError(f"tensor {t['name']} has a dynamic shape after conversion; the Edge "
                            "TPU needs static shapes")
    inputs, outputs = signature.specs(interpreter, int8_path)
    for end, specs, wanted, option in (("input", inputs, io.inputs, "--io"),
                                       ("output", outputs, io.outputs, "--output-io")):
        for spec in specs:
            if spec.dtype != wanted:
                raise UserError(f"{end} {spec.name} is {spec.dtype} after conversion, not "
                                f"{wanted} ({option}): the converter sets the type of float "
                                f"{end}s only; make the model's {end} float (drop a final "
                                "cast or argmax: qrun takes the argmax itself)")
    return [op["op_name"] for op in ops]


def choose_task(int8_path: Path, labels: bool) -> mf.Task:
    """The model's task: a classifier when exactly one output is a [1, N] score vector
    (N > 1; a [1, 1] output is one value), else what the graph says (tasks.task_from_graph)."""
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
    extra = {}
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
    check = getattr(model, "float_check", None)
    if check is not None:
        record["onnxruntime_check"] = check.to_dict()
    return record
