"""Which model file to run, and on which device: `--model`, `--device` and the CPU twin.

`--model` names a model file or a deployment directory (with `manifest.json`);
without it qrun uses the current deployment, ``$QDEPLOY_HOME/current``
(``~/qdeploy/current``). `choose` then picks the file for the requested device:
an Edge TPU model (it holds `edgetpu-custom-op`) runs with the delegate when a
probe subprocess loaded it; in auto mode it otherwise falls back to its CPU int8
twin (`int8_model`: the manifest's "int8" artifact; for a bare file ``X.tflite``
beside ``X_edgetpu.tflite``), and the `Choice` says why in one line. The names of the
home, the roles and the files are qrun.model.layout's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from qrun.model import runtime
from qrun.errors import UserError
from qrun.model.layout import (CONVERT_FILES, CURRENT, DEFAULT_HOME, EDGETPU, FLOAT, HOME_ENV, INT8,
                         LABELS, MANIFEST_NAME, MODEL_ROLES)
from qrun.model.preprocess import CORAL_MEAN, CORAL_STD, Preprocess

if TYPE_CHECKING:
    from qrun.model.manifest import Manifest

DEVICES = ("auto", "edgetpu", "cpu")  # --device values (not roles: "edgetpu" is both)
EDGETPU_SUFFIX = "_edgetpu"
TWIN_HINT = ("compile and push a deployment with qdeploy (it carries the int8 model), "
             "or put the uncompiled {name} beside it")


@dataclass(frozen=True)
class Deployment:
    """What `--model` names: a model file and/or a deployment root with its manifest."""

    root: Optional[Path]  # directory holding manifest.json, if any
    manifest: Optional[Manifest]
    model: Optional[Path]  # the file asked for; None when a directory was given

    def role_of(self, path: Path) -> Optional[str]:
        """The model role (FLOAT, INT8, EDGETPU) of a file, if the manifest lists it."""
        if self.manifest is None:
            return None
        for role, art in self.manifest.artifacts.items():
            if art.file == Path(path).name and role in MODEL_ROLES:
                return role
        return None

    def artifact(self, role: str) -> Optional[Path]:
        """The file of `role` in the deployment, if listed and present."""
        if self.manifest is None or self.root is None:
            return None
        path = self.manifest.path_of(self.root, role)
        return path if path is not None and path.is_file() else None


@dataclass(frozen=True)
class Choice:
    """The model file to run, on which device, and why (one line)."""

    path: Path
    variant: Optional[str]  # a model role (FLOAT, INT8, EDGETPU); None until the model is read
    requested: str
    used: str  # "cpu" | "edgetpu"
    reason: str
    fell_back: bool = False
    tpu: str = ""  # Edge TPU device option when used == "edgetpu"


def qdeploy_home() -> Path:
    """``$QDEPLOY_HOME``, else DEFAULT_HOME."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def resolve(model: Optional[Path]) -> Deployment:
    """A Deployment for `--model` (a file or a directory), or the current deployment."""
    if model is None:
        current = qdeploy_home() / CURRENT
        if not current.exists():
            raise UserError(f"no --model given and no current deployment at {current}; push one "
                            "with qdeploy push, set QDEPLOY_HOME, or pass --model FILE")
        model = current
    model = Path(model)
    if model.is_dir():
        from qrun.model import manifest as manifest_mod

        return Deployment(root=model, manifest=manifest_mod.load(model), model=None)
    if not model.is_file():
        raise UserError(f"model not found: {model}; give a .tflite file or a deployment directory")
    if (model.parent / MANIFEST_NAME).is_file():  # a bare model file needs no manifest module
        from qrun.model import manifest as manifest_mod

        # Another tool's manifest.json beside the file (no schema_version) is not ours:
        # the file is then a bare model. A broken qdeploy manifest is still an error.
        loaded = manifest_mod.load(model.parent, foreign_ok=True)
        if loaded is not None and any(a.file == model.name for a in loaded.artifacts.values()):
            return Deployment(root=model.parent, manifest=loaded, model=model)
    return Deployment(root=None, manifest=None, model=model)


