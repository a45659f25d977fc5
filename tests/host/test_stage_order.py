"""The host package's floors, as the README's "The host package by stage" table lists them:
each stage imports only the stages before it (and `qrun`), read from every module's
imports, those inside functions included; qrun imports nothing of qdeploy. And no module
under host/ or device/ grows past 600 lines."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST = ROOT / "host"
DEVICE = ROOT / "device"

# The README table's rows, bottom floor first; a tuple is one row of several modules.
STAGES = ["modelfile", "quantize", "edgetpu", "modelimport", "remote", "reports", "push",
          "ansible", ("quickstart", "demo"), "cli"]
BELOW_ALL = {"__init__", "errors"}  # the package root (__version__) and its error type
ABOVE_ALL = {"__main__"}  # `python -m qdeploy`: runs the CLI

MAX_LINES = 600
LONGER_ALLOWED = {"host/qdeploy/push/agent.py"}  # shipped to the device as one source file


def floor(stage: str) -> int:
    """Where `stage` (a sub-package or a top-level module of qdeploy) stands."""
    if stage in BELOW_ALL:
        return -1
    if stage in ABOVE_ALL:
        return len(STAGES)
    for k, row in enumerate(STAGES):
        if stage in (row if isinstance(row, tuple) else (row,)):
            return k
    raise AssertionError(f"qdeploy.{stage} is in no row of STAGES (nor of the README table)")


def stage_of(module: str):
    """The qdeploy stage `module` belongs to ("__init__" for the package itself and a name
    it defines, such as `__version__`), or None outside qdeploy."""
    parts = module.split(".")
    if parts[0] != "qdeploy":
        return None
    if len(parts) == 1 or not any((HOST / "qdeploy" / f"{parts[1]}{end}").exists()
                                  for end in ("", ".py")):
        return "__init__"
    return parts[1]


def modules(top: Path) -> list:
    """The source files under `top` (not caches, not a build's copies)."""
    return sorted(p for p in top.rglob("*.py")
                  if not {"__pycache__", "build"} & set(p.relative_to(top).parts))


def module_name(path: Path, top: Path) -> str:
    parts = list(path.relative_to(top).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(text: str, module: str, is_package: bool = False) -> list:
    """(line, imported module) for every import in `text`, the source of `module`, at any
    depth (function bodies too), relative ones resolved; `from a import b` gives both `a`
    and `a.b` (b may be a module)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, source))
            found += [(node.lineno, f"{source}.{alias.name}") for alias in node.names]
    return found


def imported(path: Path, top: Path) -> list:
    return imports_of(path.read_text(encoding="utf-8"), module_name(path, top),
                      path.name == "__init__.py")


def test_stages_mirror_the_readme_table():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("The host package by stage"):].split("\n\n")[1]
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    names = [tuple(n.strip(" `/") for n in row.split(",")) for row in rows]
    assert [n[0] if len(n) == 1 else n for n in names] == STAGES


def test_the_walk_sees_function_level_and_relative_imports():
    text = "import os\n\ndef f():\n    from ..reports import store\n    import qdeploy.cli\n"
    assert imports_of(text, "qdeploy.push.pipeline") == [
        (1, "os"), (4, "qdeploy.reports"), (4, "qdeploy.reports.store"), (5, "qdeploy.cli")]
    assert (1, "qdeploy.quantize.datasets") in imports_of("from . import datasets",
                                                          "qdeploy.quantize", True)


def test_every_stage_imports_only_the_stages_before_it():
    wrong = []
    for path in modules(HOST / "qdeploy"):
        own = stage_of(module_name(path, HOST))
        floor(own)  # every module stands on a row of the table
        for line, module in imported(path, HOST):
            other = stage_of(module)
            if other in (None, own) or floor(other) == -1:
                continue  # not qdeploy, the same stage, or the floor below all
            if floor(other) > floor(own):  # one row's modules may import each other
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {module}")
    assert wrong == [], "\n".join(wrong)


def test_qrun_imports_nothing_of_qdeploy():
    found = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in modules(DEVICE) for line, module in imported(path, DEVICE)
             if stage_of(module) is not None]
    assert found == []


@pytest.mark.parametrize("top", [HOST, DEVICE], ids=["host", "device"])
def test_no_module_is_longer_than_600_lines(top):
    long = []
    for path in modules(top):
        name = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and name not in LONGER_ALLOWED:
            long.append(f"{name}: {lines} lines")
    assert long == [], "split these by job: " + ", ".join(long)
