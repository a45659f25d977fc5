"""`qdeploy import`: a deployment directory from a .tflite made elsewhere.

The models are found first (a quantized CPU model, an `_edgetpu` model and its CPU
twin, or a float model), their tensors read with the device runtime and compared
(a compiled twin must have its source's inputs and outputs); then labels,
preprocessing and task come from what the file says about itself
(qdeploy.modelimport.selfdescribe), an option overriding it with a note; reference
inputs for verify are written; everything is staged in a scratch directory beside
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

import numpy as np

from qrun import __version__
from qrun import manifest as mf
from qrun import reference as qref
from qrun import runtime
from qrun.deployment import EDGETPU_SUFFIX
from qrun.labels import Labels, check_fit, parse_labels, read_labels
from qrun.preprocess import (CORAL_MEAN, CORAL_STD, Preprocess, is_identity, load_image,
                             parse_preprocess)
from qrun.tensors import TensorSpec

from qdeploy.edgetpu import ops as ops_table
from qdeploy.edgetpu import preflight, tflite_graph
from qdeploy.errors import UserError
from qdeploy.modelimport import selfdescribe, tasks

TOOL = "qdeploy import"
EDGETPU_FILE = "model_int8_edgetpu.tflite"  # what qdeploy compile names the int8 model's twin
RANDOM_SAMPLES = 8
RANDOM_SEED = 0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Models:
    """The model files an import ships, by role (qrun.layout: INT8, EDGETPU, FLOAT)."""

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


# --- labels, preprocessing, task ------------------------------------------------------

def file_labels(description: selfdescribe.Description) -> tuple:
    """(Labels, where) from the model file: Model Maker's label file or Ultralytics' names."""
    meta, ultra = description.metadata, description.ultralytics
    if meta is not None and meta.labels:
        return parse_labels("\n".join(meta.labels)), f"its metadata's {meta.label_file}"
    names = (ultra or {}).get("names")
    if isinstance(names, dict) and names and all(isinstance(k, int) for k in names):
        return Labels({k: str(v) for k, v in names.items()}, id_form=True), \
            "Ultralytics' temp_meta.txt names"
    if isinstance(names, list) and names:
        return Labels(dict(enumerate(map(str, names)))), "Ultralytics' temp_meta.txt names"
    return None, None


def choose_labels(given: Optional[Path], description: selfdescribe.Description,
                  notes: list) -> tuple:
    """(Labels or None, text of labels.txt or None): --labels beats the file's own."""
    found, where = file_labels(description)
    if given is not None:
        labels = read_labels(given)
        if found is not None and found.names != labels.names:
            notes.append(f"--labels {given} replaces the {len(found.names)} labels in "
                         f"{where}")
        return labels, Path(given).read_text(encoding="utf-8-sig")
    if found is None:
        return None, None
    return found, labels_text(found)


def labels_text(labels: Labels) -> str:
    if labels.id_form:
        return "".join(f"{k} {v}\n" for k, v in sorted(labels.names.items()))
    return "".join(f"{labels.names[k]}\n" for k in sorted(labels.names))


def classes_of(task: mf.Task, outputs: list) -> Optional[int]:
    """How many classes the task's labels must name, when the outputs tell."""
    if task.kind == mf.CLASSIFY:
        return outputs[task.outputs[mf.SCORES]].shape[-1]
    if task.kind == mf.DETECT and "classes" in task.params:
        return int(task.params["classes"])
    if task.kind == mf.SEGMENT and task.decoder == "argmax":
        return outputs[task.outputs[mf.MASK]].shape[-1]
    return None


def file_preprocess(description: selfdescribe.Description) -> tuple:
    """(Preprocess, where) from the file: Model Maker's normalization, Ultralytics' 0..1."""
    meta = description.metadata
    if meta is not None and meta.mean and meta.std:
        return Preprocess(_one(meta.mean), _one(meta.std)), "the model's metadata"
    if description.ultralytics is not None:
        return Preprocess(0.0, 255.0), "Ultralytics (pixels / 255)"
    return None, None


def _one(values: tuple):
    return float(values[0]) if len(values) == 1 else tuple(float(v) for v in values)


def input_identity(spec: TensorSpec) -> Optional[Preprocess]:
    """For a quantized uint8 input: the preprocessing that feeds pixels unchanged
    (mean = zero point, std = 1 / scale), as Coral's examples and the TFLite Support
    library feed such models (its metadata normalization applies to float inputs only)."""
    if spec.dtype != "uint8" or not spec.scale:
        return None
    return Preprocess(float(spec.zero_point), round(1.0 / spec.scale, 4))


