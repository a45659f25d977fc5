#!/usr/bin/env python3
"""What convert's fidelity gate costs: `qdeploy convert` with and without it, side by side.

Two models, random weights (seeded), built with Keras so nothing is downloaded: the
quickstart's MNIST CNN on 100 + 8 MNIST images, and a MobileNetV2 (alpha 0.35) at 160x160
on 100 + 8 synthetic images. Each is converted ROUNDS times with the gate and ROUNDS times
without, alternating (this machine is noisy: the median of each is compared); the gate's
own clock (manifest `fidelity.seconds`) is reported too. Target: the gate costs at most 10%
of the convert's time. Exits 1 if a target is missed.

Usage: .venv/bin/python scripts/bench_fidelity_gate.py [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET = 0.10  # the gate's share of the convert's time
HELD = 8


def mnist_model(root: Path) -> tuple:
    from qdeploy import demo
    from qdeploy.quantize.tfquiet import keras as import_keras

    keras = import_keras()
    keras.utils.set_random_seed(1)
    path = root / "mnist.keras"
    demo.build_model().save(path)
    split = demo.load_split(demo.load_recipe())
    np.save(root / "mnist.npy", split.x_train[:100 + HELD])
    return path, root / "mnist.npy"


def mobilenet_model(root: Path) -> tuple:
    from qdeploy.quantize.tfquiet import keras as import_keras

    keras = import_keras()
    keras.utils.set_random_seed(2)
    model = keras.applications.MobileNetV2(input_shape=(160, 160, 3), alpha=0.35,
                                           weights=None, classes=100)
    path = root / "mobilenet.keras"
    model.save(path)
    rng = np.random.default_rng(2)
    np.save(root / "images.npy", rng.integers(0, 256, (100 + HELD, 160, 160, 3), np.uint8))
    return path, root / "images.npy"


def timed(model: Path, calib: Path, out: Path, gate: bool) -> tuple:
    from qdeploy.quantize.convert import convert

    start = time.perf_counter()
    result = convert(model, calib, out, num_calib=100, gate=gate)
    seconds = time.perf_counter() - start
    f = result.manifest.fidelity
    return seconds, (f.seconds if f is not None else 0.0), f


def measure(name: str, model: Path, calib: Path, root: Path, rounds: int) -> dict:
    timed(model, calib, root / f"{name}-warm", True)  # imports and TF's first trace
    with_gate, without, own = [], [], []
    for r in range(rounds):
        seconds, gate_s, record = timed(model, calib, root / f"{name}-on-{r}", True)
        with_gate.append(seconds)
        own.append(gate_s)
        without.append(timed(model, calib, root / f"{name}-off-{r}", False)[0])
    on, off = statistics.median(with_gate), statistics.median(without)
    return {"model": name, "rounds": rounds, "convert_with_gate_s": round(on, 3),
            "convert_without_gate_s": round(off, 3), "ratio": round(on / off, 4),
            "gate_own_s": round(statistics.median(own), 3),
            "gate_share": round(statistics.median(own) / on, 4),
            "figure": f"{record.metric} {record.value:.3g} on {record.samples} samples"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, build in (("mnist-cnn", mnist_model), ("mobilenetv2-0.35-160", mobilenet_model)):
            model, calib = build(root)
            rows.append(measure(name, model, calib, root, args.rounds))
    met = all(r["gate_share"] <= TARGET for r in rows)
    if args.json:
        print(json.dumps({"target_share": TARGET, "met": met, "models": rows}, indent=2))
    else:
        for r in rows:
            verdict = "met" if r["gate_share"] <= TARGET else "MISSED"
            print(f"{r['model']:<22} convert {r['convert_without_gate_s']:.2f} s without the "
                  f"gate, {r['convert_with_gate_s']:.2f} s with it (x{r['ratio']:.3f}); the "
                  f"gate's own clock {r['gate_own_s']:.3f} s = {r['gate_share']:.1%} of the "
                  f"convert (target <= {TARGET:.0%}: {verdict}); {r['figure']}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
