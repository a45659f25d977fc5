"""What a `.tflite` file says about itself, and which task its tensors point to.

Read from the bytes, without an interpreter: the SignatureDef, Model Maker's
`TFLITE_METADATA` (labels, input normalization) and Ultralytics' appended
`temp_meta.txt` / `metadata.json`; `describe` adds tensor shapes, op names and a guess at
the task. The appended zip and Ultralytics' metadata are read by qrun.model.metadata (the
one reader, stdlib only, which qrun uses on the device for a bare model file).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from qdeploy.modelfile import tflite_graph
from qrun.model import metadata as packed_meta
from qrun.tasks import roles

from qdeploy.errors import UserError

METADATA_NAME = packed_meta.METADATA_NAME
ULTRALYTICS_MEMBER = packed_meta.TEMP_META
TENSOR_AXIS_LABELS = packed_meta.TENSOR_AXIS_LABELS
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union member
_PARSE_ERRORS = (IndexError, ValueError, TypeError, AttributeError, OverflowError,
                 struct.error)


@dataclass(frozen=True)
class Signature:
    """A SignatureDef: its key and the tensor index each input/output name stands for."""

    key: str
    inputs: dict
    outputs: dict


@dataclass(frozen=True)
class Metadata:
    """What Model Maker's `TFLITE_METADATA` says, plus the files packed in its zip."""

    name: str = ""
    description: str = ""
    associated_files: tuple = ()  # names, from the model, its subgraph and its tensors
    label_file: str | None = None  # the first TENSOR_AXIS_LABELS file
    mean: tuple = ()  # input normalization: (x - mean) / std, per channel
    std: tuple = ()
    packed_files: tuple = ()  # member names of the appended zip
    labels: tuple = ()  # label_file's lines, when it is packed


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple
    dtype: str  # TFLite TensorType name: "UINT8", "INT8", "FLOAT32", ...


@dataclass(frozen=True)
class Description:
    """Everything a model file says about itself, and the task that follows from it."""

    path: Path
    inputs: tuple
    outputs: tuple
    op_names: frozenset
    task: str
    reason: str
    signature: Signature | None = None
    metadata: Metadata | None = None
    ultralytics: dict | None = None


# --- the SignatureDef ---------------------------------------------------------------

def signature(model_bytes: bytes) -> Signature | None:
    """The `serving_default` SignatureDef (else the first one), or None without one."""
    import tflite

    model = tflite.Model.GetRootAsModel(model_bytes, 0)
    defs = [model.SignatureDefs(i) for i in range(model.SignatureDefsLength())]
    if not defs:
        return None
    chosen = next((d for d in defs if _text(d.SignatureKey()) == "serving_default"), defs[0])
    return Signature(key=_text(chosen.SignatureKey()),
                     inputs=_tensor_map(chosen.Inputs, chosen.InputsLength()),
                     outputs=_tensor_map(chosen.Outputs, chosen.OutputsLength()))


def _tensor_map(get, length: int) -> dict:
    return {_text(get(i).Name()): int(get(i).TensorIndex()) for i in range(length)}


def _text(raw) -> str:
    return (raw or b"").decode("utf-8", "replace")


# --- Model Maker's TFLITE_METADATA (tflite-support's metadata_schema.fbs) -------------
# tflite-support is not installed and the `tflite` package has no metadata schema, so
# the few tables needed are read with flatbuffers' Table at their schema field slots.

