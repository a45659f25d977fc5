"""What a `.tflite` file says about its classes besides its graph, read with the standard
library alone (this runs on the Pi, and before the runner exists): the zip appended to the
file, the export metadata Ultralytics packs into it, and which packed file Model Maker's
`TFLITE_METADATA` buffer calls the labels.

How Ultralytics' exporter leaves its metadata in a `.tflite` (ultralytics/engine/exporter.py):

- 8.0 to 8.2: tflite-support's MetadataPopulator writes a `TFLITE_METADATA` buffer whose
  output tensor names `temp_meta.txt` as its TENSOR_AXIS_LABELS file, and appends a zip
  holding it. temp_meta.txt is `str(metadata)`: one line, a Python dict literal
  (`{'description': ..., 'names': {0: 'person', ...}, 'imgsz': [640, 640], ...}`), not a
  label file, though the metadata calls it one.
- later releases append the zip themselves (`zipfile.ZipFile(file, "a")`): temp_meta.txt
  as before, and in the newest `metadata.json` (the same dict as JSON, its names' keys
  then strings).

A dict literal is read with `ast.literal_eval`, never run; anything else is refused.
"""

from __future__ import annotations

import ast
import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Optional

from qrun.errors import UserError
from qrun.model.labels import Labels, parse_labels

METADATA_NAME = "TFLITE_METADATA"
TEMP_META = "temp_meta.txt"  # Ultralytics: a Python dict literal
METADATA_JSON = "metadata.json"  # Ultralytics, newest exports: the same dict as JSON
ULTRALYTICS_MEMBERS = (TEMP_META, METADATA_JSON)
MAX_MEMBER_BYTES = 1 << 20  # a label file or temp_meta.txt is kilobytes; refuse zip bombs
TENSOR_AXIS_LABELS = 2  # AssociatedFileType in tflite-support's metadata_schema.fbs
_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


# --- the appended zip ------------------------------------------------------------------

def appended_zip(model_bytes: bytes) -> Optional[zipfile.ZipFile]:
    """The zip appended to a model file, or None when there is none (or a broken one)."""
    try:
        return zipfile.ZipFile(io.BytesIO(model_bytes))
    except zipfile.BadZipFile:
        return None


def member(packed: zipfile.ZipFile, name: str) -> bytes:
    """One packed file's bytes; one over MAX_MEMBER_BYTES is refused."""
    if packed.getinfo(name).file_size > MAX_MEMBER_BYTES:
        raise UserError(f"{name} in the model's appended zip is over 1 MB; refused")
    return packed.read(name)


def literal(text: str, where: str, kinds: tuple = (dict,), what: str = "dict",
            fix: str = ""):
    """The value a Python literal spells (`ast.literal_eval`: parsed, never run), one of
    `kinds`; else a UserError naming `where`, `what` was expected and the `fix` (a clause
    after "; ")."""
    tail = f"; {fix}" if fix else ""
    try:
        value = ast.literal_eval(text)
    except _LITERAL_ERRORS as exc:
        raise UserError(f"{where} is not a Python literal {what} ({type(exc).__name__}); it "
                        f"is refused, not run{tail}") from None
    if not isinstance(value, kinds):
        raise UserError(f"{where} holds a {type(value).__name__}, not a {what}{tail}")
    return value


def literal_dict(text: str, where: str) -> dict:
    """The dict a Python literal spells (`ast.literal_eval`: parsed, never run)."""
    return literal(text, where)


def ultralytics_meta(model_bytes: bytes) -> Optional[dict]:
    """Ultralytics' export metadata from the appended zip (temp_meta.txt, else
    metadata.json), or None when the file carries neither."""
    packed = appended_zip(model_bytes)
    names = packed.namelist() if packed is not None else []
    found = next((n for n in ULTRALYTICS_MEMBERS if n in names), None)
    if found is None:
        return None
    where = f"{found} in the model's appended zip"
    try:
        text = member(packed, found).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{where} is not UTF-8 text") from None
    if found == TEMP_META:
        return literal_dict(text, where)
    try:
        value = json.loads(text)
    except ValueError:
        raise UserError(f"{where} is not JSON; it is refused") from None
    if not isinstance(value, dict):
        raise UserError(f"{where} holds a {type(value).__name__}, not a dict")
    return value


def names_labels(names) -> Optional[Labels]:
    """Ultralytics' `names` as Labels: {0: 'person', ...} (ids kept), the same with string
    keys (JSON), or a list (line i is class i). None when it is neither."""
    if isinstance(names, (list, tuple)) and names:
        return Labels({i: str(v) for i, v in enumerate(names)})
    if not isinstance(names, dict) or not names:
        return None
    try:
        ids = {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError):
        return None
    if any(k < 0 for k in ids):
        return None
    return Labels(dict(sorted(ids.items())), id_form=True)


