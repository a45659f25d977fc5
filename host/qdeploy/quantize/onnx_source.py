"""ONNX source models (what `torch.onnx.export` writes) for convert's TFLiteConverter path.

The steps, top to bottom: check the file is an ONNX model that passes `onnx.checker` and
that onnx2tf has a converter for each of its ops; describe its inputs in the layout the
converted model will take (onnx2tf turns NCHW into NHWC: every 3- to 5-D input gets its
channel axis last); run onnx2tf (as pinned, in memory) in a temporary directory that holds
the calibration sample file onnx2tf would otherwise download, so it never reaches the
network; save the Keras model it builds as a fixed-batch SavedModel named as the ONNX
graph names its inputs and outputs. After the float conversion, `check_float` runs the
ONNX model with ONNX Runtime and the float `.tflite` on the calibration samples and
refuses the conversion when they disagree (onnx2tf can produce a wrong model silently);
`transposes` names the source ops behind the TRANSPOSE ops that onnx2tf leaves in.

The extra's packages are imported here only, so the rest of qdeploy runs without them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from qdeploy.quantize.tfquiet import quiet
from qdeploy.quantize.tfquiet import tensorflow as import_tf
from qrun.errors import UserError
from qrun.model.runtime import make_interpreter

# onnx2tf's version is pinned in one place, pyproject.toml's onnx extra (its comment says
# why); 2.x needs Python >= 3.12 and clamped negative uint8 outputs.
INSTALL = "pip install -e '.[onnx]' in the qdeploy checkout (one command, nothing after it)"
# onnx2tf reads this file from its working directory for any 3-channel 4-D input and
# downloads it when it is missing (a ConnectionError offline): it is always written.
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
SAMPLE_SHAPE = (20, 128, 128, 3)
TOLERANCE = 1e-3  # ONNX Runtime vs float TFLite: max |difference| / output's value range
CHECK_SAMPLES = 16
FLOAT_ELEMENTS = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}
ONNX2TF_OPTIONS = {}


@dataclass
class OnnxInput:
    name: str  # as the ONNX graph names it
    shape: tuple  # ONNX layout (NCHW); None for a symbolic dim (batch_size)
    dtype: str

    @property
    def transposed(self) -> bool:
        """onnx2tf moves the channel axis of a 3- to 5-D input last."""
        return 3 <= len(self.shape) <= 5

    @property
    def converted_shape(self) -> tuple:
        """The shape of the converted model's input (NHWC for an NCHW input)."""
        s = self.shape
        return (s[0], *s[2:], s[1]) if self.transposed else tuple(s)


@dataclass
class OnnxModel:
    """An ONNX file checked and described: what convert records and feeds."""

    path: Path
    proto: object  # onnx.ModelProto
    inputs: list  # OnnxInput, graph order
    outputs: list  # output names, graph order
    opset: int
    producer: str
    float_check: Optional["FloatCheck"] = None  # set by convert after the float conversion
    head: Optional[object] = None  # onnx_yolo.Head: a YOLO head found (and rewritten)
    rewrites: list = field(default_factory=list)  # what onnx_yolo.prepare changed, as notes

    @property
    def layout(self) -> dict:
        """What the manifest's converter.extra records about the layout change."""
        moved = [i.name for i in self.inputs if i.transposed]
        return {"source_layout": "NCHW" if moved else "as ONNX",
                "model_layout": "NHWC" if moved else "as ONNX",
                "transposed_inputs": moved,
                "onnx_input_shapes": {i.name: list(i.shape) for i in self.inputs},
                "onnx_rewrites": list(self.rewrites)}


def imports():
    """(onnx, onnxruntime, onnx2tf), or one UserError line saying how to install them."""
    missing = [m for m in ("onnx", "onnxruntime", "onnx2tf", "tf_keras", "onnx_graphsurgeon")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"converting ONNX models needs {', '.join(missing)} (the onnx extra): "
                        f"{INSTALL}")
    import onnx
    import onnxruntime

    with quiet(), contextlib.redirect_stdout(io.StringIO()), kept_global_state():
        import onnx2tf
    return onnx, onnxruntime, onnx2tf


