"""`manifest.json`: what a deployment directory holds and how to feed its models.

Written by `qdeploy convert` (and updated by `compile` and `evaluate`), read by
every later step on the host and by `qrun` on the device. Artifacts are listed
by role ("float", "int8", "edgetpu", "labels", ...) with their sha256 and size,
so a push can tell what changed and a device can verify what it received.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from qrun import atomic
from qrun.errors import UserError
from qrun.preprocess import Preprocess

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
HASH_CHUNK = 1 << 20


@dataclass
class TensorSpec:
    """Shape, dtype and quantization of a model input or output."""

    shape: list
    dtype: str
    scale: float = 0.0
    zero_point: int = 0


@dataclass
class Artifact:
    """One file of the deployment, relative to the manifest's directory."""

    file: str
    sha256: str
    size: int


@dataclass
class Manifest:
    input: TensorSpec
    output: TensorSpec
    preprocess: Preprocess
    artifacts: dict = field(default_factory=dict)  # role -> Artifact
    labels: Optional[str] = None  # role "labels" file name, for convenience
    converter: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    compiled: Optional[dict] = None
    evaluation: Optional[dict] = None
    created: str = ""
    qdeploy_version: str = ""
    schema_version: int = SCHEMA_VERSION

    def path_of(self, root: Path, role: str) -> Optional[Path]:
        """Absolute path of the artifact with `role`, or None if the manifest has none."""
        art = self.artifacts.get(role)
        return Path(root) / art.file if art else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["artifacts"] = {role: asdict(a) for role, a in self.artifacts.items()}
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
            return cls(
                input=inp,
                output=tensor_spec(d.get("output"), "output"),
                preprocess=pre,
                artifacts=artifacts(d.get("artifacts", {})),
                labels=typed(d, "labels", str, None),
                converter=typed(d, "converter", dict, None) or {},
                calibration=typed(d, "calibration", dict, None) or {},
                compiled=typed(d, "compiled", dict, None),
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
