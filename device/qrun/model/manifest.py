"""`manifest.json`: what a deployment directory holds, how to feed its models, what they do.

Written by `qdeploy convert` and `qdeploy import` (and updated by `compile` and
`evaluate`), read by every later step on the host and by `qrun` on the device.
Artifacts are listed by role (qrun.model.layout: "float", "int8", "edgetpu", "labels",
"reference") with their sha256 and size, so a push can tell what changed and a device
can verify what it received. Schema 2 lists every input and output (`inputs`,
`outputs`: TensorSpec objects in the interpreter's order) and the `task` (`Task`:
classify, detect, segment, pose or raw, which output is what, the decoder); a schema-1
manifest (one `input`, one `output`, always a classifier) is read and migrated in
memory. How the models were made is recorded as typed records (`Converter`,
`Compiled`, and `Fidelity`: convert's float-vs-int8 gate, a top-level key older readers
skip); keys this version does not know are kept as read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

from qrun import atomic
from qrun.errors import UserError
from qrun.model.layout import (CONVERT_FILES, EDGETPU, FLOAT, INT8, LABELS, MANIFEST_NAME,  # noqa: F401
                         MODEL_ROLES, REFERENCE)
from qrun.model.preprocess import Preprocess
from qrun.model.tensors import PerAxis, TensorSpec
# Task kinds and output roles (the keys of Task.outputs): defined with their rules.
from qrun.tasks.roles import (BOXES, CLASSES, CLASSIFY, COUNT, DETECT, HEAD,  # noqa: F401
                              KEYPOINTS, MASK, POSE, RAW, SCORES, SEGMENT, TASK_KINDS)

SCHEMA_VERSION = 2
READS = (1, 2)  # the schema versions this module reads

HASH_CHUNK = 1 << 20


@dataclass
class Artifact:
    """One file of the deployment, relative to the manifest's directory."""

    file: str
    sha256: str
    size: int


@dataclass
class Converter:
    """How `qdeploy convert` made the models: the manifest's `converter` object.

    A field is None when the manifest does not record it, and is then left out of the
    JSON; keys this version does not know are kept in `extra` and written back.
    """

    tool: Optional[str] = None  # "tf.lite.TFLiteConverter.from_saved_model"
    tensorflow: Optional[str] = None  # TensorFlow's version
    optimizations: Optional[list] = None  # ["DEFAULT"]
    supported_ops: Optional[list] = None  # ["TFLITE_BUILTINS_INT8"]
    inference_io_type: Optional[str] = None  # the int8 model's I/O: "uint8" or "int8"
    batch_fixed_to_1: Optional[bool] = None  # the re-export changed the source's batch
    source_input_shape: Optional[list] = None  # as the source declared it; null: dynamic
    source_model: Optional[str] = None  # its file or SavedModel directory name
    source_kind: Optional[str] = None  # "keras" or "saved_model"
    extra: dict = field(default_factory=dict)

    KINDS: ClassVar[dict] = {
        "tool": "a string", "tensorflow": "a string", "optimizations": "a list of strings",
        "supported_ops": "a list of strings", "inference_io_type": "a string",
        "batch_fixed_to_1": "true or false",
        "source_input_shape": "a list of integers and nulls", "source_model": "a string",
        "source_kind": "a string",
    }

    def to_dict(self) -> dict:
        recorded = {key: getattr(self, key) for key in self.KINDS}
        return {**{k: v for k, v in recorded.items() if v is not None}, **self.extra}

    @classmethod
    def from_dict(cls, value: dict) -> "Converter":
        """Read the `converter` object; a wrong field is a ValueError naming it."""
        return cls(**record_fields(value, "converter", cls.KINDS))