def onnx2tf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnx2tf")
    except PackageNotFoundError:
        return "(not installed)"


@contextlib.contextmanager
def kept_global_state():
    """Undo what importing onnx2tf does to the process: it sets TF_USE_LEGACY_KERAS=1
    (TFLiteConverter then treats Keras 3 models as tf_keras ones), seeds Python's, numpy's
    and TensorFlow's generators with 0 and turns on TensorFlow's op determinism."""
    import random

    env = {k: os.environ.get(k) for k in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL",
                                          "CUDA_VISIBLE_DEVICES")}
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        random.setstate(py_state)
        np.random.set_state(np_state)
        from tensorflow.python.framework import config as tf_config

        disable = getattr(tf_config, "disable_op_determinism", None)
        if disable is not None:
            disable()


def load(path: Path, input_shape: Optional[str] = None,
         task: Optional[str] = None) -> OnnxModel:
    """Read and check an ONNX file; refuse what onnx2tf cannot convert before any slow work.
    `input_shape` ("1,3,640,640", the ONNX layout) fixes a dynamic input's size; `task`
    is --task (a detector whose head no decoder knows is refused unless it is raw)."""
    onnx, _, _ = imports()
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # DecodeError and friends: a file that is not ONNX
        raise UserError(f"{path} is not an ONNX model ({type(exc).__name__}: "
                        f"{first_line(exc)}); export it with torch.onnx.export") from None
    if not proto.graph.node:
        raise UserError(f"{path} holds no ONNX graph; export the model with torch.onnx.export")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise UserError(f"{path} fails onnx.checker ({first_line(exc)}); export it again "
                        "(torch.onnx.export) or fix the graph") from None
    unconvertible = sorted({n.op_type for n in proto.graph.node
                            if n.domain not in ("", "ai.onnx") or
                            importlib.util.find_spec(f"onnx2tf.ops.{n.op_type}") is None})
    if unconvertible:
        nodes = [n for n in proto.graph.node if n.op_type in unconvertible]
        where = ", ".join(f"{n.op_type} ({n.name or 'unnamed'}"
                          f"{', domain ' + n.domain if n.domain else ''})" for n in nodes[:3])
        raise UserError(f"{path.name}: onnx2tf {onnx2tf_version()} has no converter for op "
                        f"{where}; replace it in the model before exporting (or export with "
                        "another opset)")
    inits = {i.name for i in proto.graph.initializer}
    inputs = [OnnxInput(v.name, shape_of(v), element_type(v))
              for v in proto.graph.input if v.name not in inits]
    if input_shape is not None:
        inputs = [fixed_input(proto, inputs, input_shape, Path(path))]
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    producer = " ".join(p for p in (proto.producer_name, proto.producer_version) if p)
    from qdeploy.quantize import onnx_yolo

    if task is None and declared_task(proto) == "detect":
        onnx_yolo.check_known_head(proto, Path(path).name)
    head, rewrites = onnx_yolo.prepare(proto)  # in memory: the user's file is never written
    return OnnxModel(Path(path), proto, inputs, [o.name for o in proto.graph.output],
                     opset, producer or "unknown", head=head, rewrites=rewrites)


def declared_task(proto) -> Optional[str]:
    """The `task` Ultralytics writes into metadata_props ("detect", ...), a plain string."""
    value = next((p.value for p in proto.metadata_props if p.key == "task"), None)
    return value.strip().strip("'\"") if value else None


