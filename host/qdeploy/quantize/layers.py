"""`qdeploy evaluate --layers`: where, layer by layer, the int8 model loses against the float
model, and why.

One row per quantized tensor the int8 model's ops write, in graph order: the op, the
tensor's name, scale, zero point and range (255 * scale, the float span it can hold),
then two errors, both in units of the tensor's own scale:

- per layer: the error of that op alone. For a Keras or SavedModel deployment whose
  source model and representative dataset are still where convert recorded them, it is
  what TF's `tf.lite.experimental.QuantizationDebugger` measures (layer_debug), built
  from the converter convert used; otherwise (ONNX through its float TFLite, imports,
  a moved source) the error of quantizing the float tensor with the int8 tensor's scale
  and zero point (rounding and clipping), and the report says which;
- cumulative: the int8 tensor against the float model's tensor of the same name, both
  models run with every tensor kept (layer_trace).

Rounding alone gives rmse/scale = 1/sqrt(12) ~ 0.29. The rows are then read for known
causes (layer_reasons) and flagged with the reason and, where a model change is the
usual fix, that fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qdeploy.modelfile import tflite_graph
from qdeploy.quantize import datasets, evaluate, layer_reasons, layer_trace, signature
from qrun.errors import UserError
from qrun.measure import reference
from qrun.model import manifest as mf
from qrun.model.deployment import int8_model
from qrun.model.preprocess import dequantize

ROUNDING_NOISE = 1 / np.sqrt(12)  # rmse/scale of uniform rounding: 0.2887
COMPARE = ("per-tensor",)  # --compare: the other weight quantization, converted too
PER_LAYER_DEBUGGER = "QuantizationDebugger (the op fed the dequantized int8 input, in float)"
PER_LAYER_REQUANTIZED = "output quantization (the float tensor quantized with this scale)"


@dataclass
class LayerRow:
    """One quantized tensor of the int8 model and what it loses."""

    position: int  # among the rows, in graph order
    op: str
    tensor: str
    scale: float
    zero_point: int
    range: float  # 255 * scale: the float span the tensor holds
    dtype: str = "INT8"
    float_min: Optional[float] = None  # seen in the float model's tensor of that name
    float_max: Optional[float] = None
    rmse_scale: Optional[float] = None  # per layer
    mean_error: Optional[float] = None
    max_abs_error: Optional[float] = None
    cumulative_rmse_scale: Optional[float] = None  # against the float model
    cumulative_mean_error: Optional[float] = None
    cumulative_max_abs_error: Optional[float] = None
    per_tensor_rmse_scale: Optional[float] = None  # --compare per-tensor: per layer
    flag: str = ""  # the kind of cause (layer_reasons.KINDS), "" when none is seen
    reason: str = ""
    fix: str = ""
    severity: float = 0.0  # how strongly the cause shows (a ratio); orders flagged rows

    @property
    def error(self) -> float:
        """The figure the table sorts by: cumulative when matched, else per layer."""
        for value in (self.cumulative_rmse_scale, self.rmse_scale):
            if value is not None:
                return value
        return 0.0


@dataclass
class LayerReport:
    deployment: str
    model: str  # the source model's name (the report store's model name)
    int8_sha256: str
    samples: int
    data: str
    per_layer: str  # how the per-layer error was measured (PER_LAYER_*)
    matched: int  # int8 tensors matched to a float tensor by name
    int8_tensors: int  # quantized tensors the int8 model's ops write
    float_tensors: int
    rows: list = field(default_factory=list)
    compare: Optional[str] = None
    notes: list = field(default_factory=list)

    def worst_first(self) -> list:
        """Flagged rows first, by cause (layer_reasons.KINDS: a concatenation before what it
        causes downstream) and strength; then the others, largest error first."""
        def key(r):
            kind = layer_reasons.KINDS.index(r.flag) if r.flag else len(layer_reasons.KINDS)
            return (kind, -r.severity, -r.error, r.position)

        return sorted(self.rows, key=key)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows"] = [asdict(r) for r in self.rows]
        d["worst_first"] = [r.position for r in self.worst_first()]
        d["rounding_noise"] = float(ROUNDING_NOISE)
        return d


@dataclass
class Inputs:
    """Float model inputs, one [N, ...] array per manifest input, and where they came from."""

    arrays: list
    source: str

    @property
    def count(self) -> int:
        return len(self.arrays[0])


def analyse(directory: Path, data: Optional[Path] = None, float_model: Optional[Path] = None,
            limit: Optional[int] = None, compare: Optional[str] = None,
            progress: Optional[Callable[[int, int], None]] = None) -> LayerReport:
    """The layer report of the deployment in `directory` (see the module docstring)."""
    from qdeploy.quantize import layer_debug

    if compare is not None and compare not in COMPARE:
        raise UserError(f"--compare must be {' or '.join(COMPARE)}, got '{compare}'")
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    directory = Path(directory)
    manifest = mf.load(directory)
    int8_path = int8_model(directory, manifest)
    if int8_path is None or not int8_path.is_file():
        raise UserError(f"{directory} has no int8 model; --layers explains an int8 model: "
                        "run qdeploy convert (or qdeploy import a quantized .tflite)")
    source = layer_debug.Rebuild(manifest)
    float_path = find_float(directory, manifest, float_model, source)
    inputs = read_inputs(directory, manifest, data, limit)
    notes = [source.why] if source.why else []
    with source:
        float_file = float_path or source.float_tflite()
        trace = layer_trace.run(float_file, int8_path, feeder(manifest, inputs), inputs.count,
                                progress)
        if not trace.tensors:
            raise UserError(f"the int8 model {int8_path.name} and the float model "
                            f"{float_file.name} have no tensor names in common: 0 of "
                            f"{trace.int8_quantized} quantized int8 tensors match one of the "
                            f"{trace.float_tensors} float tensors by name and shape; give the "
                            "float .tflite the int8 model was converted from")
        debug = source.per_layer(manifest, inputs.arrays, compare, notes) if source.debugger \
            else {}
    graph = tflite_graph.load(int8_path)
    rows = build_rows(graph, trace, debug)
    layer_reasons.flag(rows, graph, trace)
    return LayerReport(
        deployment=str(directory), model=deployment_model(manifest, int8_path),
        int8_sha256=manifest.artifacts[mf.INT8].sha256 if mf.INT8 in manifest.artifacts
        else "", samples=inputs.count, data=inputs.source,
        per_layer=PER_LAYER_DEBUGGER if debug else PER_LAYER_REQUANTIZED,
        matched=len(trace.tensors), int8_tensors=trace.int8_quantized,
        float_tensors=trace.float_tensors, rows=rows, compare=compare if debug else None,
        notes=notes)


def deployment_model(manifest: mf.Manifest, int8_path: Path) -> str:
    """The model name reports use: the source model's name without its suffix."""
    name = manifest.converter.source_model if manifest.converter else None
    return Path(name or int8_path.name).stem


