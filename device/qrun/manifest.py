"""`manifest.json`: what a deployment directory holds and how to feed its models.

Written by `qdeploy convert` (and updated by `compile` and `evaluate`), read by
every later step on the host and by `qrun` on the device. Artifacts are listed
by role (qrun.layout: "float", "int8", "edgetpu", "labels", "reference") with their
sha256 and size, so a push can tell what changed and a device can verify what it
received. How the models were made is recorded as typed records (`Converter`,
`Compiled`); keys this version does not know are kept as read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

from qrun import atomic
from qrun.errors import UserError
from qrun.layout import (CONVERT_FILES, EDGETPU, FLOAT, INT8, LABELS, MANIFEST_NAME,  # noqa: F401
                         MODEL_ROLES, REFERENCE)
from qrun.preprocess import Preprocess
from qrun.tensors import TensorSpec

SCHEMA_VERSION = 1
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
class Manifest:
    input: TensorSpec
    output: TensorSpec
    preprocess: Preprocess
    artifacts: dict = field(default_factory=dict)  # role -> Artifact
    labels: Optional[str] = None  # role "labels" file name, for convenience
    converter: Converter = field(default_factory=Converter)
    calibration: dict = field(default_factory=dict)
    compiled: Optional[Compiled] = None
    evaluation: Optional[dict] = None
    created: str = ""
    qdeploy_version: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        """`converter` and `compiled` may also be given as their JSON objects."""
        if isinstance(self.converter, dict):
            self.converter = Converter.from_dict(self.converter)
        if isinstance(self.compiled, dict):
            self.compiled = Compiled.from_dict(self.compiled)

    def path_of(self, root: Path, role: str) -> Optional[Path]:
        """Absolute path of the artifact with `role`, or None if the manifest has none."""
        art = self.artifacts.get(role)
        return Path(root) / art.file if art else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["artifacts"] = {role: asdict(a) for role, a in self.artifacts.items()}
        d["converter"] = self.converter.to_dict()
        d["compiled"] = self.compiled.to_dict() if self.compiled is not None else None
        return d

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
        try:
            inp = tensor_spec(d.get("input"), "input")
            pre = Preprocess.from_dict(d.get("preprocess") or {})
            check_channels(pre, inp)
            compiled = typed(d, "compiled", dict, None)
            return cls(
                input=inp,
                output=tensor_spec(d.get("output"), "output"),
                preprocess=pre,
                artifacts=artifacts(d.get("artifacts", {})),
                labels=typed(d, "labels", str, None),
                converter=Converter.from_dict(typed(d, "converter", dict, None) or {}),
                calibration=typed(d, "calibration", dict, None) or {},
                compiled=Compiled.from_dict(compiled) if compiled is not None else None,
                evaluation=typed(d, "evaluation", dict, None),
                created=typed(d, "created", str, ""),
                qdeploy_version=typed(d, "qdeploy_version", str, ""),
                schema_version=version,
            )
        except ValueError as exc:
            raise bad(str(exc)) from None


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


def tensor_spec(value, name: str) -> TensorSpec:
    """A TensorSpec from the manifest's `input` or `output` object."""
    if not isinstance(value, dict):
        raise ValueError(f"field {name} is {value!r}, not an object with shape and dtype")
    try:
        spec = TensorSpec(**value)
    except TypeError:
        raise ValueError(f"field {name} has fields {sorted(value)}; it needs shape, dtype, "
                         "scale and zero_point") from None
    if not (isinstance(spec.shape, list) and all(isinstance(n, int) for n in spec.shape)):
        raise ValueError(f"{name}.shape is {spec.shape!r}, not a list of integers")
    if not isinstance(spec.dtype, str):
        raise ValueError(f"{name}.dtype is {spec.dtype!r}, not a string")
    if not isinstance(spec.scale, (int, float)) or not isinstance(spec.zero_point, int):
        raise ValueError(f"{name} has scale {spec.scale!r} and zero_point "
                         f"{spec.zero_point!r}; they must be numbers")
    return spec


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
