#!/usr/bin/env python3
"""How long `qdeploy evaluate --layers` takes, side by side with `qdeploy evaluate`.

1. The bundled MNIST demo: the quickstart's model trained on the first 8,000 images of the
   bundled test split and converted as the quickstart converts it (its source model and
   representative dataset kept, so --layers builds TF's QuantizationDebugger), then both
   commands on the same 2,000 held-out images. Target: --layers within 2x evaluate.
2. A MobileNet-size model: Keras MobileNetV2 (alpha 1.0, 224x224x3, random weights, seeded)
   converted by qdeploy convert on 16 seeded random images, then both commands on those
   16 images. Target: --layers under 60 s.

Each command runs as its own process (`python -m qdeploy ...`, TensorFlow's import
included), each timed --repeat times alternately; the fastest run counts.

Usage: .venv/bin/python scripts/bench_layers.py [--epochs N] [--repeat N] [--skip-mobilenet]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MNIST_RATIO = 2.0
MOBILENET_SECONDS = 60.0


class Quiet:
    @contextlib.contextmanager
    def step(self, title, total=None):
        print(f"  {title} ...", file=sys.stderr, flush=True)
        yield lambda done, of=None: None

    def note(self, text):
        print(text, file=sys.stderr)


def timed(args: list) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "qdeploy", *map(str, args)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"qdeploy {' '.join(map(str, args))} failed:\n{done.stderr}")
    return seconds


def side_by_side(directory: Path, data: Path, reports: Path, repeat: int) -> tuple:
    """(evaluate seconds, evaluate --layers seconds), the fastest of `repeat` each."""
    plain, layers = [], []
    for _ in range(repeat):
        plain.append(timed(["evaluate", directory, "--data", data]))
        layers.append(timed(["evaluate", directory, "--layers", "--data", data,
                             "--reports", reports]))
    return min(plain), min(layers)


def mnist(work: Path, epochs, repeat: int) -> tuple:
    from qdeploy import demo, quickstart

    recipe = demo.load_recipe()
    split = demo.load_split(recipe)
    model = quickstart.train_step(recipe, split, work, Quiet(), epochs)
    out = work / "mnist-out"
    quickstart.convert_step(recipe, split, model, work, out, Quiet())
    heldout = work / "heldout.npz"
    np.savez(heldout, x=split.x_heldout, y=split.y_heldout)
    debugger = side_by_side(out, heldout, work / "reports", repeat)
    model.rename(work / "moved.keras")  # as after `qdeploy quickstart`: the source is gone
    trace_only = side_by_side(out, heldout, work / "reports", repeat)
    return debugger, trace_only, len(split.x_heldout)


def mobilenet(work: Path, repeat: int) -> tuple:
    from qdeploy.quantize.convert import convert
    from qdeploy.quantize.tfquiet import keras as import_keras
    from qrun.model.preprocess import parse_preprocess

    keras = import_keras()
    keras.utils.set_random_seed(0)
    source = work / "mobilenet_v2.keras"
    keras.applications.MobileNetV2(alpha=1.0, input_shape=(224, 224, 3), weights=None,
                                   classes=1000).save(source)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
    calib = work / "calib.npy"
    np.save(calib, pixels)
    data = work / "images.npz"
    np.savez(data, x=pixels, y=rng.integers(0, 1000, 16))
    print("  converting MobileNetV2 ...", file=sys.stderr, flush=True)
    convert(source, calib, work / "mobilenet-out", num_calib=16,
            preprocess=parse_preprocess("symmetric"))
    return side_by_side(work / "mobilenet-out", data, work / "reports", repeat), 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-mobilenet", action="store_true")
    args = parser.parse_args()
    met = True
    with tempfile.TemporaryDirectory(prefix="bench-layers-") as tmp:
        debugger, trace_only, n = mnist(Path(tmp), args.epochs, args.repeat)
        for (plain, layers), how in ((trace_only, "float TFLite (as after quickstart)"),
                                     (debugger, "QuantizationDebugger (source kept)")):
            ok = layers <= MNIST_RATIO * plain
            met &= ok
            print(f"MNIST demo, {n} held-out images, per layer by {how}:  evaluate "
                  f"{plain:.1f} s   evaluate --layers {layers:.1f} s   ratio "
                  f"{layers / plain:.2f}x   (target <= {MNIST_RATIO}x: "
                  f"{'met' if ok else 'MISSED'})")
        if not args.skip_mobilenet:
            (plain, layers), n = mobilenet(Path(tmp), args.repeat)
            ok = layers <= MOBILENET_SECONDS
            met &= ok
            print(f"MobileNetV2 1.0 224, {n} images:   evaluate {plain:.1f} s   evaluate "
                  f"--layers {layers:.1f} s   ratio {layers / plain:.2f}x   (target --layers "
                  f"< {MOBILENET_SECONDS:.0f} s: {'met' if ok else 'MISSED'})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