def choose_preprocess(given: Optional[str], description: selfdescribe.Description,
                      first_input: TensorSpec, notes: list) -> Preprocess:
    """--preprocess; else for a uint8 input its pixels unchanged; else the file's
    normalization; else Coral's mean 128, std 128 (what qrun feeds a bare model file)."""
    found, where = file_preprocess(description)
    if given is not None:
        pre = parse_preprocess(given)
        if found is not None and _differs(found, pre):
            notes.append(f"--preprocess {given} replaces the normalization in {where} "
                         f"(mean {found.to_dict()['mean']}, std {found.to_dict()['std']})")
        return pre
    identity = input_identity(first_input)
    if identity is not None:
        if found is not None and not is_identity(found, first_input.scale,
                                                 first_input.zero_point):
            notes.append(f"the normalization in {where} (mean {found.to_dict()['mean']}, std "
                         f"{found.to_dict()['std']}) is for a float input; the uint8 input "
                         f"takes pixels unchanged (mean {identity.mean:g} = its zero point, "
                         f"std {identity.std:g} = 1 / its scale); pass --preprocess to change")
        return identity
    if found is not None:
        return found
    notes.append(f"the model states no input normalization: mean {CORAL_MEAN:g}, std "
                 f"{CORAL_STD:g} assumed (Coral's); pass --preprocess if it was trained "
                 "otherwise")
    return Preprocess(CORAL_MEAN, CORAL_STD)


def _differs(a: Preprocess, b: Preprocess) -> bool:
    return (a.to_dict()["mean"], a.to_dict()["std"]) != (b.to_dict()["mean"], b.to_dict()["std"])


def choose_task(kind: str, description: selfdescribe.Description, graph, labels: bool,
                notes: list) -> mf.Task:
    """`--task KIND`, else Ultralytics' task when its roles are there, else the graph's."""
    ultra_kind = (description.ultralytics or {}).get("task")
    if kind != "auto":
        task = tasks.task_of_kind(kind, description, graph, labels)
        if ultra_kind and ultra_kind != kind:
            notes.append(f"--task {kind} replaces the task {ultra_kind!r} in Ultralytics' "
                         "temp_meta.txt")
        return task
    if ultra_kind in mf.TASK_KINDS:
        try:
            return tasks.task_of_kind(ultra_kind, description, graph, labels,
                                      source="ultralytics",
                                      reason=f"Ultralytics' temp_meta.txt says task "
                                             f"{ultra_kind!r}")
        except UserError as exc:
            notes.append(f"Ultralytics' task {ultra_kind!r} does not fit the outputs ({exc}); "
                         "inferred from the graph instead")
    return tasks.task_from_graph(description, graph, labels)


# --- reference inputs ----------------------------------------------------------------

def is_image_input(inputs: list) -> bool:
    """One uint8 [1, H, W, C] input: reference inputs are pixels."""
    return (len(inputs) == 1 and inputs[0].dtype == "uint8" and len(inputs[0].shape) == 4
            and inputs[0].shape[3] in (1, 3))


def random_inputs(inputs: list, count: int = RANDOM_SAMPLES, seed: int = RANDOM_SEED) -> list:
    """`count` seeded random samples per input, in its dtype: integers over the dtype's
    range, floats in [0, 1)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in inputs:
        shape = [count, *spec.shape[1:]]
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            arrays.append(rng.integers(info.min, info.max, shape, dtype=dtype,
                                       endpoint=True))
        elif dtype == np.bool_:
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        else:
            arrays.append(rng.random(shape).astype(dtype))
    return arrays


def reference_images(path: Path) -> list:
    """An image file, or the images in a directory (sorted)."""
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise UserError(f"--reference {path} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                            "; give a folder of images, an image, or an .npy/.npz array")
        return found
    return [path]


def given_reference(path: Path, inputs: list, pre: Preprocess) -> tuple:
    """(file name, writer, line) for --reference: images, an .npy or an .npz."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--reference {path} does not exist; give a folder of images, an "
                        "image, or an .npy/.npz array")
    if path.suffix.lower() in (".npy", ".npz"):
        ref = qref.load(path)
        check_reference(ref, inputs, path)
        name = qref.NPZ_NAME if ref.raw else qref.NPY_NAME
        return name, lambda dest: shutil.copyfile(path, dest), \
            f"reference inputs: {ref.count} sample(s) from {path}"
    if not is_image_input(inputs) and not (len(inputs) == 1 and len(inputs[0].shape) == 4):
        raise UserError(f"--reference {path}: images need a model with one image input; "
                        f"this one has inputs {[s.shape for s in inputs]}; give an .npz with "
                        "input_0, input_1, ...")
    images = reference_images(path)
    pixels = np.stack([load_image(p, inputs[0].shape, pre) for p in images])
    return qref.NPY_NAME, lambda dest: np.save(dest, pixels), \
        f"reference inputs: {len(images)} image(s) from {path}, as uint8 pixels"


