"""`qdeploy --help` and command dispatch stay light: each step's heavy modules load lazily.
The push library leaves presentation to the CLI: it never imports rich."""

import json
import os
import re
import subprocess
import sys

HEAVY = ("numpy", "tensorflow", "keras", "tflite", "paramiko", "matplotlib")
COMMANDS = ["convert", "evaluate", "import", "quickstart", "compile", "preflight", "push",
            "rollback", "report", "ansible"]


def loaded_after(imports: str, modules) -> list:
    """Which of `modules` a fresh interpreter has loaded after `import {imports}`."""
    code = (f"import json, sys, {imports}; "
            f"print(json.dumps(sorted(m for m in {tuple(modules)!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


def test_qdeploy_cli_import_loads_no_heavy_module():
    assert loaded_after("qdeploy.cli", HEAVY) == []


def test_push_library_does_not_import_rich():
    assert loaded_after("qdeploy.push.pipeline, qdeploy.push.fleet", ("rich", "typer")) == []
    # ... while the CLI's view of a push does: the check can tell.
    assert loaded_after("qdeploy.cli.push_view", ("rich",)) == ["rich"]


def test_help_lists_every_command_in_pipeline_order():
    done = subprocess.run([sys.executable, "-m", "qdeploy", "--help"], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, COLUMNS="120"))
    assert done.returncode == 0, done.stderr
    listed = re.findall(r"^│ (\w+) ", done.stdout, flags=re.M)
    assert listed == COMMANDS