def edgetpu_model(dep: Deployment) -> Optional[Path]:
    """The Edge TPU model of the deployment, if it has one."""
    if dep.model is None:
        return dep.artifact(EDGETPU)
    return dep.model if runtime.is_edgetpu_model(dep.model) else None


def int8_model(directory: Path, manifest: Optional[Manifest]) -> Optional[Path]:
    """The int8 model of a deployment directory, if its file is there.

    The manifest's "int8" artifact when it lists one; without a manifest, or with one
    that lists none, the file `qdeploy convert` names it (model_int8.tflite). Used by
    qrun (the CPU twin), compile, preflight, evaluate and push's cross-check alike.
    """
    listed = manifest.path_of(directory, INT8) if manifest is not None else None
    path = listed or Path(directory) / CONVERT_FILES[INT8]
    return path if path.is_file() else None


def cpu_model(dep: Deployment) -> Optional[Path]:
    """The model to run on the CPU: the file itself, or the twin of an Edge TPU model."""
    if dep.model is None:
        return int8_model(dep.root, dep.manifest) or dep.artifact(FLOAT)
    if not runtime.is_edgetpu_model(dep.model):
        return dep.model
    return twin_of(dep)


def twin_of(dep: Deployment) -> Optional[Path]:
    """The CPU int8 twin of an Edge TPU model file: the manifest's, else X.tflite beside it."""
    if dep.manifest is not None:
        twin = int8_model(dep.root, dep.manifest)
        if twin is not None:
            return twin
    stem = dep.model.stem
    if stem.endswith(EDGETPU_SUFFIX):
        sibling = dep.model.with_name(stem[: -len(EDGETPU_SUFFIX)] + dep.model.suffix)
        if sibling.is_file() and not runtime.is_edgetpu_model(sibling):
            return sibling
    return None


def variant_hint(dep: Deployment, path: Path) -> Optional[str]:
    """The variant of `path` if known without loading it (manifest role or custom op)."""
    role = dep.role_of(path)
    if role:
        return role
    return EDGETPU if runtime.is_edgetpu_model(path) else None


def choose(dep: Deployment, requested: str = "auto", tpu: str = "",
           probe: Optional[Callable] = None) -> Choice:
    """Pick the model file and device for `requested` ("auto", "edgetpu" or "cpu").

    Args:
      dep: what `resolve` returned.
      requested: the `--device` value.
      tpu: the Edge TPU device option ("", "usb", "pci:0", ...).
      probe: `qrun.model.delegate_probe.probe_delegate` or a stand-in with its signature.
    Returns:
      A Choice; a request that cannot be met raises UserError naming the fix.
    """
    if requested not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, not '{requested}'")
    tpu = runtime.check_device(tpu)
    tpu_model = edgetpu_model(dep)
    cpu = cpu_model(dep)
    asked = dep.model or dep.root
    if tpu_model is None and cpu is None:
        raise UserError(f"{asked} holds no model to run{_missing_files(dep)}; push the "
                        "deployment again (qdeploy push) or pass --model FILE")
    no_int8 = _int8_missing(dep, cpu)
    if requested == "cpu":
        if cpu is None:
            raise UserError(f"{asked} has no CPU model to run with --device cpu; "
                            + TWIN_HINT.format(name=_twin_name(tpu_model)))
        twin = dep.model is not None and cpu != dep.model
        reason = "--device cpu" + (f"; running the twin {cpu.name}" if twin else "")
        return Choice(cpu, variant_hint(dep, cpu), requested, "cpu", reason + no_int8,
                      fell_back=bool(no_int8))
    if tpu_model is None:
        if requested == "edgetpu":
            raise UserError(f"--device edgetpu needs an Edge TPU model, and {asked} has none; "
                            "compile one with qdeploy compile (edgetpu_compiler), or use "
                            "--device cpu")
        what = "the model has no Edge TPU ops" if dep.model else "the deployment has no Edge " \
            "TPU model"
        return Choice(cpu, variant_hint(dep, cpu), requested, "cpu",
                      f"{what}; ran on the CPU{no_int8}", fell_back=bool(no_int8))
    if probe is None:
        from qrun.model.delegate_probe import probe_delegate as probe
    library = runtime.edgetpu_library()
    result = probe(library, tpu, tpu_model)
    if result.ok:
        return Choice(tpu_model, EDGETPU, requested, "edgetpu", result.reason, tpu=tpu)
    if requested == "edgetpu":
        raise UserError(f"--device edgetpu: {result.reason}; fix that, or use --device auto to "
                        "fall back to the CPU twin")
    if cpu is None:
        raise UserError(f"{result.reason}, and {tpu_model.name} has no CPU twin to fall back "
                        "to; " + TWIN_HINT.format(name=_twin_name(tpu_model)))
    variant = variant_hint(dep, cpu) or INT8
    return Choice(cpu, variant, requested, "cpu",
                  f"{result.reason}; fell back to {variant} twin {cpu.name}{no_int8}",
                  fell_back=True)