def check_reference(ref: qref.Reference, inputs: list, path: Path) -> None:
    """The arrays must fit the model's inputs (count, shape; dtype for the raw .npz)."""
    if len(ref.arrays) != len(inputs):
        raise UserError(f"--reference {path} holds {len(ref.arrays)} array(s) but the model "
                        f"has {len(inputs)} input(s); give one array per input "
                        "(input_0, input_1, ... in an .npz)")
    for i, (array, spec) in enumerate(zip(ref.arrays, inputs)):
        want = list(spec.shape[1:])
        if list(array.shape[1:]) != want or (ref.raw and array.dtype.name != spec.dtype):
            raise UserError(f"--reference {path}: input {i} is {list(array.shape)} "
                            f"{array.dtype.name}, the model's input {i} is {spec.shape} "
                            f"{spec.dtype}; give [N, {', '.join(map(str, want))}] samples")


def random_reference(inputs: list) -> tuple:
    arrays = random_inputs(inputs)
    if is_image_input(inputs):
        return qref.NPY_NAME, lambda dest: np.save(dest, arrays[0]), \
            (f"reference inputs: {RANDOM_SAMPLES} seeded random images (uint8 pixels); pass "
             "--reference IMAGES for real ones")
    return qref.NPZ_NAME, lambda dest: qref.save_npz(dest, arrays), \
        (f"reference inputs: {RANDOM_SAMPLES} seeded random samples per input "
         f"({', '.join(s.dtype for s in inputs)}, raw values); pass --reference FILE.npz for "
         "real ones")


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
    if task not in tasks.TASK_CHOICES:
        raise UserError(f"--task {task} is not a task; use one of "
                        f"{', '.join(tasks.TASK_CHOICES)}")
    check_out(out)
    models = find_models(model, edgetpu, cpu)
    notes = list(models.notes)
    progress(f"reading {model.name}")
    specs = {role: tensor_specs(path) for role, path in models.files.items()}
    if mf.EDGETPU in models.files and models.cpu is not None:
        check_twins(models.cpu, models.files[mf.EDGETPU], specs[mf.INT8], specs[mf.EDGETPU])
    inputs, outputs = specs[mf.INT8 if mf.INT8 in specs else next(iter(specs))]
    described = models.described
    description = selfdescribe.describe(described)
    graph = tflite_graph.load(described)
    found_labels, text = choose_labels(labels, description, notes)
    pre = choose_preprocess(preprocess, description, inputs[0], notes)
    chosen = choose_task(task, description, graph, found_labels is not None, notes)
    if found_labels is not None and chosen.kind != mf.RAW:
        classes = classes_of(chosen, outputs)
        if classes is not None:
            check_fit(found_labels, classes, labels or Path(f"{model.name}'s labels"))
    if found_labels is not None and chosen.kind == mf.RAW:
        notes.append("the labels are kept in labels.txt, but --task raw does not use them")
    try:
        mf.check_channels(pre, inputs[0])
    except ValueError as exc:
        raise UserError(f"{exc}; pass --preprocess for this input") from None
    if models.cpu is None or mf.INT8 not in models.files:
        writer = None
        reference_line = ("reference inputs: none (verify compares the device with the "
                          "host's int8 model, and this deployment has none)")
        if reference is not None:
            raise UserError(f"--reference: {model.name} has no CPU int8 model for verify to "
                            "compare with; pass its CPU twin with --cpu")
    elif reference is not None:
        ref_name, writer, reference_line = given_reference(reference, inputs, pre)
    else:
        ref_name, writer, reference_line = random_reference(inputs)
    task_line = (f"task: {chosen.kind} ({chosen.source}: {chosen.reason})"
                 + (f", outputs {chosen.outputs}" if chosen.outputs else ""))
    progress(task_line)

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        artifacts = {}
        names = {mf.INT8: mf.CONVERT_FILES[mf.INT8], mf.FLOAT: mf.CONVERT_FILES[mf.FLOAT],
                 mf.EDGETPU: EDGETPU_FILE}
        for role, path in models.files.items():
            shutil.copyfile(path, stage / names[role])
            artifacts[role] = mf.artifact_for(stage / names[role])
        if text is not None:
            (stage / mf.CONVERT_FILES[mf.LABELS]).write_text(text, encoding="utf-8")
            artifacts[mf.LABELS] = mf.artifact_for(stage / mf.CONVERT_FILES[mf.LABELS])
        if writer is not None:
            writer(stage / ref_name)
            artifacts[mf.REFERENCE] = mf.artifact_for(stage / ref_name)
        compiled = (compiled_record(models.files[mf.EDGETPU], models.cpu)
                    if mf.EDGETPU in models.files else None)
        manifest = mf.Manifest(
            inputs=inputs, outputs=outputs, task=chosen, preprocess=pre, artifacts=artifacts,
            labels=mf.CONVERT_FILES[mf.LABELS] if text is not None else None,
            converter=mf.Converter(tool=TOOL, source_model=model.name, source_kind="tflite",
                                   extra={"source_files": {role: str(path) for role, path
                                                           in models.files.items()}}),
            compiled=compiled,
            created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            qdeploy_version=__version__)
        mf.save(manifest, stage)
        mf.load(stage)  # what was written reads back
        if out.is_dir():
            out.rmdir()  # empty (check_out); a race that filled it fails here, not silently
        os.rename(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return ImportResult(out, manifest, notes, task_line, reference_line)
