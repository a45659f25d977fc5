"""qdeploy's build backend: setuptools' own, plus one requirement pyproject.toml cannot hold.

The `onnx` extra needs tf-keras (onnx2tf imports it), and tf-keras requires the distribution
`tensorflow`; qdeploy's TensorFlow is `tensorflow-cpu`, which installs the same import
package under another name, so pip would add a second, full TensorFlow. The extra therefore
also requires `tensorflow` from build-backend/tensorflow-cpu-as-tensorflow, an empty
distribution of that name depending on tensorflow-cpu. pip accepts a local project as a
requirement only by absolute `file://` URL, which a static pyproject.toml cannot spell, so
this backend adds the line to the metadata it writes (for `pip install -e ".[onnx]"` and
`pip install ".[onnx]"` alike), and to the built wheel's METADATA with its RECORD entry.
Everything else is setuptools.build_meta unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401 - the PEP 517 hooks passed through
    build_sdist, get_requires_for_build_editable, get_requires_for_build_sdist,
    get_requires_for_build_wheel)

SHIM = Path(__file__).resolve().parent / "tensorflow-cpu-as-tensorflow"
MARKER = '(sys_platform != "darwin" or platform_machine != "arm64")'  # tensorflow-cpu there
REQUIREMENT = f'Requires-Dist: tensorflow @ {SHIM.as_uri()} ; extra == "onnx" and {MARKER}'


def with_shim(metadata: str) -> str:
    """METADATA text with REQUIREMENT among its headers (once)."""
    if REQUIREMENT in metadata:
        return metadata
    head, sep, body = metadata.partition("\n\n")
    return f"{head}\n{REQUIREMENT}{sep or chr(10)}{body}"


def _patch_dir(metadata_directory: str, name: str) -> None:
    path = Path(metadata_directory, name, "METADATA")
    path.write_text(with_shim(path.read_text(encoding="utf-8")), encoding="utf-8")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _patch_wheel(wheel: Path) -> None:
    """Rewrite the wheel with REQUIREMENT in its METADATA and RECORD updated to match."""
    with zipfile.ZipFile(wheel) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    meta_name = next(i.filename for i, _ in entries if i.filename.endswith(".dist-info/METADATA"))
    record_name = meta_name[: -len("METADATA")] + "RECORD"
    meta = with_shim(dict((i.filename, d) for i, d in entries)[meta_name].decode()).encode()
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target:
        for info, data in entries:
            if info.filename == meta_name:
                data = meta
            elif info.filename == record_name:
                lines = [_record_line(meta_name, meta) if ln.startswith(meta_name + ",") else ln
                         for ln in data.decode().splitlines()]
                data = ("\n".join(lines) + "\n").encode()
            target.writestr(info, data)
    tmp.replace(wheel)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    name = _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)
    _patch_dir(metadata_directory, name)
    return name


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    name = _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)
    _patch_dir(metadata_directory, name)
    return name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    _patch_wheel(Path(wheel_directory, name))
    return name


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    _patch_wheel(Path(wheel_directory, name))
    return name
