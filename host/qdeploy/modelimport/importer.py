"""`qdeploy import`: a deployment directory from a .tflite made elsewhere.

The models are found first (a quantized CPU model, an `_edgetpu` model and its CPU
twin, or a float model), their tensors read with the device runtime and compared
(a compiled twin must have its source's inputs and outputs); then labels,
preprocessing and task are chosen (qdeploy.modelimport.choices: what the file says
about itself, an option overriding it with a note) and the reference inputs for verify
(qdeploy.modelimport.references) — all of it, and every check, before anything is
written (`plan`); then everything is staged in a scratch directory beside
`out` and renamed into place, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from qrun import __version__
from qrun.model import manifest as mf
from qrun.model import runtime
from qrun.model.deployment import EDGETPU_SUFFIX
from qrun.model.tensors import TensorSpec

from qdeploy.edgetpu import ops as ops_table
from qdeploy.edgetpu import preflight
from qdeploy.modelfile import tflite_graph
from qdeploy.errors import UserError
from qdeploy.modelimport import choices, references
from qdeploy.modelfile import selfdescribe, tasks

TOOL = "qdeploy import"
EDGETPU_FILE = "model_int8_edgetpu.tflite"  # what qdeploy compile names the int8 model's twin


@dataclass
class Models:
    """The model files an import ships, by role (qrun.model.layout: INT8, EDGETPU, FLOAT)."""

    files: dict  # role -> Path of the source file
    notes: list = field(default_factory=list)

    @property
    def cpu(self) -> Optional[Path]:
        """The model the host can run: the int8 twin, else the float model."""
        return self.files.get(mf.INT8) or self.files.get(mf.FLOAT)

    @property
    def described(self) -> Path:
        """The file whose graph gives the task: the CPU model, else the compiled one."""
        return self.cpu or self.files[mf.EDGETPU]


@dataclass
class ImportResult:
    """What `import_model` made: the directory, its manifest and the lines to print."""

    out_dir: Path
    manifest: mf.Manifest
    notes: list  # `note:` lines: what was overridden, what is off and why
    task_line: str  # the task chosen and why
    reference_line: str  # which reference inputs were written (or why none)


# --- which models ------------------------------------------------------------------

def find_models(model: Path, edgetpu: Optional[Path] = None,
                cpu: Optional[Path] = None) -> Models:
    """The roles of MODEL, --edgetpu and --cpu, with the CPU twin found beside an
    `_edgetpu` MODEL when --cpu is not given."""
    model = Path(model)
    check_model_file(model)
    for given in (edgetpu, cpu):
        if given is not None:
            check_model_file(Path(given))
    if edgetpu is not None and cpu is not None:
        raise UserError("give --edgetpu (the compiled twin of a CPU MODEL) or --cpu (the CPU "
                        "twin of an _edgetpu MODEL), not both")
    if runtime.is_edgetpu_model(model):
        if edgetpu is not None:
            raise UserError(f"{model} is already an Edge TPU model; pass its CPU twin with "
                            "--cpu, not --edgetpu")
        return compiled_models(model, cpu)
    if cpu is not None:
        raise UserError(f"--cpu names the CPU twin of an _edgetpu model, and {model} is a CPU "
                        "model; pass its compiled twin with --edgetpu instead")
    role = mf.FLOAT if preflight.not_quantized(tflite_graph.load(model)) else mf.INT8
    files = {role: model}
    notes = []
    if role == mf.FLOAT:
        notes.append(f"{model.name} is a float model: imported as a float-only deployment "
                     "(runs on the CPU); full-integer quantization for the Edge TPU needs the "
                     "source model: qdeploy convert SOURCE --calib DATA")
    if edgetpu is not None:
        if not runtime.is_edgetpu_model(edgetpu):
            raise UserError(f"--edgetpu {edgetpu} holds no edgetpu-custom-op: it is not "
                            "compiled for the Edge TPU; compile it with qdeploy compile")
        if role == mf.FLOAT:
            raise UserError(f"--edgetpu {edgetpu} cannot be the twin of the float model "
                            f"{model}; an Edge TPU model is compiled from a full-integer one")
        files[mf.EDGETPU] = Path(edgetpu)
    return Models(files, notes)


def compiled_models(model: Path, cpu: Optional[Path]) -> Models:
    """An `_edgetpu` model and its CPU twin: --cpu, else X.tflite beside X_edgetpu.tflite."""
    if cpu is not None:
        if runtime.is_edgetpu_model(cpu):
            raise UserError(f"--cpu {cpu} is an Edge TPU model too; pass the CPU model "
                            f"{model.name} was compiled from")
        return Models({mf.INT8: Path(cpu), mf.EDGETPU: model})
    twin = twin_beside(model)
    if twin is not None:
        return Models({mf.INT8: twin, mf.EDGETPU: model},
                      [f"found the CPU twin {twin.name} beside {model.name}"])
    name = (model.stem[: -len(EDGETPU_SUFFIX)] if model.stem.endswith(EDGETPU_SUFFIX)
            else model.stem + "_cpu") + ".tflite"
    return Models({mf.EDGETPU: model},
                  [f"{model.name} has no CPU twin (no {name} beside it, no --cpu): verify and "
                   "the CPU fallback are off, since both run the CPU model; pass --cpu "
                   "X.tflite to turn them on"])


def twin_beside(model: Path) -> Optional[Path]:
    """X.tflite beside X_edgetpu.tflite, when it is a CPU model."""
    if not model.stem.endswith(EDGETPU_SUFFIX):
        return None
    sibling = model.with_name(model.stem[: -len(EDGETPU_SUFFIX)] + model.suffix)
    return sibling if sibling.is_file() and not runtime.is_edgetpu_model(sibling) else None


def check_model_file(path: Path) -> None:
    """A UserError unless `path` is a readable TFLite flatbuffer (first bytes and graph)."""
    if path.is_dir():
        raise UserError(f"{path} is a directory; pass the .tflite model file")
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a .tflite model file")
    tflite_graph.load(path)


# --- tensors -----------------------------------------------------------------------

def tensor_specs(path: Path) -> tuple:
    """(inputs, outputs): TensorSpec of every tensor, in the interpreter's order.

    An Edge TPU model is read without allocating (that would need the delegate); a CPU
    model is allocated, which also proves the runtime can run it.
    """
    if runtime.is_edgetpu_model(path):
        try:
            interpreter = runtime.interpreter_module().Interpreter(model_path=str(path))
        except ValueError as exc:
            raise UserError(f"{path} cannot be loaded as a TFLite model: "
                            f"{str(exc).splitlines()[0]}; check the file is complete") from None
    else:
        interpreter = runtime.make_interpreter(path)
    return ([TensorSpec.from_details(d) for d in interpreter.get_input_details()],
            [TensorSpec.from_details(d) for d in interpreter.get_output_details()])


def check_twins(cpu: Path, compiled: Path, cpu_specs: tuple, compiled_specs: tuple) -> None:
    """The compiled model must have its CPU twin's inputs and outputs (names aside)."""
    for end, mine, theirs in zip(("input", "output"), compiled_specs, cpu_specs):
        if len(mine) != len(theirs):
            raise UserError(f"{compiled.name} has {len(mine)} {end}(s) but {cpu.name} has "
                            f"{len(theirs)}: they are not twins; pass the CPU model it was "
                            "compiled from with --cpu")
        for i, (a, b) in enumerate(zip(mine, theirs)):
            if a != b:
                raise UserError(f"{end} {i} ({a.name or 'unnamed'}) of {compiled.name} is "
                                f"{describe_spec(a)} but {cpu.name} has {describe_spec(b)}: "
                                "they are not twins; pass the CPU model it was compiled from "
                                "with --cpu")


