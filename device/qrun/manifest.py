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
        version = d.get("schema_version")
        if not isinstance(version, int):
            raise UserError("manifest.json has no schema_version: it was not written by qdeploy")
        if version > SCHEMA_VERSION:
            raise UserError(f"manifest.json has schema version {version}, newer than this "
                            f"qdeploy/qrun understands ({SCHEMA_VERSION}); upgrade qdeploy")
        try:
            return cls(
                input=TensorSpec(**d["input"]),
                output=TensorSpec(**d["output"]),
                preprocess=Preprocess.from_dict(d.get("preprocess") or {}),
                artifacts={r: Artifact(**a) for r, a in d.get("artifacts", {}).items()},
                labels=d.get("labels"),
                converter=d.get("converter") or {},
                calibration=d.get("calibration") or {},
                compiled=d.get("compiled"),
                evaluation=d.get("evaluation"),
                created=d.get("created", ""),
                qdeploy_version=d.get("qdeploy_version", ""),
                schema_version=version,
            )
        except (KeyError, TypeError) as exc:
            raise UserError(f"manifest.json is missing or has a malformed field ({exc}); "
                            "re-run qdeploy convert") from None


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


def load(directory: Path) -> Manifest:
    """Read `directory/manifest.json`, with one clear error for each way it can be wrong."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{directory} has no {MANIFEST_NAME}; run qdeploy convert first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); re-run qdeploy convert") from None
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
