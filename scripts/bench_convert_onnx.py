#!/usr/bin/env python3
"""`qdeploy convert model.onnx` wall time against a minimal onnx2tf + TFLiteConverter script.

Both sides run as fresh processes on the same ONNX model and the same NCHW calibration
array, alternating, `--repeat` times each; the medians are compared. The minimal side
(`--minimal`, this file run by itself) is what a user would write without qdeploy:
onnx2tf in memory (batch fixed to 1, offline: its sample file in a temporary working
directory), then one full-integer TFLiteConverter run with uint8 I/O. qdeploy does more
on top (a fixed-batch SavedModel, the float .tflite, the ONNX Runtime check, the
integer-only check, reference inputs, the manifest): the issue's target is that all of
it costs at most 1.2x the minimal script. Exits 1 when the target is missed.

The default model is a seeded graph from tests/fixtures/onnx_graphs.py (onnx.helper):
`--model depthwise_cnn` (default), `small_cnn`, `flatten_linear`, `yolov8n` (a 640x640
YOLOv8-style detector with YOLOv8n's backbone widths and C2f depths, three levels, a DFL
head and 80 classes, random weights: tests/fixtures/onnx_yolo.py; calibrated on drawn
uint8 images), or a path to any .onnx file with `--calib` an .npy in its NCHW layout
(uint8 arrays are pixels: both sides divide them by 255). The peak resident memory of
each process is measured too (wait4's ru_maxrss); qdeploy's must stay under 3 GB.

Usage: .venv/bin/python scripts/bench_convert_onnx.py [--model NAME|PATH] [--calib NPY]
                                                      [--repeat N] [--num-calib N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.2
DEADLINE = 900  # seconds per conversion process
BUILT_IN = ("depthwise_cnn", "small_cnn", "flatten_linear", "yolov8n")
MEMORY_TARGET_GB = 3.0  # peak resident memory of the qdeploy convert process


def minimal(model: Path, calib: Path, out: Path, num_calib: int) -> None:
    """onnx2tf, then TFLiteConverter to full integer with uint8 I/O; nothing else."""
    import numpy as np
    import onnx
    import onnx2tf
    import tensorflow as tf

    graph_input = onnx.load(str(model)).graph.input[0]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    x = np.load(calib)[:num_calib]
    x = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)
    x = np.moveaxis(x, 1, -1)  # NCHW -> NHWC
    with tempfile.TemporaryDirectory() as work:
        np.save(Path(work) / "calibration_image_sample_data_20x128x128x3_float32.npy",
                np.zeros((20, 128, 128, 3), np.float32))  # onnx2tf downloads it otherwise
        here = os.getcwd()
        os.chdir(work)
        try:
            keras_model = onnx2tf.convert(
                input_onnx_file_path=str(model.resolve()), disable_model_save=True,
                non_verbose=True, not_use_onnxsim=True,
                overwrite_input_shape=[f"{graph_input.name}:1,{','.join(map(str, dims[1:]))}"])
        finally:
            os.chdir(here)
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s[None]] for s in x)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_int8.tflite").write_bytes(converter.convert())


def built_in(name: str, directory: Path) -> tuple:
    """(model, calib) from the tests' seeded graphs: dynamic batch, NCHW float data."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    if name == "yolov8n":
        return yolov8n(directory)
    from tests.fixtures import onnx_graphs as graphs

    model = graphs.save(getattr(graphs, name)(), directory / f"{name}.onnx")
    calib = directory / "calib_nchw.npy"
    np.save(calib, graphs.calibration_nchw(100))
    return model, calib