def describe_spec(spec: TensorSpec) -> str:
    quant = (f"scale {spec.scale:.6g}, zero point {spec.zero_point}" if spec.quantized
             else "not quantized")
    return f"{spec.shape} {spec.dtype} ({quant})"


# --- the compiled model --------------------------------------------------------------

def compiled_record(compiled: Path, cpu: Optional[Path]) -> mf.Compiled:
    """What the compiled model itself tells: its Edge TPU subgraphs, ops left on the CPU,
    and (with the twin) how many of the twin's ops it maps."""
    graph = tflite_graph.load(compiled)
    custom = sum(op.name == ops_table.EDGETPU_CUSTOM_OP for op in graph.ops)
    on_cpu = len(graph.ops) - custom
    on_edgetpu = len(tflite_graph.load(cpu).ops) - on_cpu if cpu is not None else None
    return mf.Compiled(edgetpu_subgraphs=custom, ops_on_cpu=on_cpu, ops_on_edgetpu=on_edgetpu,
                       extra={"source": "imported"})


# --- the directory -------------------------------------------------------------------

def default_out(model: Path) -> Path:
    """./qdeploy-out/<model stem without _edgetpu>."""
    stem = Path(model).stem
    if stem.endswith(EDGETPU_SUFFIX):
        stem = stem[: -len(EDGETPU_SUFFIX)]
    return Path("qdeploy-out") / stem


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory to create")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; pass a new directory with "
                        "--out, or remove it")


