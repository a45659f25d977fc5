"""What convert refuses, with one line saying why.

Before any slow work: the options (--input-layout, --num-calib), the --labels file and
a writable --out. After conversion: an int8 model that is not integer-only or has I/O of
another dtype than asked for, a float TFLite of an ONNX model that ONNX Runtime disagrees
with. (A labels file that does not fit the scores: deployment.stage_labels.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from qdeploy.quantize import signature
from qdeploy.quantize.calibration import LAYOUTS
from qdeploy.quantize.converter import IOTypes
from qdeploy.quantize.sources import SourceModel
from qrun.errors import UserError
from qrun.model.runtime import make_interpreter

INTEGER_DTYPES = {"int8", "int32", "uint8", "int16", "int64"}
EDGE_OPS = {"QUANTIZE", "DEQUANTIZE", "DELEGATE"}


def check_options(num_calib: int, input_layout: Optional[str]) -> None:
    """--input-layout and --num-calib checked."""
    if input_layout is not None and input_layout not in LAYOUTS:
        raise UserError(f"--input-layout must be nchw or nhwc, got '{input_layout}'")
    if num_calib < 1:
        raise UserError("--num-calib must be at least 1")


def read_labels(path: Path):
    """The --labels file, read before any slow work (qrun's reader: both forms)."""
    from qrun.model.labels import read_labels as read

    if not path.is_file():
        raise UserError(f"labels file not found: {path}")
    names = read(path)
    if not names.names:
        raise UserError(f"--labels {path} holds no labels; give one label per line")
    return names


def prepare_out_dir(out_dir: Path) -> Path:
    """Create the output directory and prove it is writable before any slow work."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".qdeploy-write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to --out {out_dir}: {exc.strerror or exc}; choose a "
                        "writable directory") from None
    return out_dir


def check_integer_only(int8_path: Path, io: IOTypes) -> list:
    """The op names of the int8 model, after proving it has no float op or dynamic shape
    and every input and output has the dtype asked for.

    TFLiteConverter keeps an op that has no int8 kernel in float, wrapped in
    DEQUANTIZE/QUANTIZE, even with TFLITE_BUILTINS_INT8; the Edge TPU cannot run that,
    so it is refused here, naming the op and its float tensor. Float outputs asked for
    with --output-io float32 are fed by a DEQUANTIZE only, which is allowed.
    """
    interpreter = make_interpreter(int8_path)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    for op in ops:
        if op["op_name"] in EDGE_OPS:
            continue
        used = [i for i in list(op["inputs"]) + list(op["outputs"]) if i in tensors]
        floats = [tensors[i] for i in used
                  if np.dtype(tensors[i]["dtype"]).name not in INTEGER_DTYPES]
        if floats:
            raise UserError(f"op {op['op_name']} has no int8 kernel: the converter left it in "
                            f"float (tensor {floats[0]['name']} is "
                            f"{np.dtype(floats[0]['dtype']).name}), which the Edge TPU cannot "
                            "run; replace it in the model")
    for t in tensors.values():
        if -1 in list(t.get("shape_signature", [])):
            raise UserError(f"tensor {t['name']} has a dynamic shape after conversion; the Edge "
                            "TPU needs static shapes")
    inputs, outputs = signature.specs(interpreter, int8_path)
    for end, specs, wanted, option in (("input", inputs, io.inputs, "--io"),
                                       ("output", outputs, io.outputs, "--output-io")):
        for spec in specs:
            if spec.dtype != wanted:
                raise UserError(f"{end} {spec.name} is {spec.dtype} after conversion, not "
                                f"{wanted} ({option}): the converter sets the type of float "
                                f"{end}s only; make the model's {end} float (drop a final "
                                "cast or argmax: qrun takes the argmax itself)")
    return [op["op_name"] for op in ops]


def check_onnx_float(source: SourceModel, float_path: Path, inputs: dict) -> list:
    """ONNX Runtime vs the float TFLite (refused beyond the tolerance), and the
    TRANSPOSE ops onnx2tf left, as notes; the figure is kept for the manifest."""
    from qdeploy.quantize import onnx_source

    names = [i.name for i in source.inputs]
    check = onnx_source.check_float(source.obj, names, source.outputs, float_path, inputs)
    source.obj.float_check = check
    return list(source.obj.rewrites) + [
            f"float TFLite vs ONNX Runtime: max difference {check.worst:.2e} of the output "
            f"range over {check.samples} calibration samples (tolerance "
            f"{check.tolerance:.0e})"] + onnx_source.transposes(source.obj, float_path)