@dataclass
class Compiled:
    """What `qdeploy compile` recorded: the manifest's `compiled` object.

    Every field is written, null when unknown (as compile always wrote them); keys this
    version does not know are kept in `extra` and written back.
    """

    compiler_version: Optional[str] = None  # "16.0.384591198"
    min_runtime: Optional[int] = None  # the oldest Edge TPU runtime the model runs on
    edgetpu_subgraphs: Optional[int] = None
    ops_on_edgetpu: Optional[int] = None
    ops_on_cpu: Optional[int] = None
    log: Optional[str] = None  # the compiler's .log, beside the compiled model
    extra: dict = field(default_factory=dict)

    KINDS: ClassVar[dict] = {
        "compiler_version": "a string", "min_runtime": "an integer",
        "edgetpu_subgraphs": "an integer", "ops_on_edgetpu": "an integer",
        "ops_on_cpu": "an integer", "log": "a string",
    }

    def to_dict(self) -> dict:
        return {**{key: getattr(self, key) for key in self.KINDS}, **self.extra}

    @classmethod
    def from_dict(cls, value: dict) -> "Compiled":
        """Read the `compiled` object; a wrong field is a ValueError naming it."""
        return cls(**record_fields(value, "compiled", cls.KINDS))


@dataclass
class Fidelity:
    """What convert's fidelity gate measured: the manifest's `fidelity` object.

    The float and the int8 model on samples held back from calibration (`held_back`
    False: the dataset had none to spare, calibration samples were used), compared in the
    task's terms (qrun.measure.agreement): `metric` names the figure `value`
    ("top1_agreement", "detection_agreement", "pixel_agreement": a share in 0..1;
    "keypoint_distance": in units of the input's size); `text` says it in words, `cause`
    why int8 lost it (when `ok` is false), `output` the output read. Older readers
    ignore the object; keys this version does not know are kept in `extra`.
    """

    task: Optional[str] = None
    metric: Optional[str] = None
    value: Optional[float] = None
    ok: Optional[bool] = None
    samples: Optional[int] = None
    held_back: Optional[bool] = None
    output: Optional[str] = None
    text: Optional[str] = None
    cause: Optional[str] = None
    seconds: Optional[float] = None  # what the gate cost
    extra: dict = field(default_factory=dict)

    KINDS: ClassVar[dict] = {
        "task": "a string", "metric": "a string", "value": "a number", "ok": "true or false",
        "samples": "an integer", "held_back": "true or false", "output": "a string",
        "text": "a string", "cause": "a string", "seconds": "a number",
    }

    def to_dict(self) -> dict:
        recorded = {key: getattr(self, key) for key in self.KINDS}
        return {**{k: v for k, v in recorded.items() if v is not None}, **self.extra}

    @classmethod
    def from_dict(cls, value: dict) -> "Fidelity":
        """Read the `fidelity` object; a wrong field is a ValueError naming it."""
        return cls(**record_fields(value, "fidelity", cls.KINDS))


@dataclass
class Task:
    """What the model does: the manifest's `task` object.

    `outputs` names the output each role reads (SCORES, BOXES, CLASSES, COUNT, MASK,
    KEYPOINTS, HEAD) by its position in `Manifest.outputs`; `decoder` and `params` are
    what turns those outputs into objects, masks or keypoints (e.g. "ssd_postprocess",
    "yolov8" with {"classes": 80}); `source` and `reason` say how the task was chosen.
    """

    kind: str = CLASSIFY
    labels: Optional[str] = None  # the artifact role of the labels file, when it has one
    outputs: dict = field(default_factory=dict)  # output role -> position in outputs
    decoder: Optional[str] = None
    params: dict = field(default_factory=dict)
    source: Optional[str] = None  # "convert", "metadata", "ultralytics", "option", "graph", ...
    reason: Optional[str] = None
    extra: dict = field(default_factory=dict)

    KINDS: ClassVar[dict] = {
        "kind": "a string", "labels": "a string", "outputs": "an object",
        "decoder": "a string", "params": "an object", "source": "a string",
        "reason": "a string",
    }

    def to_dict(self) -> dict:
        recorded = {key: getattr(self, key) for key in self.KINDS}
        return {**{k: v for k, v in recorded.items() if v not in (None, {})}, **self.extra}

    @classmethod
    def from_dict(cls, value, outputs: int) -> "Task":
        """Read the `task` object for a model with `outputs` outputs; ValueError naming
        the wrong field."""
        task = cls(**record_fields(value, "task", cls.KINDS))
        if task.kind not in TASK_KINDS:
            raise ValueError(f"field task.kind is {task.kind!r}, not one of "
                             f"{', '.join(TASK_KINDS)}")
        for role, position in task.outputs.items():
            if not (isinstance(position, int) and not isinstance(position, bool)
                    and 0 <= position < outputs):
                raise ValueError(f"field task.outputs.{role} is {position!r}, not the position "
                                 f"of one of the model's {outputs} output(s) (0-{outputs - 1})")
        return task

    def output(self, role: str) -> Optional[int]:
        """The position of the output playing `role`, or None."""
        return self.outputs.get(role)


