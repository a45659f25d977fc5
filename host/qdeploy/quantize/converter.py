"""The TensorFlow steps: re-export the source with the batch fixed to 1, then convert it
with TFLiteConverter to a float and a full-integer `.tflite`.

The Edge TPU needs static shapes, so the source is re-exported as a SavedModel whose only
signature takes a batch of exactly 1, its arguments and outputs named as the source names
its inputs and outputs (an ONNX source goes through onnx2tf). The int8 conversion follows
the TFLite docs (Optimize.DEFAULT, a representative dataset, TFLITE_BUILTINS_INT8) with
the input and output dtypes of --io and --output-io. A converter error becomes one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qdeploy.quantize.sources import SourceModel, check_input
from qdeploy.quantize.tfquiet import keras as import_keras
from qdeploy.quantize.tfquiet import quiet
from qdeploy.quantize.tfquiet import tensorflow as import_tf
from qrun.errors import UserError

IO_TYPES = ("uint8", "int8")  # --io: the int8 model's input (and output) dtype
OUTPUT_IO_TYPES = IO_TYPES + ("float32",)  # --output-io: float32 leaves a DEQUANTIZE


@dataclass(frozen=True)
class IOTypes:
    """The int8 model's input and output dtypes (--io, --output-io)."""

    inputs: str = "uint8"
    outputs: str = "uint8"


def io_types(io_type: str, output_io: Optional[str]) -> IOTypes:
    """--io and --output-io checked; outputs default to the inputs' type."""
    if io_type not in IO_TYPES:
        raise UserError(f"--io must be one of {', '.join(IO_TYPES)}, got '{io_type}'")
    if output_io is not None and output_io not in OUTPUT_IO_TYPES:
        raise UserError(f"--output-io must be one of {', '.join(OUTPUT_IO_TYPES)}, got "
                        f"'{output_io}'")
    return IOTypes(io_type, output_io or io_type)


def export_fixed_batch(source: SourceModel, target: Path, inputs: Optional[dict] = None
                       ) -> Path:
    """A SavedModel of the same weights whose only signature takes a batch of exactly 1,
    its arguments and outputs named as the source names its inputs and outputs. An ONNX
    source goes through onnx2tf, which sees the first input's calibration `inputs`."""
    tf = import_tf()

    check_input(source)
    if source.kind == "onnx":
        from qdeploy.quantize import onnx_source

        first = next(iter(inputs.values())) if inputs else None
        return onnx_source.export_saved_model(source.obj, [i.name for i in source.inputs],
                                              source.outputs, target, first)
    specs = [tf.TensorSpec(i.fixed_shape, tf.float32, name=i.name) for i in source.inputs]
    try:
        _export(tf, source, specs, target)
    except Exception as exc:  # tracing errors of many types: keep the meaningful line
        raise UserError(f"cannot re-export {source.path.name} with batch 1: "
                        f"{converter_message(str(exc))}") from None
    return target


def _export(tf, source: SourceModel, specs: list, target: Path) -> None:
    with quiet():
        if source.kind == "keras":
            keras = import_keras()
            model, names = source.obj, source.outputs

            def serve(*args):
                outputs = model(args[0] if len(args) == 1 else list(args))
                if not isinstance(outputs, (list, tuple)):
                    outputs = [outputs]
                return dict(zip(names, outputs))

            archive = keras.export.ExportArchive()
            archive.track(model)
            archive.add_endpoint("serving_default", serve, input_signature=specs)
            archive.write_out(str(target), verbose=False)
        else:
            serving = source.obj.signatures["serving_default"]
            names = [i.name for i in source.inputs]
            module = tf.Module()
            module.source = source.obj

            @tf.function(input_signature=specs)
            def serve(*args):
                return serving(**dict(zip(names, args)))

            tf.saved_model.save(module, str(target), signatures={"serving_default": serve})


def convert_float(saved_model: Path) -> bytes:
    """The float `.tflite` of the fixed-batch SavedModel (the accuracy reference)."""
    tf = import_tf()

    try:
        with quiet():
            return tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()
    except Exception as exc:  # ConverterError and friends: keep the first meaningful line
        raise UserError(f"float conversion failed: {converter_message(str(exc))}; replace "
                        "those ops in the model (the Edge TPU runs TFLite builtin ops "
                        "only)") from None


def convert_int8(saved_model: Path, inputs: dict, io: IOTypes,
                 progress: Optional[Callable[[int, int], None]] = None) -> bytes:
    """Full-integer conversion as the TFLite docs teach, calibrated on `inputs` (input
    name -> [N, ...] float array: one dict per sample, keyed by signature name)."""
    converter = int8_converter(saved_model, inputs, io, progress)
    try:
        with quiet():
            return converter.convert()
    except Exception as exc:  # ConverterError and friends: keep the first meaningful line
        raise UserError(f"int8 conversion failed: {converter_message(str(exc))}") from None


def int8_converter(saved_model: Path, inputs: dict, io: IOTypes,
                   progress: Optional[Callable[[int, int], None]] = None):
    """The TFLiteConverter convert_int8 runs, set up but not run (QuantizationDebugger
    takes it as it is: `qdeploy evaluate --layers`)."""
    tf = import_tf()
    count = len(next(iter(inputs.values())))

    def representative_dataset():
        for i in range(count):
            if progress:
                progress(i + 1, count)
            yield {name: x[i][None].astype(np.float32) for name, x in inputs.items()}

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = getattr(tf, io.inputs)
    converter.inference_output_type = getattr(tf, io.outputs)
    return converter


def converter_message(text: str) -> str:
    """The line of a converter error that says what went wrong."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("TF Select ops:", "Flex ops:")):
            return f"ops TFLite has no builtin for: {ln.split(':', 1)[1].strip()}"[:300]
    for ln in lines:
        if "error:" in ln:
            said = ln.split("error:", 1)[1].strip()
            if said and not said.startswith(("loc(", "failed while converting")):
                return said[:300]
    return (lines[0] if lines else "unknown error")[:300]

