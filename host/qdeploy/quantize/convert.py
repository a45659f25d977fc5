"""Full-integer post-training quantization with TensorFlow's TFLiteConverter.

`convert` is the list of the steps, top to bottom: check the options (checks), load the
source model (Keras file, SavedModel or ONNX file, one or several inputs and outputs;
sources, onnx_source), read the representative dataset, one array per input
(calibration), re-export the source with the batch fixed to 1 (the Edge TPU needs static
shapes) and its inputs and outputs named as the source names them, convert it to a float
and an int8 `.tflite` (converter), check the int8 model really is integer-only with the
I/O types asked for (checks), choose its task, run the float and the int8 model on samples
held back from calibration and compare them in the task's terms (fidelity: a warning, or
with `strict` an error and nothing written, when int8 loses the task), and publish both
with the reference inputs and `manifest.json` (deployment). All files are staged in a temporary directory inside the
output directory and renamed into place only when every step succeeded, so a failed run
never clobbers a good result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from qdeploy.quantize import (calibration, checks, converter, deployment, fidelity,
                              onnx_source, sources)
from qdeploy.quantize.deployment import FLOAT_NAME, INT8_NAME
from qrun import atomic
from qrun.model import manifest as mf
from qrun.model.preprocess import Preprocess


@dataclass
class ConvertResult:
    out_dir: Path
    manifest: mf.Manifest
    float_path: Path
    int8_path: Path
    batch_fixed: bool
    calibration_samples: int
    int8_ops: list
    notes: list = field(default_factory=list)  # what the user should know (ONNX: layout)
    warnings: list = field(default_factory=list)  # int8 lost the task (fidelity gate)


def convert(model_path: Path, calib: Path, out_dir: Path, **options) -> ConvertResult:
    """`convert_into` (its options: num_calib, io_type, preprocess, labels, progress,
    calib_label, output_io, input_layout, strict, gate); an --out directory it created is
    removed again when --strict refuses the result."""
    with fidelity.nothing_left(Path(out_dir)):
        return convert_into(model_path, calib, out_dir, **options)


def convert_into(model_path: Path, calib: Path, out_dir: Path, num_calib: int = 100,
            io_type: str = "uint8", preprocess: Optional[Preprocess] = None,
            labels: Optional[Path] = None,
            progress: Optional[Callable[[int, int], None]] = None,
            calib_label: Optional[str] = None,
            output_io: Optional[str] = None,
            input_layout: Optional[str] = None,
            input_shape: Optional[str] = None,
            task_kind: Optional[str] = None, strict: bool = False,
            gate: bool = True) -> ConvertResult:
    """Convert `model_path` to float and full-integer `.tflite` files in `out_dir`.

    `io_type` is the dtype of every input (and of every output unless `output_io` says
    otherwise: "float32" keeps float outputs behind a DEQUANTIZE, as Coral's SSDs do).
    `calib_label` names the representative dataset in the manifest when its path means
    nothing to a reader (a temporary file, say). `input_layout` ("nchw" or "nhwc", ONNX
    only) says how calibration arrays are laid out; by default their shape tells.
    `input_shape` ("1,3,640,640", ONNX only) fixes a dynamic input's size. `task_kind`
    (--task) names the task instead of finding it from the graph.
    `strict` turns the fidelity gate's warning into an error, with nothing written;
    `gate` False skips the gate (scripts/bench_fidelity_gate.py measures what it costs).
    """
    io = converter.io_types(io_type, output_io)
    checks.check_options(num_calib, input_layout)
    pre = preprocess or Preprocess()
    label_names = checks.read_labels(Path(labels)) if labels is not None else None
    out_dir = checks.prepare_out_dir(Path(out_dir))
    source = sources.load_source_model(Path(model_path), input_shape, task_kind)
    own_names = deployment.model_names(source)  # ONNX metadata_props `names`, if any
    samples, notes = calibration.read_samples(calib, source, pre, num_calib + fidelity.HELD_BACK,
                                              input_layout, calib_label)
    samples, held, held_back = fidelity.hold_back(samples, num_calib)
    inputs = calibration.float_inputs(source, samples, pre)

    with atomic.staging_dir(out_dir) as stage:
        saved = converter.export_fixed_batch(source, stage / "fixed_batch_savedmodel", inputs)
        (stage / FLOAT_NAME).write_bytes(converter.convert_float(saved))
        if source.kind == "onnx":
            notes += checks.check_onnx_float(source, stage / FLOAT_NAME, inputs)
        (stage / INT8_NAME).write_bytes(converter.convert_int8(saved, inputs, io, progress))
        int8_ops = checks.check_integer_only(stage / INT8_NAME, io)
        task = deployment.choose_task(stage / INT8_NAME,
                                      labels is not None or own_names is not None, task_kind)
        if source.kind == "onnx":
            task = onnx_source.task_with_head(task, source.obj)
        names = [FLOAT_NAME, INT8_NAME,
                 *deployment.stage_labels(stage, labels, label_names, own_names, task, notes),
                 deployment.write_reference(stage, source, samples, pre)]
        manifest = deployment.build_manifest(stage, source, samples, pre, io, names, task)
        if gate:
            manifest.fidelity = fidelity.gate(
                stage / FLOAT_NAME, stage / INT8_NAME, manifest, held,
                [i.name for i in source.inputs], held_back,
                label_names.names if label_names is not None else None)
        lost = fidelity.warning(manifest.fidelity)
        if lost and strict:
            raise fidelity.StrictError(f"--strict: {lost}; nothing was written")
        manifest.calibration["path"] = str(Path(calib).resolve())  # evaluate --layers reads it
        mf.save(manifest, stage)
        atomic.publish(stage, out_dir, names + [mf.MANIFEST_NAME])
    return ConvertResult(out_dir, manifest, out_dir / FLOAT_NAME, out_dir / INT8_NAME,
                         source.batch_changed, len(samples[0]), int8_ops, notes,
                         [lost] if lost else [])