def classifier_task(labels: bool) -> Task:
    """The task of a single-output classifier (what every schema-1 manifest described)."""
    return Task(CLASSIFY, labels=LABELS if labels else None, outputs={SCORES: 0})


@dataclass
class Manifest:
    inputs: list  # TensorSpec, in the interpreter's order
    outputs: list  # TensorSpec, in the interpreter's order
    preprocess: Preprocess
    task: Task = field(default_factory=Task)
    artifacts: dict = field(default_factory=dict)  # role -> Artifact
    labels: Optional[str] = None  # role "labels" file name, for convenience
    converter: Converter = field(default_factory=Converter)
    calibration: dict = field(default_factory=dict)
    compiled: Optional[Compiled] = None
    evaluation: Optional[dict] = None
    fidelity: Optional[Fidelity] = None  # convert's fidelity gate (absent before it)
    created: str = ""
    qdeploy_version: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        """`converter` and `compiled` may also be given as their JSON objects."""
        if isinstance(self.converter, dict):
            self.converter = Converter.from_dict(self.converter)
        if isinstance(self.compiled, dict):
            self.compiled = Compiled.from_dict(self.compiled)
        if isinstance(self.fidelity, dict):
            self.fidelity = Fidelity.from_dict(self.fidelity)
        if isinstance(self.task, dict):
            self.task = Task.from_dict(self.task, len(self.outputs))

    @property
    def input(self) -> TensorSpec:
        """The first input: the image of a single-input model."""
        return self.inputs[0]

    @property
    def output(self) -> TensorSpec:
        """The output the task reads first (a classifier's scores), else the first one."""
        roles = list(self.task.outputs.values())
        return self.outputs[roles[0] if roles else 0]

    def path_of(self, root: Path, role: str) -> Optional[Path]:
        """Absolute path of the artifact with `role`, or None if the manifest has none."""
        art = self.artifacts.get(role)
        return Path(root) / art.file if art else None

    def to_dict(self) -> dict:
        """The schema-2 JSON object (whatever schema the manifest was read from)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "task": self.task.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "artifacts": {role: asdict(a) for role, a in self.artifacts.items()},
            "labels": self.labels,
            "converter": self.converter.to_dict(),
            "calibration": self.calibration,
            "compiled": self.compiled.to_dict() if self.compiled is not None else None,
            "evaluation": self.evaluation,
            **({"fidelity": self.fidelity.to_dict()} if self.fidelity is not None else {}),
            "created": self.created,
            "qdeploy_version": self.qdeploy_version,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        """Read a manifest's JSON object; every way it can be wrong is one UserError naming
        manifest.json and the field (a hand-edited manifest must not give wrong numbers)."""
        if "schema_version" not in d:
            raise UserError("manifest.json has no schema_version: it was not written by qdeploy")
        version = d["schema_version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise bad(f"has schema_version {version!r}, not a number")
        if version > SCHEMA_VERSION:
            raise UserError(f"manifest.json has schema version {version}, newer than this "
                            f"qdeploy/qrun understands ({SCHEMA_VERSION}); upgrade qdeploy")
        if version not in READS:
            raise bad(f"has schema_version {version}; qdeploy wrote versions "
                      f"{', '.join(map(str, READS))}")
        try:
            inputs, outputs, task = (tensors_v1(d) if version == 1 else tensors_v2(d))
            pre = Preprocess.from_dict(d.get("preprocess") or {})
            check_channels(pre, inputs[0])
            compiled = typed(d, "compiled", dict, None)
            fidelity = typed(d, "fidelity", dict, None)
            return cls(
                inputs=inputs,
                outputs=outputs,
                task=task,
                preprocess=pre,
                artifacts=artifacts(d.get("artifacts", {})),
                labels=typed(d, "labels", str, None),
                converter=Converter.from_dict(typed(d, "converter", dict, None) or {}),
                calibration=typed(d, "calibration", dict, None) or {},
                compiled=Compiled.from_dict(compiled) if compiled is not None else None,
                evaluation=typed(d, "evaluation", dict, None),
                fidelity=Fidelity.from_dict(fidelity) if fidelity is not None else None,
                created=typed(d, "created", str, ""),
                qdeploy_version=typed(d, "qdeploy_version", str, ""),
                schema_version=version,
            )
        except ValueError as exc:
            raise bad(str(exc)) from None


def tensors_v1(d: dict) -> tuple:
    """inputs, outputs and task of a schema-1 manifest: one input, one output, a classifier."""
    inputs = [tensor_spec(d.get("input"), "input")]
    outputs = [tensor_spec(d.get("output"), "output")]
    return inputs, outputs, classifier_task(bool(d.get("labels")))


def tensors_v2(d: dict) -> tuple:
    """inputs, outputs and task of a schema-2 manifest."""
    ends = []
    for key in ("inputs", "outputs"):
        value = d.get(key)
        if not isinstance(value, list) or not value:
            raise ValueError(f"field {key} is {value!r}, not a list of tensor objects")
        ends.append([tensor_spec(t, f"{key}[{i}]") for i, t in enumerate(value)])
    inputs, outputs = ends
    return inputs, outputs, Task.from_dict(typed(d, "task", dict, None) or {}, len(outputs))


def bad(problem: str) -> UserError:
    """The error for a manifest that qdeploy could not have written."""
    return UserError(f"manifest.json {problem}; re-run qdeploy convert to write it again")


def typed(d: dict, key: str, kind: type, default):
    """d[key] if it is a `kind` (or null/absent: `default`), else ValueError naming the field."""
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        what = "a string" if kind is str else "an object"
        raise ValueError(f"field {key} is {value!r}, not {what}")
    return value


# What a field of a record may hold (null always may: the manifest does not record it).
CHECKS = {
    "a string": lambda v: isinstance(v, str),
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "true or false": lambda v: isinstance(v, bool),
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "a list of integers and nulls": lambda v: isinstance(v, list) and all(
        x is None or (isinstance(x, int) and not isinstance(x, bool)) for x in v),
    "an object": lambda v: isinstance(v, dict),
    "a number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def record_fields(value, name: str, kinds: dict) -> dict:
    """The keyword arguments of a record from its JSON object `name`: the keys in `kinds`,
    each checked (CHECKS), and every other key under "extra"; ValueError naming the field."""
    if not isinstance(value, dict):
        raise ValueError(f"field {name} is {value!r}, not an object")
    for key, what in kinds.items():
        item = value.get(key)
        if item is not None and not CHECKS[what](item):
            raise ValueError(f"field {name}.{key} is {item!r}, not {what}")
    known = {k: v for k, v in value.items() if k in kinds}
    return {**known, "extra": {k: v for k, v in value.items() if k not in kinds}}


TENSOR_FIELDS = ("shape", "dtype", "scale", "zero_point", "name", "index", "per_axis")


def tensor_spec(value, name: str) -> TensorSpec:
    """A TensorSpec from one of the manifest's tensor objects (`input`, `outputs[1]`, ...)."""
    if not isinstance(value, dict):
        raise ValueError(f"field {name} is {value!r}, not an object with shape and dtype")
    unknown = sorted(set(value) - set(TENSOR_FIELDS))
    if unknown or not {"shape", "dtype"} <= set(value):
        raise ValueError(f"field {name} has fields {sorted(value)}; it needs shape, dtype, "
                         "scale and zero_point (and may have name, index, per_axis)")
    spec = TensorSpec(**{**value, "per_axis": per_axis(value.get("per_axis"), name)})
    if not (isinstance(spec.shape, list) and all(isinstance(n, int) for n in spec.shape)):
        raise ValueError(f"{name}.shape is {spec.shape!r}, not a list of integers")
    if not isinstance(spec.dtype, str):
        raise ValueError(f"{name}.dtype is {spec.dtype!r}, not a string")
    if not isinstance(spec.scale, (int, float)) or not isinstance(spec.zero_point, int):
        raise ValueError(f"{name} has scale {spec.scale!r} and zero_point "
                         f"{spec.zero_point!r}; they must be numbers")
    if not isinstance(spec.name, str):
        raise ValueError(f"{name}.name is {spec.name!r}, not a string")
    if spec.index is not None and not CHECKS["an integer"](spec.index):
        raise ValueError(f"{name}.index is {spec.index!r}, not an integer")
    return spec