# --- TFLITE_METADATA: which packed file holds the labels ---------------------------------
# The TFLite model and tflite-support's metadata are flatbuffers; the few fields needed
# are read at their schema slots (a field's vtable entry is at 4 + 2 * slot).

class _Table:
    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos

    def _u32(self, at: int) -> int:
        return struct.unpack_from("<I", self.buf, at)[0]

    def _field(self, slot: int) -> int:
        vtable = self.pos - struct.unpack_from("<i", self.buf, self.pos)[0]
        entry = 4 + 2 * slot
        if entry >= struct.unpack_from("<H", self.buf, vtable)[0]:
            return 0
        return struct.unpack_from("<H", self.buf, vtable + entry)[0]

    def _vector(self, slot: int) -> tuple:
        offset = self._field(slot)
        if not offset:
            return 0, 0
        start = self.pos + offset + self._u32(self.pos + offset)
        return start + 4, self._u32(start)

    def string(self, slot: int) -> str:
        start, length = self._vector(slot)
        return self.buf[start:start + length].decode("utf-8", "replace")

    def tables(self, slot: int) -> list:
        start, length = self._vector(slot)
        return [_Table(self.buf, start + 4 * i + self._u32(start + 4 * i))
                for i in range(length)]

    def scalar(self, slot: int, fmt: str, default=0):
        offset = self._field(slot)
        return struct.unpack_from(fmt, self.buf, self.pos + offset)[0] if offset else default

    def data(self, slot: int) -> bytes:
        start, length = self._vector(slot)
        return self.buf[start:start + length]


def _root(buf: bytes) -> _Table:
    return _Table(buf, struct.unpack_from("<I", buf, 0)[0])


def metadata_buffer(model_bytes: bytes) -> Optional[bytes]:
    """The `TFLITE_METADATA` buffer of a TFLite model, or None without one.
    (Model: buffers slot 4, metadata slot 6; Metadata: name 0, buffer 1; Buffer: data 0.)"""
    model = _root(model_bytes)
    for entry in model.tables(6):
        if entry.string(0) == METADATA_NAME:
            buffers = model.tables(4)
            index = entry.scalar(1, "<I")
            return buffers[index].data(0) if index < len(buffers) else None
    return None


def associated_files(raw: bytes) -> list:
    """(name, AssociatedFileType) of every file `TFLITE_METADATA` names: the model's
    (slot 6), its first subgraph's (4) and that subgraph's tensors' (6)."""
    def files(table, slot):
        return [(f.string(0), f.scalar(2, "<b")) for f in table.tables(slot)]

    root = _root(raw)
    found = files(root, 6)
    for subgraph in root.tables(3)[:1]:
        found += files(subgraph, 4)
        for tensor in subgraph.tables(2) + subgraph.tables(3):
            found += files(tensor, 6)
    return found


def label_file(files: list) -> Optional[str]:
    """The first TENSOR_AXIS_LABELS file that is a label file: Ultralytics' temp_meta.txt
    is declared as one but holds its export dict."""
    return next((name for name, kind in files
                 if kind == TENSOR_AXIS_LABELS and name not in ULTRALYTICS_MEMBERS), None)


# --- all of it: a model file's own labels ------------------------------------------------

def model_labels(path: Path) -> tuple:
    """(Labels, where) a model file carries: Ultralytics' names, else the label file its
    TFLITE_METADATA names (packed in the appended zip); (None, None) when it has neither.
    A file whose metadata cannot be read is a UserError naming it."""
    path = Path(path)
    data = path.read_bytes()
    try:
        meta = ultralytics_meta(data)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    if meta is not None:
        found = names_labels(meta.get("names"))
        if found is not None:
            return found, f"the Ultralytics metadata in {path.name}"
    packed = appended_zip(data)
    if packed is None:
        return None, None
    try:
        raw = metadata_buffer(data)
        chosen = label_file(associated_files(raw)) if raw else None
    except (struct.error, IndexError, UnicodeDecodeError):
        raise UserError(f"{path} is truncated or corrupt: its {METADATA_NAME} cannot be "
                        "read") from None
    if chosen is None or chosen not in packed.namelist():
        return None, None
    text = member(packed, chosen).decode("utf-8", "replace")
    return parse_labels(text), f"{chosen} packed in {path.name}"