def find_float(directory: Path, manifest: mf.Manifest, given: Optional[Path],
               source) -> Optional[Path]:
    """The float .tflite to compare with: --float, the manifest's, or model_float.tflite in
    the directory; None when only the source can give one; a UserError when nothing can."""
    if given is not None:
        if not Path(given).is_file():
            raise UserError(f"--float {given} does not exist; give the float .tflite the "
                            "int8 model was converted from")
        return Path(given)
    for path in (manifest.path_of(directory, mf.FLOAT),
                 directory / mf.CONVERT_FILES[mf.FLOAT]):
        if path is not None and path.is_file():
            return path
    if source.rebuilds:
        return None
    raise UserError(f"{directory} has no float model and no source model to rebuild one: "
                    "--layers compares every int8 tensor with the float model's; give the "
                    "float .tflite with --float FILE, or re-run qdeploy convert on the source "
                    "model (it keeps model_float.tflite)")


def read_inputs(directory: Path, manifest: mf.Manifest, data: Optional[Path],
                limit: Optional[int]) -> Inputs:
    """--data, else the representative dataset convert recorded (when still there), else
    the deployment's reference inputs; as float model inputs."""
    shapes = [(spec.name, spec.shape) for spec in manifest.inputs]
    record = manifest.calibration or {}
    recorded = record.get("path") or record.get("source")
    if data is None and recorded and Path(recorded).exists():
        data = Path(recorded)
        limit = limit or manifest.calibration.get("samples")
    if data is not None:
        try:
            samples = read_samples(Path(data), shapes, manifest, limit)
        except UserError as first:  # an ONNX model's data may be in its NCHW layout
            nchw = evaluate.nchw_inputs(manifest)
            if not nchw or Path(data).is_dir():
                raise
            try:
                samples = read_samples(Path(data), [(n, nchw.get(n, s)) for n, s in shapes],
                                       manifest, limit)
            except UserError:
                raise first from None
            for (name, _), s in zip(shapes, samples):
                if name in nchw:
                    s.data = np.ascontiguousarray(np.moveaxis(s.data, 1, -1))
        return Inputs([datasets.float_inputs(s, manifest.preprocess) for s in samples],
                      str(data))
    for name in (reference.NPZ_NAME, reference.NPY_NAME):
        if (directory / name).is_file():
            return reference_inputs(directory / name, manifest, limit)
    raise UserError(f"{directory} has no reference inputs and its representative dataset "
                    f"({recorded or 'not recorded'}) is not there; give samples with --data")