def per_axis(value, name: str) -> Optional[PerAxis]:
    """The PerAxis of a tensor object's `per_axis` field (None when absent)."""
    if value is None:
        return None
    ok = (isinstance(value, dict) and set(value) == {"axis", "scales", "zero_points"}
          and isinstance(value["axis"], int) and isinstance(value["scales"], list)
          and isinstance(value["zero_points"], list)
          and all(isinstance(s, (int, float)) for s in value["scales"])
          and all(isinstance(z, int) for z in value["zero_points"])
          and len(value["scales"]) == len(value["zero_points"]))
    if not ok:
        raise ValueError(f"{name}.per_axis is {value!r}; it needs axis (an integer) and "
                         "scales and zero_points (lists of numbers of one length)")
    return PerAxis(value["axis"], tuple(value["scales"]), tuple(value["zero_points"]))


def check_channels(pre: Preprocess, inp: TensorSpec) -> None:
    """Refuse preprocessing whose channel count (per-channel mean/std, color) the model's
    input does not have: it would fail on every image, blaming the image."""
    wanted = pre.channels()
    shape = inp.shape
    has = shape[3] if len(shape) == 4 else 1 if len(shape) == 3 else None
    if wanted is not None and has is not None and wanted != has:
        raise ValueError(f"preprocess (mean {pre.to_dict()['mean']}, std "
                         f"{pre.to_dict()['std']}, color {pre.color}) is for {wanted} "
                         f"channel(s), but the model input {shape} has {has}")


