"""What an ONNX file says about itself in its `metadata_props`, as Ultralytics writes them.

Ultralytics' exporter stores `str(value)` of each entry of its export metadata:
`names` "{0: 'person', 1: 'bicycle', ...}", `imgsz` "[640, 640]", `stride` "32", `task`
"detect", and plain text for `description`, `author`, `date`, `version`, ... The Python
literals are parsed with `ast.literal_eval`, never run (Ultralytics' own loader uses
`eval`): a `names` that is not a literal dict (or list) is refused with one error line,
as are an `imgsz` or `stride` that are not literals of their kind. A file without these
keys has no names, and nothing is refused.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Optional

from qrun.errors import UserError
from qrun.model.labels import Labels
from qrun.model.metadata import literal, names_labels



@dataclass(frozen=True)
class OnnxMeta:
    """Ultralytics' keys of an ONNX file's metadata_props, parsed."""

    names: Optional[Labels] = None
    task: Optional[str] = None
    imgsz: Optional[tuple] = None  # (height, width)
    stride: Optional[int] = None

    def to_dict(self) -> dict:
        """What the manifest records (the names' count, not the names: labels.txt has them)."""
        record = {"classes": len(self.names.names) if self.names else None, "task": self.task,
                  "imgsz": list(self.imgsz) if self.imgsz else None, "stride": self.stride}
        return {k: v for k, v in record.items() if v is not None}


def props(proto) -> dict:
    """An onnx.ModelProto's metadata_props as {key: value}."""
    return {p.key: p.value for p in proto.metadata_props}


def _literal(text: str, where: str, kinds: tuple, what: str):
    return literal(text, where, kinds, what, fix="export the model again or remove that entry")


def parse(entries: dict, source: str) -> OnnxMeta:
    """OnnxMeta from metadata_props `entries` of the file named `source`."""
    def where(key: str) -> str:
        return f"{source}: metadata_props {key!r}"

    names = None
    if "names" in entries:
        value = _literal(entries["names"], where("names"), (dict, list), "dict")
        names = names_labels(value)
        if names is None:
            raise UserError(f"{where('names')} is not a dict of class id -> name; export the "
                            "model again or remove that entry")
    imgsz = None
    if "imgsz" in entries:
        value = _literal(entries["imgsz"], where("imgsz"), (list, tuple, int), "list")
        size = [value, value] if isinstance(value, int) else list(value)
        if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise UserError(f"{where('imgsz')} is {entries['imgsz']!r}, not [height, width]")
        imgsz = tuple(size)
    stride = None
    if "stride" in entries:
        stride = _literal(entries["stride"], where("stride"), (int,), "int")
    task = entries.get("task") or None
    return OnnxMeta(names=names, task=task, imgsz=imgsz, stride=stride)


def read(proto, source: str) -> OnnxMeta:
    """OnnxMeta of a loaded onnx.ModelProto (the file named `source`)."""
    return parse(props(proto), source)