def fixed_input(proto, inputs: list, text: str, path: Path) -> OnnxInput:
    """The one input given the shape `--input-shape` names (its dims also set in the
    graph, so shape inference and onnx2tf see them); a UserError when it cannot fit."""
    if len(inputs) != 1:
        raise UserError(f"--input-shape fixes a model with one input; {path.name} has "
                        f"{len(inputs)} ({', '.join(i.name for i in inputs)})")
    spec = inputs[0]
    try:
        dims = [int(d) for d in text.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        dims = []
    fits = (len(dims) == len(spec.shape) and all(d > 0 for d in dims) and
            all(s is None or s == d for s, d in zip(spec.shape[1:], dims[1:])))
    if not fits:
        raise UserError(f"--input-shape {text!r} does not fit input {spec.name} of "
                        f"{path.name}, shape {['?' if d is None else d for d in spec.shape]}; "
                        "give every dimension in the ONNX layout, e.g. 1,3,640,640")
    dims[0] = 1
    value = next(v for v in proto.graph.input if v.name == spec.name)
    for dim, size in zip(value.type.tensor_type.shape.dim, dims):
        dim.Clear()
        dim.dim_value = size
    return OnnxInput(spec.name, tuple(dims), spec.dtype)


def task_with_head(task, model: OnnxModel):
    """The manifest task with what the YOLO head rewrite did to the boxes (onnx_yolo)."""
    import dataclasses

    head = model.head
    if head is None or task.decoder != head.decoder:
        return task
    return dataclasses.replace(task, params={**task.params, **head.params})


def shape_of(value) -> tuple:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in dims)