@dataclass
class Loaded:
    """An interpreter ready to invoke, with the time it took to build."""

    interpreter: object
    choice: Choice
    variant: str
    init_ms: float


def load(choice: Choice, num_threads: Optional[int] = None) -> Loaded:
    """Build the interpreter for `choice` (loading the delegate in-process if it uses the TPU)."""
    start = time.perf_counter()
    delegates = None
    if choice.used == "edgetpu":
        delegates = [runtime.load_edgetpu_delegate(choice.tpu)]
    interpreter = runtime.make_interpreter(choice.path, num_threads, delegates)
    init_ms = (time.perf_counter() - start) * 1e3
    variant = choice.variant or variant_of(interpreter)
    return Loaded(interpreter, choice, variant, init_ms)


def variant_of(interpreter) -> str:
    """INT8 when the model computes in 8-bit integers, else FLOAT (from its tensors)."""
    from qrun.model.tensors import TensorSpec

    integer = ("int8", "uint8")
    for details in interpreter.get_input_details() + interpreter.get_output_details():
        if TensorSpec.from_details(details).dtype in integer:
            return INT8
    try:
        tensors = [TensorSpec.from_details(t) for t in interpreter.get_tensor_details()]
    except (ValueError, RuntimeError):
        return FLOAT
    quantized = [t for t in tensors if t.dtype in integer and t.scale != 0]
    return INT8 if quantized else FLOAT


def preprocess_of(dep: Deployment) -> Preprocess:
    """The manifest's preprocessing, else Coral's defaults (mean 128, std 128)."""
    if dep.manifest is not None:
        return dep.manifest.preprocess
    return Preprocess(mean=CORAL_MEAN, std=CORAL_STD)


def labels_path(dep: Deployment, given: Optional[Path]) -> Optional[Path]:
    """`--labels`, else the deployment's labels file, else None."""
    if given is not None:
        return Path(given)
    if dep.manifest is None or dep.root is None:
        return None
    path = dep.manifest.path_of(dep.root, LABELS)
    if path is None and dep.manifest.labels:
        path = dep.root / dep.manifest.labels
    return path


def _missing_files(dep: Deployment) -> str:
    """ " (manifest lists X, which is missing)" for model artifacts whose file is gone."""
    if dep.manifest is None or dep.root is None:
        return ""
    gone = [a.file for role, a in dep.manifest.artifacts.items()
            if role in MODEL_ROLES and not (dep.root / a.file).is_file()]
    return f" (manifest.json lists {', '.join(gone)}, which is missing)" if gone else ""


def _int8_missing(dep: Deployment, cpu: Optional[Path]) -> str:
    """ "; the int8 model X the manifest names is missing, so the float model Y ran instead"
    when a deployment directory's int8 file is gone and its float model stands in (else "")."""
    if dep.model is not None or dep.manifest is None or cpu is None:
        return ""
    listed = dep.manifest.artifacts.get(INT8)
    if listed is None or dep.artifact(INT8) is not None:
        return ""
    return (f"; the int8 model {listed.file} named in manifest.json is missing, so the float "
            f"model {cpu.name} ran instead (push the deployment again)")


def _twin_name(tpu_model: Optional[Path]) -> str:
    if tpu_model is None:
        return "int8 model"
    stem = tpu_model.stem
    base = stem.removesuffix(EDGETPU_SUFFIX)
    return base + tpu_model.suffix