def artifacts(value) -> dict:
    """role -> Artifact from the manifest's `artifacts` object."""
    if not isinstance(value, dict):
        raise ValueError(f"field artifacts is {value!r}, not an object of role: file entries")
    out = {}
    for role, a in value.items():
        if not isinstance(a, dict) or set(a) != {"file", "sha256", "size"}:
            raise ValueError(f"artifact {role} is {a!r}; it needs file, sha256 and size")
        kinds = {"file": str, "sha256": str, "size": int}
        wrong = [f"{key} {a[key]!r}" for key, kind in kinds.items()
                 if not isinstance(a[key], kind) or isinstance(a[key], bool) or a[key] == ""]
        if wrong:
            raise ValueError(f"artifact {role} has {', '.join(wrong)}; file and sha256 must "
                             "be strings, size an integer")
        out[role] = Artifact(**a)
    return out


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_for(path: Path) -> Artifact:
    """An Artifact record for a file, named relative to its own directory."""
    path = Path(path)
    return Artifact(file=path.name, sha256=sha256_file(path), size=path.stat().st_size)


def find(path: Path) -> Optional[Path]:
    """The manifest for a directory, or for the directory of a model file, if there is one."""
    path = Path(path)
    candidate = path / MANIFEST_NAME if path.is_dir() else path.parent / MANIFEST_NAME
    return candidate if candidate.is_file() else None


def load(directory: Path, foreign_ok: bool = False) -> Optional[Manifest]:
    """Read `directory/manifest.json`, with one clear error for each way it can be wrong.

    With `foreign_ok`, a JSON file that is plainly not a qdeploy manifest (an object without
    schema_version, e.g. a web app's manifest.json) gives None instead of an error.
    """
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{directory} has no {MANIFEST_NAME}; run qdeploy convert first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); re-run qdeploy convert") from None
    if foreign_ok and isinstance(data, (dict, list)) and "schema_version" not in data:
        return None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a qdeploy manifest; re-run qdeploy convert")
    return Manifest.from_dict(data)


def save(manifest: Manifest, directory: Path) -> Path:
    """Write `directory/manifest.json` atomically."""
    path = Path(directory) / MANIFEST_NAME
    atomic.write_text(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def mismatches(manifest: Manifest, directory: Path) -> list[str]:
    """Artifacts whose file is missing or whose sha256 differs from the manifest's."""
    bad = []
    for role, art in manifest.artifacts.items():
        path = Path(directory) / art.file
        if not path.is_file():
            bad.append(f"{art.file} ({role}) is missing")
        elif path.stat().st_size != art.size or sha256_file(path) != art.sha256:
            bad.append(f"{art.file} ({role}) changed since the manifest was written")
    return bad