def element_type(value) -> str:
    return FLOAT_ELEMENTS.get(value.type.tensor_type.elem_type,
                              f"ONNX element type {value.type.tensor_type.elem_type}")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def sample_file(directory: Path, calibration: Optional[np.ndarray]) -> Path:
    """The sample file onnx2tf reads instead of downloading: calibration images (NHWC
    float, resized to 128x128) when there are some, else seeded values in [0, 1]."""
    target = Path(directory) / SAMPLE_FILE
    if calibration is not None and calibration.ndim == 4 and calibration.shape[-1] == 3:
        tf = import_tf()
        resized = tf.image.resize(calibration[:SAMPLE_SHAPE[0]].astype(np.float32),
                                  SAMPLE_SHAPE[1:3]).numpy()
        reps = -(-SAMPLE_SHAPE[0] // len(resized))
        data = np.concatenate([resized] * reps)[:SAMPLE_SHAPE[0]]
    else:
        data = np.random.default_rng(0).random(SAMPLE_SHAPE, dtype=np.float32)
    np.save(target, data.astype(np.float32))
    return target


@contextlib.contextmanager
def working_directory(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_onnx2tf(model: OnnxModel, calibration: Optional[np.ndarray]):
    """The tf_keras model onnx2tf builds, batch 1, in a temporary working directory.

    onnx2tf gets a copy of the (possibly rewritten) graph in that directory, never the
    user's file: it writes its op-renaming step back over the file it is given."""
    onnx, _, onnx2tf = imports()
    shapes = [f"{i.name}:{','.join(str(d) for d in (1, *i.shape[1:]))}" for i in model.inputs]
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="qdeploy-onnx2tf-") as work:
        copy = Path(work) / "model.onnx"
        onnx.save(model.proto, str(copy))
        sample_file(Path(work), calibration)
        import tf_keras

        # A second conversion in one process reuses tf_keras' layer names (`..._1`) and
        # its int8 model came out different (a YOLOv5 score 0.71 instead of 0.98):
        # every conversion starts from a clean Keras session.
        tf_keras.backend.clear_session()
        try:
            with working_directory(Path(work)), quiet(), contextlib.redirect_stdout(log):
                return onnx2tf.convert(input_onnx_file_path=str(copy),
                                       overwrite_input_shape=shapes, disable_model_save=True,
                                       non_verbose=True, not_use_onnxsim=True,
                                       **ONNX2TF_OPTIONS)
        except (Exception, SystemExit) as exc:  # onnx2tf exits on some errors
            node = getattr(exc, "onnx_op_name", None)
            said = (last_error(log.getvalue()) if isinstance(exc, SystemExit) or
                    not str(exc).strip() else first_line(exc))
            raise UserError(f"onnx2tf could not convert {model.path.name}"
                            f"{f' at node {node}' if node else ''}: {said}; replace that op "
                            "or export with another opset") from None


def last_error(log: str) -> str:
    """onnx2tf's own last error line (it prints, then exits with a bare code)."""
    lines = [strip_colours(ln).strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
    said = (errors or lines or ["no message"])[-1]
    return said.split("ERROR:", 1)[-1].strip()[:200]


def strip_colours(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def export_saved_model(model: OnnxModel, names: list, output_names: list, target: Path,
                       calibration: Optional[np.ndarray] = None) -> Path:
    """A SavedModel of the onnx2tf model: `serving_default` takes a batch of exactly 1 of
    each input (named `names`, in the layout `converted_shape` says) and returns the
    outputs keyed by `output_names`, in the ONNX graph's order."""
    tf = import_tf()
    keras_model = run_onnx2tf(model, calibration)
    got = [(1, *t.shape[1:]) for t in keras_model.inputs]  # batch: None or 1
    want = [(1, *i.converted_shape[1:]) for i in model.inputs]
    if got != want:
        raise UserError(f"onnx2tf made inputs of shape {got} from {model.path.name}, not the "
                        f"{want} qdeploy expects (NCHW moved to NHWC); give the model's input "
                        "with its channel axis second, as torch.onnx.export writes it")
    specs = [tf.TensorSpec(s, tf.float32, name=n) for s, n in zip(want, names)]
    module = tf.Module()
    # The variables only, not the Keras model: saving a tracked Keras model traces and
    # serializes every layer's call (60 of 75 s for a 640 YOLOv8n); the serving function
    # is all the converter reads.
    module.weights = list(keras_model.weights)

    @tf.function(input_signature=specs)
    def serve(*args):
        outputs = keras_model(list(args) if len(args) > 1 else args[0])
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        return dict(zip(output_names, outputs))

    try:
        with quiet():
            tf.saved_model.save(module, str(target), signatures={"serving_default": serve})
    except Exception as exc:
        raise UserError(f"cannot save onnx2tf's model of {model.path.name} as a SavedModel: "
                        f"{first_line(exc)}") from None
    return target


def to_onnx_layout(x: np.ndarray, spec: OnnxInput) -> np.ndarray:
    """Samples [N, *converted shape] back in the ONNX input's layout (NHWC -> NCHW)."""
    if not spec.transposed:
        return x
    return np.moveaxis(x, -1, 1)


def from_onnx_layout(x: np.ndarray, spec: OnnxInput) -> np.ndarray:
    """Samples [N, *ONNX shape] in the converted model's layout (NCHW -> NHWC)."""
    if not spec.transposed:
        return x
    return np.moveaxis(x, 1, -1)


@dataclass
class FloatCheck:
    """ONNX Runtime vs the float TFLite on the calibration samples."""

    samples: int
    worst: float  # max |difference| / the output's value range over the samples (worst output)
    output: str  # the output it was on
    tolerance: float = TOLERANCE

    def to_dict(self) -> dict:
        return {"samples": self.samples, "max_relative_difference": float(self.worst),
                "output": self.output, "tolerance": self.tolerance}


def check_float(model: OnnxModel, names: list, output_names: list, float_path: Path,
                inputs: dict, tolerance: float = TOLERANCE,
                count: int = CHECK_SAMPLES) -> FloatCheck:
    """Refuse a float TFLite that does not compute what the ONNX model computes.

    `inputs` maps the converted model's input names to [N, *converted shape] float
    arrays (the calibration samples). Each output is compared with ONNX Runtime's on up
    to `count` samples, a 3- to 5-D output brought back to channels-second first.
    """
    _, ort, _ = imports()
    session = ort.InferenceSession(model.proto.SerializeToString(),  # as rewritten
                                   providers=["CPUExecutionProvider"])
    with quiet():  # the XNNPACK delegate announces itself on stderr
        interpreter = make_interpreter(float_path)
    from qdeploy.quantize import signature

    by_name_in, by_name_out = signature.names(float_path)
    in_details = {by_name_in.get(d["index"], d["name"]): d
                  for d in interpreter.get_input_details()}
    out_details = {by_name_out.get(d["index"], d["name"]): d
                   for d in interpreter.get_output_details()}
    samples = min(count, len(next(iter(inputs.values()))))
    diffs = {name: 0.0 for name in output_names}
    values = {name: [] for name in output_names}
    for k in range(samples):
        feed = {}
        for spec, name in zip(model.inputs, names):
            x = inputs[name][k][None].astype(np.float32)
            interpreter.set_tensor(in_details[name]["index"], x)
            feed[spec.name] = to_onnx_layout(x, spec)
        interpreter.invoke()
        expected = session.run(model.outputs, feed)
        for onnx_name, name, want in zip(model.outputs, output_names, expected):
            raw = interpreter.get_tensor(out_details[name]["index"])
            got = aligned(raw, np.asarray(want))
            if got is None:
                raise UserError(f"the float TFLite's output {name} has shape {list(raw.shape)}"
                                f", ONNX Runtime's {onnx_name} {list(np.shape(want))}: onnx2tf "
                                "changed the model; qdeploy cannot convert it")
            diffs[name] = max(diffs[name], float(np.abs(got - want).max()))
            values[name] += [float(np.min(want)), float(np.max(want))]
    relative = {name: diffs[name] / ((max(values[name]) - min(values[name])) or
                                     max(abs(v) for v in values[name]) or 1.0)
                for name in output_names}
    where = max(relative, key=relative.get)
    worst = relative[where]
    check = FloatCheck(samples, worst, where, tolerance)
    if worst > tolerance:
        raise UserError(f"onnx2tf converted {model.path.name} wrongly: the float TFLite differs "
                        f"from ONNX Runtime by {worst:.2%} of the output range on output {where} "
                        f"(max over {samples} calibration samples; tolerance {tolerance:.2%}); "
                        "qdeploy refuses to quantize it")
    return check


def aligned(got: np.ndarray, want: np.ndarray) -> Optional[np.ndarray]:
    """The TFLite output in ONNX Runtime's layout, or None when no layout matches."""
    if got.shape == want.shape:
        return got.astype(np.float32)
    if 3 <= got.ndim <= 5 and np.moveaxis(got, -1, 1).shape == want.shape:
        return np.moveaxis(got, -1, 1).astype(np.float32)
    return None


def transposes(model: OnnxModel, float_path: Path) -> list:
    """One line per TRANSPOSE in the converted model, naming the ONNX op behind it when
    it can: a Flatten or Reshape of an NCHW map with more than one position (PyTorch's
    Flatten -> Linear), which onnx2tf can only keep right by transposing back to NCHW."""
    from qdeploy.modelfile import tflite_graph

    count = sum(1 for op in tflite_graph.load(float_path).ops if op.name == "TRANSPOSE")
    if not count:
        return []
    causes = reshapes_of_maps(model)
    cause = ("; from " + ", ".join(causes) if causes else "")
    fix = ("a detection head reshapes its maps to [1, C, N] itself; the Edge TPU "
           "compiler leaves the ops after the first one it cannot map on the CPU"
           if model.head is not None else
           "a GlobalAveragePool before the Flatten, or flattening a 1x1 map, avoids it")
    return [f"{count} TRANSPOSE op{'s' if count > 1 else ''} left by onnx2tf{cause}: "
            "edgetpu_compiler 16 often runs TRANSPOSE on the CPU (qdeploy compile's "
            f"preflight names it); {fix}"]


def reshapes_of_maps(model: OnnxModel) -> list:
    """'Flatten flatten of a [1, 4, 8, 8] map' for each Flatten/Reshape of a 4-D map
    whose spatial size is more than 1 (shapes by ONNX shape inference)."""
    onnx, _, _ = imports()
    try:
        inferred = onnx.shape_inference.infer_shapes(model.proto)
    except Exception:
        return []
    values = list(inferred.graph.value_info) + list(inferred.graph.input)
    shapes = {v.name: shape_of(v) for v in values}
    found = []
    for node in inferred.graph.node:
        if node.op_type not in ("Flatten", "Reshape") or not node.input:
            continue
        shape = shapes.get(node.input[0])
        if shape and len(shape) >= 3 and any(d != 1 for d in shape[2:]):
            dims = [1 if d is None else d for d in shape]
            found.append(f"{node.op_type} {node.name or node.output[0]} of a {dims} NCHW map")
    return found