def metadata(model_bytes: bytes) -> Metadata | None:
    """The `TFLITE_METADATA` buffer decoded, or None when the model has none."""
    import tflite

    model = tflite.Model.GetRootAsModel(model_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _text(entry.Name()) == METADATA_NAME:
            buffer = model.Buffers(entry.Buffer())
            if buffer.DataLength() < 8:
                raise ValueError(f"the {METADATA_NAME} buffer is empty")
            return _model_metadata(buffer.DataAsNumpy().tobytes(), model_bytes)
    return None


def _model_metadata(raw: bytes, model_bytes: bytes) -> Metadata:
    root = _root(raw)
    files = _files(root, 6)
    mean = std = ()
    for subgraph in _tables(root, 3)[:1]:
        files += _files(subgraph, 4)
        for tensor in _tables(subgraph, 2) + _tables(subgraph, 3):
            files += _files(tensor, 6)
        for tensor in _tables(subgraph, 2)[:1]:
            mean, std = _normalization(tensor)
    label_file = packed_meta.label_file(files)  # not Ultralytics' temp_meta.txt
    packed = packed_meta.appended_zip(model_bytes)
    if files and packed is None:
        raise ValueError("its metadata names packed files but the appended zip is cut short")
    labels = ()
    if label_file and label_file in packed.namelist():
        labels = tuple(packed_meta.member(packed, label_file).decode("utf-8", "replace")
                       .splitlines())
    return Metadata(name=_string(root, 0), description=_string(root, 1),
                    associated_files=tuple(dict.fromkeys(name for name, _ in files)),
                    label_file=label_file, mean=mean, std=std,
                    packed_files=tuple(packed.namelist() if packed else ()), labels=labels)


def _normalization(tensor) -> tuple:
    """(mean, std) of the first NormalizationOptions among a tensor's process units."""
    from flatbuffers.number_types import Uint8Flags
    from flatbuffers.table import Table

    for unit in _tables(tensor, 4):
        slot = unit.Offset(4)  # options_type, the union's type byte
        kind = unit.Get(Uint8Flags, slot + unit.Pos) if slot else 0
        if kind == NORMALIZATION_OPTIONS and unit.Offset(6):
            options = Table(bytearray(), 0)
            unit.Union(options, unit.Offset(6))
            return _floats(options, 0), _floats(options, 1)
    return (), ()


def _root(raw: bytes):
    from flatbuffers.table import Table

    buf = bytearray(raw)
    return Table(buf, int.from_bytes(buf[0:4], "little"))


def _string(table, slot: int) -> str:
    offset = table.Offset(4 + 2 * slot)  # a field's vtable entry: 4 + 2 * its slot
    return _text(table.String(offset + table.Pos)) if offset else ""


def _vector(table, slot: int) -> tuple:
    """(start, length) of a vector field; (0, 0) when it is absent."""
    offset = table.Offset(4 + 2 * slot)
    return (table.Vector(offset), table.VectorLen(offset)) if offset else (0, 0)


def _tables(table, slot: int) -> list:
    """The tables of a vector-of-tables field."""
    from flatbuffers.table import Table

    start, length = _vector(table, slot)
    return [Table(table.Bytes, table.Indirect(start + 4 * i)) for i in range(length)]


def _files(table, slot: int) -> list:
    """(name, AssociatedFileType) of each AssociatedFile in a field."""
    from flatbuffers.number_types import Int8Flags

    return [(_string(f, 0), f.Get(Int8Flags, f.Offset(8) + f.Pos) if f.Offset(8) else 0)
            for f in _tables(table, slot)]


def _floats(table, slot: int) -> tuple:
    from flatbuffers.number_types import Float32Flags

    start, length = _vector(table, slot)
    return tuple(float(table.Get(Float32Flags, start + 4 * i)) for i in range(length))


# --- Ultralytics' export metadata ---------------------------------------------------------

def ultralytics_meta(model_bytes: bytes) -> dict | None:
    """The dict in Ultralytics' temp_meta.txt (a Python literal, never run) or
    metadata.json, from the appended zip (qrun.model.metadata)."""
    return packed_meta.ultralytics_meta(model_bytes)


# --- the task, from shapes ------------------------------------------------------------

def infer_task(inputs: list, outputs: list, op_names) -> tuple:
    """(kind, reason): "detect", "segment", "pose", "classify" or "raw", by
    qrun.tasks.roles from the input/output shapes (lists of ints) and the op names alone."""
    return roles.infer_kind(roles.ModelView(inputs=[list(s) for s in inputs],
                                            outputs=[list(s) for s in outputs],
                                            op_names=frozenset(op_names)))


# --- all of it, for one file ----------------------------------------------------------

def describe(path) -> Description:
    """Read `path` and everything it says about itself; a UserError names a bad file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is not a file; pass the .tflite model to import")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != tflite_graph.FILE_IDENTIFIER:
        raise UserError(f"{path} is not a TFLite model (no 'TFL3' flatbuffer identifier "
                        "at bytes 4-8); pass a .tflite file")
    graph = tflite_graph.load(path)
    try:
        sig, meta = signature(data), metadata(data)
    except _PARSE_ERRORS as exc:
        raise UserError(f"{path} is truncated or corrupt: its signature or metadata cannot "
                        f"be read ({type(exc).__name__}: {exc})") from None
    try:
        ultra = ultralytics_meta(data)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    inputs, outputs = (tuple(TensorInfo(t.name, t.shape, t.dtype)
                             for t in map(graph.tensor, ends))
                       for ends in (graph.inputs, graph.outputs))
    op_names = frozenset(op.name for op in graph.ops)
    task, reason = infer_task([t.shape for t in inputs], [t.shape for t in outputs], op_names)
    return Description(path=path, inputs=inputs, outputs=outputs, op_names=op_names,
                       task=task, reason=reason, signature=sig, metadata=meta,
                       ultralytics=ultra)
