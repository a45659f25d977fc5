"""Bare model files for `qdeploy push MODEL.tflite` and `qdeploy compile MODEL.tflite`.

The file is imported (qdeploy.modelimport.importer) into a cache directory keyed by its
sha256, `$XDG_CACHE_HOME/qdeploy/imports/<sha256[:16]>/` (default `~/.cache`), and the
command goes on with that directory as if it had been given. An `_edgetpu` model's key
also covers the CPU twin found beside it, since the twin changes the deployment. A
second call with the same file finds the directory and reuses it, unless its files no
longer match its manifest (then it is imported again).

`bare_file_import` is what both commands call on their argument: it decides whether the
argument is a bare file to import (a directory is not; for compile, neither is a model
compile refuses with its own reason) and returns the cached import with the lines to show.
It prints nothing: the command line does. The importer (numpy, the flatbuffer reader) is
loaded only when a file is imported, so a push of a directory does not pay for it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qrun.model import manifest as mf
from qrun.model import runtime

from qdeploy.errors import UserError

KEY_LENGTH = 16


@dataclass(frozen=True)
class Cached:
    """The deployment directory of a bare model file, and whether it was imported now."""

    directory: Path
    imported: bool
    result: "importer.ImportResult | None" = None  # qdeploy.modelimport.importer

    def line(self, model: Path) -> str:
        """One line for the user: what was imported where, or which import is reused."""
        if self.imported:
            return f"imported {model} into {self.directory}"
        return f"reusing the import of {model} in {self.directory}"

    def lines(self, model: Path) -> list:
        """`line`, then the import's `note:` lines (what it overrode, what is off and why;
        none when the import is reused)."""
        notes = self.result.notes if self.result is not None else []
        return [self.line(model), *(f"note: {note}" for note in notes)]


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/qdeploy/imports`, `~/.cache/qdeploy/imports` without it."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qdeploy" / "imports"


def key_of(model: Path) -> str:
    """sha256[:16] of the file (and of the CPU twin beside an `_edgetpu` model)."""
    from qdeploy.modelimport import importer

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
    from qdeploy.modelimport import importer

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


def bare_file_import(path: Path, compilable: bool = False) -> Optional[Cached]:
    """The cached import of the model file `path` (`imported`); None when `path` is not a
    bare file to import, and the command goes on with `path` as it is.

    `path` that is not a file (a deployment directory, or nothing: the command says so)
    is never imported. With `compilable` (qdeploy compile), neither is an `_edgetpu` model
    (already compiled) nor a float model (not quantized): compile refuses those itself,
    naming the reason, where their import would only hide it. qdeploy push imports both
    (an `_edgetpu` model with its CPU twin beside it; a float model as a float-only
    deployment, with a note saying so).

    Raises UserError for a file that is not a TFLite model.
    """
    path = Path(path)
    if not path.is_file():
        return None
    if compilable:
        from qdeploy.edgetpu import preflight
        from qdeploy.modelfile import tflite_graph

        if runtime.is_edgetpu_model(path) or preflight.not_quantized(tflite_graph.load(path)):
            return None
    return imported(path)
