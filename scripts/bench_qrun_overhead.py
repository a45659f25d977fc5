#!/usr/bin/env python3
"""`qrun bench` steady-state median vs a bare `interpreter.invoke()` loop (target ratio <= 1.05).

Two measurements, both printed:
- processes: `qrun bench --json -` and a bare-loop script as separate processes on
  the same model, runtime, thread setting and input, alternating for --rounds
  rounds; ratio = median(qrun medians) / median(bare medians). This is the target.
- interleaved: in one process on one interpreter, blocks of qrun's own timing
  loop (qrun.measure.bench.timed_invokes) alternate with blocks of a bare loop, so
  machine noise falls on both alike; ratio of the two medians.

    .venv/bin/python scripts/bench_qrun_overhead.py [--model M] [--runs 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "tests" / "data" / "coral" / "mobilenet_v2_1.0_224_inat_bird_quant.tflite"
TARGET = 1.05

# The bare loop: what anyone would write by hand, with qrun's input (random, seed 0).
BARE = r"""
import json, sys, time
import numpy as np
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tflite_runtime.interpreter import Interpreter
model, runs, warmup, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
it = Interpreter(model_path=model, num_threads=int(threads) if threads != "none" else None)
it.allocate_tensors()
d = it.get_input_details()[0]
rng = np.random.default_rng(0)
info = np.iinfo(d["dtype"]) if np.issubdtype(d["dtype"], np.integer) else None
data = (rng.integers(info.min, int(info.max) + 1, size=d["shape"], dtype=d["dtype"]) if info
        else rng.random(size=d["shape"]).astype(d["dtype"]))
it.set_tensor(d["index"], data)
for _ in range(1 + warmup):
    it.invoke()
times = []
for _ in range(runs):
    t = time.perf_counter_ns()
    it.invoke()
    times.append((time.perf_counter_ns() - t) / 1e3)
print(json.dumps({"median": float(np.median(times))}))
"""


def qrun_command() -> list[str]:
    script = Path(sys.executable).with_name("qrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "qrun"]


def qrun_median(model: Path, runs: int, warmup: int, threads: str) -> float:
    cmd = qrun_command() + ["bench", "--model", str(model), "--runs", str(runs),
                            "--warmup", str(warmup), "--device", "cpu", "--json", "-"]
    if threads != "none":
        cmd += ["--threads", threads]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)["latency_us"]["median"]


def bare_median(model: Path, runs: int, warmup: int, threads: str) -> float:
    done = subprocess.run([sys.executable, "-c", BARE, str(model), str(runs), str(warmup), threads],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["median"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", default="1",
                        help="CPU threads for both, or 'none' for the runtime's default (default 1: "
                             "least disturbed by other processes)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    q, b = [], []
    for i in range(args.rounds):
        # Alternate which goes first, so a drift in load favours neither.
        pair = [("qrun", qrun_median), ("bare", bare_median)]
        for name, fn in pair if i % 2 == 0 else pair[::-1]:
            (q if name == "qrun" else b).append(fn(args.model, args.runs, args.warmup, args.threads))
        print(f"round {i + 1}: qrun bench median {q[-1]:.1f} us, bare loop median {b[-1]:.1f} us",
              file=sys.stderr)
    ratio = statistics.median(q) / statistics.median(b)
    iq, ib = interleaved(args.model, args.runs, args.rounds, args.threads)
    print(f"model {args.model.name}, threads {args.threads}, {args.runs} runs x {args.rounds} "
          f"rounds: qrun bench median {statistics.median(q):.1f} us, bare invoke loop "
          f"{statistics.median(b):.1f} us, ratio {ratio:.3f} (target <= {TARGET}) "
          f"{'OK' if ratio <= TARGET else 'OVER'}; interleaved in one process: {iq:.1f} vs "
          f"{ib:.1f} us, ratio {iq / ib:.3f}")
    return 0 if ratio <= TARGET else 1


def interleaved(model: Path, runs: int, rounds: int, threads: str) -> tuple[float, float]:
    """Medians of qrun's timing loop and a bare loop, alternating blocks on one interpreter."""
    import time

    from qrun.measure import bench
    from qrun.model import runtime

    interpreter = runtime.make_interpreter(model, None if threads == "none" else int(threads))
    bench.fill_inputs(interpreter)
    for _ in range(10):
        interpreter.invoke()
    ours, bare = [], []
    block = max(runs // 10, 1)
    for i in range(rounds * 10):
        if i % 2 == 0:
            ours += bench.timed_invokes(interpreter, block, model)
        else:
            for _ in range(block):
                t = time.perf_counter_ns()
                interpreter.invoke()
                bare.append((time.perf_counter_ns() - t) / 1e3)
    return statistics.median(ours), statistics.median(bare)


if __name__ == "__main__":
    sys.exit(main())
