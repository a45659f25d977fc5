#!/usr/bin/env python3
"""`qrun classify` process start to printed answer vs a minimal classify script (target ratio <= 1.3).

The minimal script imports the runtime, numpy and PIL, loads the model and the
labels, classifies one image and prints the top label: the least any tool must
do. Both run as fresh processes, alternating for --rounds rounds; the ratio is
median(qrun wall times) / median(minimal wall times), judged against the target.
Printed beside it: the median of the per-round ratios (each pair ran back to
back) and the CPU-time ratio (user + sys of each child), which on a shared, busy
machine move far less than the wall-time medians, and the ratio of the fastest
run of each (noise on a shared machine only ever adds time, so the minimum is the
steadiest estimate of what start-up costs).

    .venv/bin/python scripts/bench_qrun_startup.py [--model M --image I --labels L] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORAL = ROOT / "tests" / "data" / "coral"
TARGET = 1.3

MINIMAL = r"""
import sys
import numpy as np
from PIL import Image
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tflite_runtime.interpreter import Interpreter
model, image, labels = sys.argv[1:4]
it = Interpreter(model_path=model)
it.allocate_tensors()
d = it.get_input_details()[0]
_, h, w, _ = d["shape"]
pixels = np.asarray(Image.open(image).convert("RGB").resize((w, h), Image.LANCZOS))
it.set_tensor(d["index"], pixels[None])
it.invoke()
o = it.get_output_details()[0]
q = it.get_tensor(o["index"])[0]
scale, zero = o["quantization"]
top = int(np.argmax(q))
names = open(labels, encoding="utf-8").read().splitlines()
print(f"{names[top]}: {scale * (int(q[top]) - zero):.5f}")
"""


def qrun_command() -> list[str]:
    script = Path(sys.executable).with_name("qrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "qrun"]


def wall(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, child CPU seconds, last stdout line) of one run of `cmd`."""
    before = os.times()
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system
                                                          - before.children_system)
    return seconds, cpu, done.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path,
                        default=CORAL / "mobilenet_v2_1.0_224_inat_bird_quant.tflite")
    parser.add_argument("--image", type=Path, default=CORAL / "parrot.jpg")
    parser.add_argument("--labels", type=Path, default=CORAL / "inat_bird_labels.txt")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    qrun_cmd = qrun_command() + ["classify", str(args.image), "--model", str(args.model),
                                 "--labels", str(args.labels), "--top-k", "1"]
    minimal_cmd = [sys.executable, "-c", MINIMAL, str(args.model), str(args.image),
                   str(args.labels)]
    wall(qrun_cmd), wall(minimal_cmd)  # warm the page cache for both; not counted
    q, m, qc, mc = [], [], [], []
    for i in range(args.rounds):
        pair = [("qrun", qrun_cmd), ("minimal", minimal_cmd)]
        for name, cmd in pair if i % 2 == 0 else pair[::-1]:
            seconds, cpu, answer = wall(cmd)
            (q if name == "qrun" else m).append(seconds)
            (qc if name == "qrun" else mc).append(cpu)
        print(f"round {i + 1}: qrun {q[-1]:.3f} s (cpu {qc[-1]:.3f}), minimal {m[-1]:.3f} s "
              f"(cpu {mc[-1]:.3f}) -> {answer}", file=sys.stderr)
    ratio = statistics.median(q) / statistics.median(m)
    cpu_ratio = statistics.median(qc) / statistics.median(mc)
    paired = statistics.median(a / b for a, b in zip(q, m))
    best = min(q) / min(m)
    print(f"model {args.model.name} + {args.image.name}, {args.rounds} rounds: qrun classify "
          f"{statistics.median(q):.3f} s, minimal script {statistics.median(m):.3f} s, "
          f"ratio {ratio:.3f} (target <= {TARGET}) {'OK' if ratio <= TARGET else 'OVER'}; "
          f"median per-round ratio {paired:.3f}; CPU time {statistics.median(qc):.3f} s vs {statistics.median(mc):.3f} s, "
          f"ratio {cpu_ratio:.3f}; fastest runs {min(q):.3f} s vs {min(m):.3f} s, ratio {best:.3f}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
