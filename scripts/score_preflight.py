#!/usr/bin/env python3
"""Score `qdeploy preflight` against compiled twins in a folder.

Every `X_edgetpu.tflite` beside its `X.tflite` is a pair: the real compiler mapped
(ops of X) - (builtin ops left in the twin). Prints, per model, exact or off by n (the
predicted minus the real count of ops on the Edge TPU) and where they differ, then the
total. Run it on your own compiled models to check the preflight's rules:

    python scripts/score_preflight.py tests/data/coral
    python scripts/score_preflight.py DIR --compiler-version 15 --json
"""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from qdeploy.edgetpu import twins
from qdeploy.errors import UserError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of X.tflite / X_edgetpu.tflite pairs")
    parser.add_argument("--compiler-version", default="16",
                        help="compiler the twins were made with (default 16)")
    parser.add_argument("--json", action="store_true", help="one JSON object per model")
    args = parser.parse_args(argv)
    found = twins.pairs(args.folder)
    if not found:
        print(f"error: no X.tflite beside X_edgetpu.tflite in {args.folder}; pass a folder "
              "of compiled twins", file=sys.stderr)
        return 2
    exact = 0
    for model, twin in found:
        try:
            s = twins.score(model, twin, compiler=args.compiler_version)
        except UserError as exc:
            print(f"{model.name}: error: {exc}", file=sys.stderr)
            continue
        exact += s.exact
        if args.json:
            print(json.dumps(asdict(s) | {"exact": s.exact, "off_by": s.off_by}))
            continue
        verdict = "exact" if s.exact else f"off by {s.off_by:+d}"
        print(f"{s.model}: {verdict} (compiler {s.mapped} of {s.ops}, predicted "
              f"{s.predicted}; first on CPU: compiler {s.compiled_first_cpu_op}, predicted "
              f"{s.predicted_first_cpu_op})")
        for line in s.differences:
            print(f"  {line}")
    if not args.json:
        print(f"exact on {exact} of {len(found)} twins (assumed compiler "
              f"{args.compiler_version})")
    return 0 if exact == len(found) else 1


if __name__ == "__main__":
    sys.exit(main())
