"""Bare model files for `qdeploy push MODEL.tflite` and `qdeploy compile MODEL.tflite`.

The file is imported (qdeploy.modelimport.importer) into a cache directory keyed by its
sha256, `$XDG_CACHE_HOME/qdeploy/imports/<sha256[:16]>/` (default `~/.cache`), and the
command goes on with that directory as if it had been given. An `_edgetpu` model's key
also covers the CPU twin found beside it, since the twin changes the deployment. A
second call with the same file finds the directory and reuses it, unless its files no
longer match its manifest (then it is imported again).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from qrun.model import manifest as mf
from qrun.model import runtime

from qdeploy.errors import UserError
from qdeploy.modelimport import importer

KEY_LENGTH = 16


@dataclass(frozen=True)
class Cached:
    """The deployment directory of a bare model file, and whether it was imported now."""

    directory: Path
    imported: bool
    result: "importer.ImportResult | None" = None

    def line(self, model: Path) -> str:
        """One line for the user: what was imported where, or which import is reused."""
        if self.imported:
            return f"imported {model} into {self.directory}"
        return f"reusing the import of {model} in {self.directory}"


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/qdeploy/imports`, `~/.cache/qdeploy/imports` without it."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qdeploy" / "imports"


def key_of(model: Path) -> str:
    """sha256[:16] of the file (and of the CPU twin beside an `_edgetpu` model)."""
    digest = mf.sha256_file(model)
    twin = importer.twin_beside(model) if runtime.is_edgetpu_model(model) else None
    if twin is not None:
        digest = hashlib.sha256((digest + mf.sha256_file(twin)).encode()).hexdigest()
    return digest[:KEY_LENGTH]


def usable(directory: Path) -> bool:
    """A cached import whose files still match its manifest."""
    if not (directory / mf.MANIFEST_NAME).is_file():
        return False
    try:
        return not mf.mismatches(mf.load(directory), directory)
    except UserError:
        return False


def imported(model: Path) -> Cached:
    """The cached deployment directory of `model`, importing it first when needed."""
    model = Path(model)
    importer.check_model_file(model)
    directory = cache_root() / key_of(model)
    if usable(directory):
        return Cached(directory, imported=False)
    if directory.exists():
        shutil.rmtree(directory)  # a broken or half-removed import: made again below
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = importer.import_model(model, out=directory)
    except OSError:
        if usable(directory):  # another process imported the same file meanwhile
            return Cached(directory, imported=False)
        raise
    return Cached(directory, imported=True, result=result)
