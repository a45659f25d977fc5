"""Which TFLite runtime is installed, and interpreters made with it.

`ai_edge_litert` (LiteRT) is preferred; `tflite_runtime` is the fallback for Pi
images that pin it. Neither is imported until an interpreter is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qrun.errors import UserError

RUNTIME_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


def interpreter_module():
    """The first importable runtime module, or a UserError naming what to install."""
    import importlib

    for name in RUNTIME_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise UserError("no TFLite runtime is installed; install one with: pip install ai-edge-litert")


def make_interpreter(model_path: Path, num_threads: Optional[int] = None):
    """A CPU interpreter for `model_path`, tensors allocated."""
    module = interpreter_module()
    try:
        interpreter = module.Interpreter(model_path=str(model_path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except ValueError as exc:
        raise UserError(f"{model_path} cannot be loaded as a TFLite model: "
                        f"{str(exc).splitlines()[0]}") from None
    return interpreter
