"""The host's half of verify inside the playbook: `python -m qdeploy.ansible.check`.

`qdeploy push --engine ansible` has the playbook run this on the controller for each host
(a `command` task delegated to localhost) once that host's `qrun verify` output is fetched:
the same comparison as a native push (qdeploy.push.crosscheck.check), so a failed verify
fails the host inside its batch, rolls it back and counts against --max-fail. Prints one
line; exit status 0 when every variant is within the tolerance, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from qdeploy.push import crosscheck
from qrun.model import manifest as qmanifest
from qrun.errors import UserError


def outcome(directory: Path, document_file: Path, tolerance: float,
            against: Optional[Path] = None):
    """The VerifyResult for a fetched `qrun verify` document against the deployment."""
    manifest = qmanifest.load(Path(directory))
    host = crosscheck.host_side(Path(directory), manifest, against=against, required=True)
    try:
        document = json.loads(Path(document_file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the device's verify output {document_file} ({exc})") from None
    return crosscheck.check(document, host.samples, host.model, host.preprocess, tolerance,
                            host.reference_sha256, host.task, host.names)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m qdeploy.ansible.check",
                                description=__doc__.splitlines()[0])
    p.add_argument("deployment", type=Path)
    p.add_argument("document", type=Path, help="the fetched `qrun verify --json -` output")
    p.add_argument("--tolerance", type=float, default=crosscheck.DEFAULT_STEPS)
    p.add_argument("--against", type=Path)
    args = p.parse_args(argv)
    try:
        result = outcome(args.deployment, args.document, args.tolerance, args.against)
    except UserError as exc:
        print(f"verify failed: {exc}", file=sys.stderr)
        return 1
    if not result.ok:
        print(f"verify failed: {result.failure(args.tolerance)}", file=sys.stderr)
        return 1
    print("; ".join(c.text() for c in result.comparisons) or "verify: nothing compared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