@dataclass
class Plan:
    """Everything an import will write, chosen and checked before anything is."""

    models: Models
    inputs: list
    outputs: list
    task: mf.Task
    preprocess: object  # qrun.model.preprocess.Preprocess
    labels_text: Optional[str]
    reference: Optional[tuple]  # (file name, writer) or None
    notes: list
    task_line: str
    reference_line: str


def plan(model: Path, edgetpu: Optional[Path], cpu: Optional[Path], labels: Optional[Path],
         task: str, preprocess: Optional[str], reference: Optional[Path],
         progress: Callable[[str], None]) -> Plan:
    """Find the models, read and compare their tensors, choose labels, preprocessing, task
    and reference inputs; every problem is a UserError."""
    if task not in tasks.TASK_CHOICES:
        raise UserError(f"--task {task} is not a task; use one of "
                        f"{', '.join(tasks.TASK_CHOICES)}")
    models = find_models(model, edgetpu, cpu)
    notes = list(models.notes)
    progress(f"reading {model.name}")
    specs = {role: tensor_specs(path) for role, path in models.files.items()}
    if mf.EDGETPU in models.files and models.cpu is not None:
        check_twins(models.cpu, models.files[mf.EDGETPU], specs[mf.INT8], specs[mf.EDGETPU])
    inputs, outputs = specs[mf.INT8 if mf.INT8 in specs else next(iter(specs))]
    description = selfdescribe.describe(models.described)
    graph = tflite_graph.load(models.described)
    found_labels, text = choices.choose_labels(labels, description, notes)
    pre = choices.choose_preprocess(preprocess, description, inputs[0], notes)
    chosen = choices.choose_task(task, description, graph, found_labels is not None, notes)
    if found_labels is not None and chosen.kind != mf.RAW:
        classes = choices.classes_of(chosen, outputs)
        if classes is not None:
            found_labels, text = choices.fit_labels(found_labels, text, classes, labels,
                                                    description, notes)
    if found_labels is not None and chosen.kind == mf.RAW:
        notes.append("the labels are kept in labels.txt, but --task raw does not use them")
    try:
        mf.check_channels(pre, inputs[0])
    except ValueError as exc:
        raise UserError(f"{exc}; pass --preprocess for this input") from None
    ref, reference_line = reference_inputs(model, models, reference, inputs, pre)
    task_line = (f"task: {chosen.kind} ({chosen.source}: {chosen.reason})"
                 + (f", outputs {chosen.outputs}" if chosen.outputs else ""))
    progress(task_line)
    return Plan(models, inputs, outputs, chosen, pre, text, ref, notes, task_line,
                reference_line)