def read_samples(data: Path, shapes: list, manifest: mf.Manifest,
                 limit: Optional[int]) -> list:
    """One `Samples` per (name, shape): images/npy/idx for one input, an .npz for several."""
    if len(shapes) == 1:
        return [datasets.load_calibration(data, shapes[0][1], manifest.preprocess,
                                          limit=limit)]
    return datasets.load_calibration_inputs(data, shapes, manifest.preprocess, limit=limit)


def reference_inputs(path: Path, manifest: mf.Manifest, limit: Optional[int]) -> Inputs:
    """The reference file as float inputs: pixels through the preprocessing, raw integer
    values dequantized with the input's scale and zero point, floats as they are."""
    ref = reference.load(path)
    if len(ref.arrays) != len(manifest.inputs):
        raise UserError(f"{path} holds {len(ref.arrays)} input(s), the model takes "
                        f"{len(manifest.inputs)}; give samples with --data")
    arrays = []
    for x, spec in zip(ref.arrays, manifest.inputs):
        x = x[:limit] if limit else x
        if ref.raw and np.issubdtype(x.dtype, np.integer):
            x = dequantize(x, spec.scale, spec.zero_point)
        elif x.dtype == np.uint8:
            x = datasets.float_inputs(datasets.Samples(x, str(path), "npy"), manifest.preprocess)
        x = x.astype(np.float32)
        if tuple(x.shape[1:]) != tuple(spec.shape[1:]):
            raise UserError(f"{path} has samples of shape {tuple(x.shape[1:])}, the model "
                            f"input {spec.name} takes {tuple(spec.shape[1:])}")
        arrays.append(x)
    return Inputs(arrays, str(path))


def feeder(manifest: mf.Manifest, inputs: Inputs) -> Callable:
    """feed(interpreter, path, i): sample i into each input, matched by signature name."""
    cache = {}  # per interpreter: (tensor index, every sample as that input takes it)

    def feed(interpreter, path: Path, i: int) -> None:
        if id(interpreter) not in cache:
            cache[id(interpreter)] = [
                (d["index"], datasets.model_input(x, spec.dtype, spec.scale, spec.zero_point,
                                                  manifest.preprocess))
                for d, x in zip(signature.matching(interpreter, path, manifest.inputs,
                                                   outputs=False), inputs.arrays)
                for spec in [mf.TensorSpec.from_details(d)]]
        for index, x in cache[id(interpreter)]:
            interpreter.set_tensor(index, x[i:i + 1])

    return feed


def build_rows(graph: tflite_graph.Graph, trace: layer_trace.Trace, debug: dict) -> list:
    """One LayerRow per quantized tensor an op writes, in graph order."""
    rows = []
    for op, t in layer_trace.written_tensors(graph):
        if t.dtype not in layer_trace.QUANTIZED or not t.scale:
            continue
        levels = 65535 if t.dtype == "INT16" else 255
        row = LayerRow(position=len(rows), op=op.name, tensor=t.name, scale=t.scale,
                       zero_point=t.zero_point, range=levels * t.scale, dtype=t.dtype)
        tr = trace.tensors.get(t.index)
        if tr is not None:
            row.float_min, row.float_max = tr.float_min, tr.float_max
            row.cumulative_rmse_scale = tr.cumulative.rmse / t.scale
            row.cumulative_mean_error = tr.cumulative.mean
            row.cumulative_max_abs_error = tr.cumulative.max_abs
        found = debug.get(t.name) if debug else None
        if found is not None:
            row.rmse_scale, row.mean_error, row.max_abs_error = (
                found["rmse_scale"], found["mean_error"], found["max_abs_error"])
            row.per_tensor_rmse_scale = found.get("per_tensor_rmse_scale")
        elif tr is not None:
            row.rmse_scale = tr.requantized.rmse / t.scale
            row.mean_error, row.max_abs_error = tr.requantized.mean, tr.requantized.max_abs
        rows.append(row)
    return rows
