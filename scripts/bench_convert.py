#!/usr/bin/env python3
"""What full-integer quantization costs the quickstart model, against the issue's targets.

Trains the demo model on the first 8,000 images of the bundled MNIST test split, converts
it with `qdeploy convert`'s code, and evaluates float and int8 side by side on the last
2,000 images (held out). Targets: |Δ accuracy| ≤ 0.1 pp, top-1 agreement ≥ 99.5%,
float/int8 size ratio ≥ 3.3. Exits 1 if a target is missed.

Usage: .venv/bin/python scripts/bench_convert.py [--epochs N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"abs_delta_pp": 0.1, "agreement": 0.995, "size_ratio": 3.3}


class Quiet:
    @contextlib.contextmanager
    def step(self, title, total=None):
        print(f"  {title} ...", file=sys.stderr, flush=True)
        yield lambda done, of=None: None

    def note(self, text):
        print(text, file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from qdeploy import quickstart

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = quickstart.run(Path(tmp) / "out", Quiet(), epochs=args.epochs, push=False)
    e = result.evaluation
    checks = {
        "abs_delta_pp": abs(e.delta_pp) <= TARGETS["abs_delta_pp"],
        "agreement": e.agreement >= TARGETS["agreement"],
        "size_ratio": e.size_ratio >= TARGETS["size_ratio"],
    }
    if args.json:
        print(json.dumps({**e.to_dict(), "targets": TARGETS, "met": checks,
                          "seconds": time.perf_counter() - start}, indent=2))
    else:
        print(f"held-out MNIST images:  {e.samples} (trained on the other 8,000 of the test split)")
        print(f"float accuracy:         {e.float_accuracy:.2%}")
        print(f"int8 accuracy:          {e.int8_accuracy:.2%}")
        print(f"delta:                  {e.delta_pp:+.2f} pp   (target |delta| <= 0.1 pp: "
              f"{'met' if checks['abs_delta_pp'] else 'MISSED'})")
        print(f"top-1 agreement:        {e.agreement:.2%}   (target >= 99.5%: "
              f"{'met' if checks['agreement'] else 'MISSED'})")
        print(f"size float / int8:      {e.float_size:,} / {e.int8_size:,} bytes = "
              f"{e.size_ratio:.2f}x   (target >= 3.3x: "
              f"{'met' if checks['size_ratio'] else 'MISSED'})")
        print(f"whole run (train + convert + evaluate): {time.perf_counter() - start:.1f} s")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
