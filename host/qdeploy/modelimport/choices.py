"""What an imported deployment's labels, preprocessing and task are.

Each comes from what the model file says about itself (qdeploy.modelfile.selfdescribe:
Model Maker's TFLITE_METADATA, Ultralytics' temp_meta.txt, the graph) unless an option
names it; an option that replaces what the file says adds a `note:` line. A quantized
uint8 input takes camera pixels unchanged, as Coral's examples and the TFLite Support
library feed it (its metadata normalization is for float inputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qrun.model import manifest as mf
from qrun.model import metadata as packed_meta
from qrun.model.labels import Labels, fit, parse_labels, read_labels, to_text
from qrun.model.preprocess import CORAL_MEAN, CORAL_STD, Preprocess, is_identity, parse_preprocess
from qrun.model.tensors import TensorSpec
from qrun.tasks import roles

from qdeploy.errors import UserError
from qdeploy.modelfile import selfdescribe, tasks


def file_labels(description: selfdescribe.Description) -> tuple:
    """(Labels, where) from the model file: Model Maker's label file or Ultralytics' names
    (for an 8.0-8.2 export its TFLITE_METADATA names temp_meta.txt as the label file: that
    is the export dict, read for its names, not as label lines)."""
    meta, ultra = description.metadata, description.ultralytics
    if meta is not None and meta.labels:
        return parse_labels("\n".join(meta.labels)), f"its metadata's {meta.label_file}"
    found = packed_meta.names_labels((ultra or {}).get("names"))
    if found is not None:
        return found, "Ultralytics' metadata"
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
    return found, to_text(found)


def fit_labels(labels: Labels, text: Optional[str], classes: int, given: Optional[Path],
               description: selfdescribe.Description, notes: list) -> tuple:
    """(Labels, labels.txt text) that fit `classes` scores: as chosen when they fit; a
    --labels file that does not (a background line, COCO's 90 ids) mapped onto the model's
    own names when the file has them (a note says so); else one error naming both counts."""
    own, where = file_labels(description) if given is not None else (None, None)
    path = given if given is not None else Path(f"{description.path.name}'s labels")
    fitted, how = fit(labels, classes, path, own, given=given is not None)
    if how is None:
        return labels, text
    replaced = f"--labels {given} replaces"  # choose_labels' note: the file is mapped instead
    notes[:] = [n for n in notes if not n.startswith(replaced)] + [f"{how} in {where}"]
    return fitted, to_text(fitted)


def classes_of(task: mf.Task, outputs: list) -> Optional[int]:
    """How many classes the task's labels must name, when the outputs tell."""
    if task.kind == mf.CLASSIFY:
        return outputs[task.outputs[mf.SCORES]].shape[-1]
    if task.kind == mf.DETECT and "classes" in task.params:
        return int(task.params["classes"])
    if task.kind == mf.SEGMENT and task.decoder == roles.ARGMAX:
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
    """For a uint8 input: the preprocessing that feeds pixels unchanged (quantized: mean =
    zero point, std = 1 / scale), as Coral's examples and the TFLite Support library feed
    such models (its metadata normalization applies to float inputs only); an unquantized
    uint8 input (MoveNet's) takes pixels as they are: mean 0, std 1."""
    if spec.dtype != "uint8":
        return None
    if not spec.scale:
        return Preprocess(0.0, 1.0)
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
        how = (f"mean {identity.mean:g} = its zero point, std {identity.std:g} = 1 / its "
               "scale" if first_input.scale else "it is not quantized")
        if found is not None and not (first_input.scale and is_identity(
                found, first_input.scale, first_input.zero_point)):
            notes.append(f"the normalization in {where} (mean {found.to_dict()['mean']}, std "
                         f"{found.to_dict()['std']}) is for a float input; the uint8 input "
                         f"takes pixels unchanged ({how}); pass --preprocess to change")
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