def reference_inputs(model: Path, models: Models, given: Optional[Path], inputs: list,
                     pre) -> tuple:
    """((file name, writer) or None, the line saying which): none without an int8 model,
    since verify compares the device with the host's int8 model."""
    if models.cpu is None or mf.INT8 not in models.files:
        if given is not None:
            raise UserError(f"--reference: {model.name} has no CPU int8 model for verify to "
                            "compare with; pass its CPU twin with --cpu")
        return None, ("reference inputs: none (verify compares the device with the host's "
                      "int8 model, and this deployment has none)")
    if given is not None:
        name, writer, line = references.given_reference(given, inputs, pre)
    else:
        name, writer, line = references.random_reference(inputs)
    return (name, writer), line


def write(p: Plan, model: Path, stage: Path) -> mf.Manifest:
    """Copy the models, write labels, reference inputs and the manifest into `stage`."""
    artifacts = {}
    names = {mf.INT8: mf.CONVERT_FILES[mf.INT8], mf.FLOAT: mf.CONVERT_FILES[mf.FLOAT],
             mf.EDGETPU: EDGETPU_FILE}
    for role, path in p.models.files.items():
        shutil.copyfile(path, stage / names[role])
        artifacts[role] = mf.artifact_for(stage / names[role])
    if p.labels_text is not None:
        (stage / mf.CONVERT_FILES[mf.LABELS]).write_text(p.labels_text, encoding="utf-8")
        artifacts[mf.LABELS] = mf.artifact_for(stage / mf.CONVERT_FILES[mf.LABELS])
    if p.reference is not None:
        name, writer = p.reference
        writer(stage / name)
        artifacts[mf.REFERENCE] = mf.artifact_for(stage / name)
    files = p.models.files
    manifest = mf.Manifest(
        inputs=p.inputs, outputs=p.outputs, task=p.task, preprocess=p.preprocess,
        artifacts=artifacts,
        labels=mf.CONVERT_FILES[mf.LABELS] if p.labels_text is not None else None,
        converter=mf.Converter(tool=TOOL, source_model=model.name, source_kind="tflite",
                               extra={"source_files": {role: str(path) for role, path
                                                       in files.items()}}),
        compiled=(compiled_record(files[mf.EDGETPU], p.models.cpu)
                  if mf.EDGETPU in files else None),
        created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        qdeploy_version=__version__)
    mf.save(manifest, stage)
    mf.load(stage)  # what was written reads back
    return manifest


def import_model(model: Path, edgetpu: Optional[Path] = None, cpu: Optional[Path] = None,
                 labels: Optional[Path] = None, task: str = "auto",
                 preprocess: Optional[str] = None, reference: Optional[Path] = None,
                 out: Optional[Path] = None,
                 progress: Callable[[str], None] = lambda line: None) -> ImportResult:
    """Make a deployment directory at `out` from an existing .tflite (see the module doc).

    Args:
      model: a quantized CPU model, an `_edgetpu` model or a float model.
      edgetpu, cpu: the compiled twin of a CPU `model`, or the CPU twin of an `_edgetpu` one.
      labels: a labels file (beats the model's own); task: "auto" or a task kind.
      preprocess: a --preprocess value (beats the model's normalization).
      reference: images, a folder of them, or an .npy/.npz of reference inputs.
      out: the directory to create (absent or empty); default `default_out(model)`.
      progress: called with a line per step.
    Returns:
      ImportResult. Every problem is a UserError, and then nothing is written.
    """
    model = Path(model)
    out = Path(out) if out is not None else default_out(model)
    check_out(out)
    chosen = plan(model, edgetpu, cpu, labels, task, preprocess, reference, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        manifest = write(chosen, model, stage)
        if out.is_dir():
            out.rmdir()  # empty (check_out); a race that filled it fails here, not silently
        os.rename(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return ImportResult(out, manifest, chosen.notes, chosen.task_line, chosen.reference_line)