def yolov8n(directory: Path) -> tuple:
    """A 640 YOLOv8n-size ONNX (onnx.helper, random weights) and 100 drawn uint8 images
    letterboxed to 640x640, NCHW."""
    import numpy as np

    from tests.fixtures import onnx_yolo as Y

    model = Y.save(Y.build("yolov8", size=640, classes=80, **Y.YOLOV8N),
                   directory / "yolov8n.onnx")
    images = np.stack([Y.drawn_image(640, 640, seed=k) for k in range(100)])
    calib = directory / "calib_nchw_uint8.npy"
    np.save(calib, np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return model, calib


def timed(command: list, env: dict) -> tuple:
    """(seconds, peak resident memory in GB) of one process run to its end."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                 stdin=subprocess.DEVNULL)
        timer = threading.Timer(DEADLINE, child.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            err.seek(0)
            sys.exit(f"error: {' '.join(command[:4])} ... failed:\n"
                     f"{err.read().decode(errors='replace')[-2000:]}")
    return seconds, usage.ru_maxrss / 1024 ** 2  # KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="depthwise_cnn",
                        help=f"one of {', '.join(BUILT_IN)}, or an .onnx file")
    parser.add_argument("--calib", type=Path, help="an .npy in the model's NCHW layout "
                        "(needed with an .onnx path)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--num-calib", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--minimal", nargs=2, type=Path, metavar=("MODEL", "OUT"),
                        help=argparse.SUPPRESS)  # the minimal side, run by main
    args = parser.parse_args()
    if args.minimal:
        with contextlib.redirect_stdout(io.StringIO()):
            minimal(args.minimal[0], args.calib, args.minimal[1], args.num_calib)
        return 0

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory(prefix="bench-convert-onnx-") as tmp:
        tmp = Path(tmp)
        if args.model in BUILT_IN:
            model, calib = built_in(args.model, tmp)
        elif args.calib is None:
            sys.exit("error: --calib is needed with an .onnx path (an .npy in its NCHW layout)")
        else:
            model, calib = Path(args.model), args.calib
        qdeploy_cmd = [sys.executable, "-m", "qdeploy", "convert", str(model), "--calib",
                       str(calib), "--num-calib", str(args.num_calib), "--out"]
        minimal_cmd = [sys.executable, __file__, "--calib", str(calib), "--num-calib",
                       str(args.num_calib), "--minimal", str(model)]
        times = {"qdeploy": [], "minimal": []}
        memory = {"qdeploy": 0.0, "minimal": 0.0}
        for k in range(args.repeat):  # alternating, so a slow moment hits both
            print(f"  run {k + 1}/{args.repeat} ...", file=sys.stderr, flush=True)
            for side, command in (("minimal", minimal_cmd), ("qdeploy", qdeploy_cmd)):
                seconds, peak = timed(command + [str(tmp / f"{side}{k}")], env)
                times[side].append(seconds)
                memory[side] = max(memory[side], peak)
        sizes = {side: (tmp / f"{side}0" / "model_int8.tflite").stat().st_size
                 for side in times}
    medians = {side: statistics.median(t) for side, t in times.items()}
    ratio = medians["qdeploy"] / medians["minimal"]
    met = ratio <= TARGET and memory["qdeploy"] < MEMORY_TARGET_GB
    if args.json:
        print(json.dumps({"model": str(args.model), "num_calib": args.num_calib,
                          "seconds": times, "median": medians, "ratio": ratio,
                          "int8_bytes": sizes, "target": TARGET, "peak_memory_gb": memory,
                          "memory_target_gb": MEMORY_TARGET_GB, "met": met}, indent=2))
    else:
        print(f"model: {args.model}, {args.num_calib} calibration samples (NCHW), "
              f"{args.repeat} runs each, fresh processes")
        for side, label in (("minimal", "onnx2tf + TFLiteConverter"),
                            ("qdeploy", "qdeploy convert model.onnx")):
            runs = ", ".join(f"{t:.1f}" for t in times[side])
            print(f"  {label:28s} median {medians[side]:6.1f} s  ({runs})  "
                  f"int8 {sizes[side]:,} B  peak {memory[side]:.2f} GB")
        print(f"  ratio qdeploy / minimal: {ratio:.2f}x   (target <= {TARGET}x); qdeploy "
              f"peak memory {memory['qdeploy']:.2f} GB (target < {MEMORY_TARGET_GB} GB): "
              f"{'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
