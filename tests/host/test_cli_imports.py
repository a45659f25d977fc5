"""`qdeploy --help` and command dispatch stay light: each step's heavy modules load lazily."""

import subprocess
import sys

HEAVY = ("numpy", "tensorflow", "keras", "tflite", "paramiko", "matplotlib")


def test_qdeploy_cli_import_loads_no_heavy_module():
    code = ("import sys, qdeploy.cli; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"
