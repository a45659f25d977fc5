"""The per-layer error as TF measures it: `tf.lite.experimental.QuantizationDebugger` built
from the converter `qdeploy convert` used.

A Keras or SavedModel deployment records its source model (`converter.extra.source_path`)
and representative dataset (`calibration.source`). While both are where convert left
them, the source is re-exported with the batch fixed to 1 (converter.export_fixed_batch),
the int8 TFLiteConverter is set up exactly as convert sets it up (converter.int8_converter:
same representative dataset and sample count, same I/O types), and the debugger
calibrates, quantizes with NumericVerify ops and runs the given samples: each op's int8
output is compared with the same op computed in float on its dequantized int8 input.
`--compare per-tensor` converts once more with per-channel weights turned off
(`_experimental_disable_per_channel`, as the debugger itself reads it).

Without a source model the float model can still come from the deployment; without
either, the deployment cannot be explained (layers.find_float says what is needed).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from qdeploy.modelfile import selfdescribe
from qdeploy.quantize import calibration, converter, sources
from qdeploy.quantize.tfquiet import quiet
from qdeploy.quantize.tfquiet import tensorflow as import_tf
from qrun.model import manifest as mf

REBUILT = ("keras", "saved_model")  # source kinds the debugger is built from
DEBUG_SAMPLES = 256  # the debugger's per-layer means settle long before; its runs are slow


class Rebuild:
    """The deployment's source model, when it can be rebuilt: `rebuilds` (a float model can
    be converted from it), `debugger` (its representative dataset is there too), `why` (a
    note when either is not). Use as a context manager: the export lives in a temp dir."""

    def __init__(self, manifest: mf.Manifest):
        self.manifest = manifest
        self.why = ""
        self.source_path = None
        self.calibration_path = None
        self._work: Optional[Path] = None
        self._saved: Optional[Path] = None
        self._source = None
        c = manifest.converter
        kind = c.source_kind if c else None
        recorded = (c.extra or {}).get("source_path") if c and isinstance(c.extra, dict) else None
        if kind not in REBUILT:
            if kind == "onnx":
                self.why = ("an ONNX deployment is explained through its float TFLite: the "
                            "per-layer error is the output quantization of each float tensor")
            return
        if not recorded or not Path(recorded).exists():
            self.why = (f"the source model {recorded or (c.source_model if c else '')} is not "
                        "where convert recorded it: the per-layer error is the output "
                        "quantization of each float tensor, not QuantizationDebugger's")
            return
        self.source_path = Path(recorded)
        record = manifest.calibration or {}
        calib = record.get("path") or record.get("source")
        if calib and Path(calib).exists():
            self.calibration_path = Path(calib)
        else:
            self.why = (f"the representative dataset convert used ({calib}) is not there: "
                        "QuantizationDebugger would calibrate differently from the deployed "
                        "model, so the per-layer error is the output quantization of each "
                        "float tensor")

    @property
    def rebuilds(self) -> bool:
        return self.source_path is not None

    @property
    def debugger(self) -> bool:
        return self.calibration_path is not None

    def __enter__(self) -> "Rebuild":
        return self

    def __exit__(self, *exc) -> None:
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)

    def saved_model(self) -> Path:
        """The source re-exported with batch 1, as convert exports it (once)."""
        if self._saved is None:
            self._work = Path(tempfile.mkdtemp(prefix="qdeploy-layers-"))
            self._source = sources.load_source_model(self.source_path)
            self._saved = converter.export_fixed_batch(self._source, self._work / "saved")
        return self._saved

    def float_tflite(self) -> Path:
        """The float .tflite converted from the source, as convert converts it."""
        path = self.saved_model().parent / "model_float.tflite"
        if not path.exists():
            path.write_bytes(converter.convert_float(self.saved_model()))
        return path

    def calibration_inputs(self) -> dict:
        """The representative dataset convert calibrated on, as convert read it."""
        pre = self.manifest.preprocess
        count = int(self.manifest.calibration.get("samples") or 100)
        samples, _ = calibration.read_samples(self.calibration_path, self._source, pre, count,
                                              None, None)
        return calibration.float_inputs(self._source, samples, pre)

    def per_layer(self, manifest: mf.Manifest, arrays: list, compare: Optional[str],
                  notes: list) -> dict:
        """tensor name -> rmse_scale, mean_error, max_abs_error, scale (and
        per_tensor_rmse_scale with --compare per-tensor), by QuantizationDebugger."""
        saved = self.saved_model()
        calib = self.calibration_inputs()
        c = manifest.converter
        io = converter.IOTypes(c.inference_io_type or "uint8",
                               (c.extra or {}).get("inference_output_type")
                               or c.inference_io_type or "uint8")
        names = [spec.name for spec in manifest.inputs]
        if len(arrays[0]) > DEBUG_SAMPLES:
            notes.append(f"the per-layer error (QuantizationDebugger) is averaged over the "
                         f"first {DEBUG_SAMPLES} of the {len(arrays[0])} samples; the "
                         "cumulative error over all of them")
            arrays = [a[:DEBUG_SAMPLES] for a in arrays]
        stats = run_debugger(converter.int8_converter(saved, calib, io), arrays, names)
        if compare == "per-tensor":
            other = converter.int8_converter(saved, calib, io)
            other._experimental_disable_per_channel = True
            for key, found in run_debugger(other, arrays, names).items():
                if key in stats:
                    stats[key]["per_tensor_rmse_scale"] = found["rmse_scale"]
        return stats


def run_debugger(tflite_converter, arrays: list, names: list) -> dict:
    """QuantizationDebugger's layer statistics keyed by the tensor's name in the int8 model
    (the name of the float reference op's output in the debug model)."""
    tf = import_tf()

    box = {}

    def dataset():
        order = box["order"]
        for i in range(len(arrays[0])):
            yield [arrays[k][i][None].astype(np.float32) for k in order]

    with quiet():
        debugger = tf.lite.experimental.QuantizationDebugger(converter=tflite_converter,
                                                            debug_dataset=dataset)
        box["order"] = input_order(debugger, names)
        debugger.run()
    it = debugger._quant_interpreter  # the debugger's own model; its dump reads the same
    found = {}
    for name, metrics in debugger.layer_statistics.items():
        q_index, f_index = debugger._numeric_verify_op_details[name]["inputs"][:2]
        details = it._get_tensor_details(q_index, subgraph_index=0)
        scale = float(details["quantization_parameters"]["scales"][0])
        f_name = it._get_tensor_details(f_index, subgraph_index=0)["name"]
        found[f_name] = {
            "rmse_scale": float(np.sqrt(metrics["mean_squared_error"])) / scale,
            "mean_error": float(metrics["mean_error"]),
            "max_abs_error": float(metrics["max_abs_error"]), "scale": scale}
    return found


def input_order(debugger, names: list) -> list:
    """For each input of the debug model, the position of its array in `names` (the
    manifest's inputs), by the model's signature; in order when it has none."""
    details = debugger._quant_interpreter.get_input_details()
    if len(details) == 1:
        return [0]
    found = selfdescribe.signature(bytes(debugger.quant_model))
    by_index = {i: n for n, i in found.inputs.items()} if found else {}
    return [names.index(by_index[d["index"]]) if by_index.get(d["index"]) in names else k
            for k, d in enumerate(details)]
