"""`qrun classify`: one image through a classification model, top-k labels and per-invoke times.

Preprocessing follows Coral's classify example unless the manifest says
otherwise (see qrun.model.preprocess); scores are dequantized and ties go to the lower
class id (see qrun.tasks.adapters). The first invoke includes loading the model (onto
the Edge TPU, when used), so it is reported apart from the rest.

A deployment's manifest says what its model does: classify refuses a task that is
not classify (naming the command that runs it) and reads the output the task names
as scores; a bare model file is taken for a classifier whose output 0 holds them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qrun.tasks import adapters
from qrun.model import deployment, runtime
from qrun.errors import UserError
from qrun.model.layout import MANIFEST_NAME


@dataclass
class ClassifyResult:
    """What one classification gave: classes best first, invoke times, model and device."""

    classes: list
    timings_ms: list
    model: str
    variant: str
    device: dict
    runtime: dict
    init_ms: float
    labels: Optional[str] = None
    fell_back: bool = False
    output: int = 0  # the position of the output read as scores

    def to_dict(self) -> dict:
        return {
            "kind": "qrun-classify",
            "results": [{"id": c.id, "label": c.label, "score": c.score} for c in self.classes],
            "ids": [c.id for c in self.classes],
            "labels": [c.label for c in self.classes],
            "scores": [c.score for c in self.classes],
            "timings_ms": self.timings_ms,
            "first_includes_model_load": True,
            "init_ms": self.init_ms,
            "model": {"path": self.model, "variant": self.variant,
                      "scores_output": self.output},
            "labels_file": self.labels,
            "device": {**self.device, "fell_back": self.fell_back},
            "runtime": self.runtime,
        }


def invoke(interpreter, model_path: Path) -> float:
    """Run the model once; return the time in ms. A runtime failure becomes a UserError."""
    start = time.perf_counter()
    try:
        interpreter.invoke()
    except (RuntimeError, ValueError) as exc:
        raise UserError(runtime.runtime_error_message(model_path, str(exc))) from None
    return (time.perf_counter() - start) * 1e3


def check_task(dep: deployment.Deployment) -> None:
    """Refuse a deployment whose manifest gives its model a task other than classify,
    naming the command that runs it."""
    if dep.manifest is None:
        return
    from qrun.model.manifest import CLASSIFY, DETECT, POSE, SEGMENT

    commands = {DETECT: "qrun detect", SEGMENT: "qrun segment", POSE: "qrun pose"}
    kind = dep.manifest.task.kind
    if kind == CLASSIFY:
        return
    if kind in commands:
        raise UserError(f"this model's task is {kind} ({MANIFEST_NAME}), not classify; "
                        f"run it with {commands[kind]}")
    raise UserError(f"this model's task is {kind}: qrun bench and qrun verify run it")


def scores_output(dep: deployment.Deployment) -> int:
    """The position of the output holding the scores: the manifest task's, else 0."""
    if dep.manifest is None:
        return 0
    from qrun.model.manifest import SCORES

    position = dep.manifest.task.output(SCORES)
    return 0 if position is None else position


def check_one_input(interpreter, model_path: Path) -> None:
    """Refuse a model with more than one input: classify feeds one image."""
    count = len(interpreter.get_input_details())
    if count > 1:
        raise UserError(f"{model_path.name} has {count} inputs; classify feeds one image "
                        "(qrun bench and qrun verify feed every input)")


def classify(image: Path, model: Optional[Path] = None, labels: Optional[Path] = None,
             top_k: int = 3, threshold: Optional[float] = None, count: int = 1,
             device: str = "auto",
             tpu: str = "", threads: Optional[int] = None) -> ClassifyResult:
    """Classify `image` with the model `--model` names (see qrun.model.deployment.resolve).

    Args:
      image: a JPEG, PNG or BMP file.
      model: model file or deployment directory; the current deployment when None.
      labels: label file; the deployment's when None.
      top_k, threshold: how many classes to keep, and the lowest score kept (None: no
        lowest score, as a model's scores may be negative logits).
      count: how many times to invoke (the classes come from the last).
      device, tpu: `--device` and the Edge TPU device option.
      threads: CPU threads for the interpreter.
    Returns:
      A ClassifyResult.
    """
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    runtime.check_threads(threads)
    image = Path(image)
    if not image.is_file():
        raise UserError(f"image not found: {image}")
    dep = deployment.resolve(model)
    check_task(dep)
    position = scores_output(dep)
    choice = deployment.choose(dep, device, tpu)
    loaded = deployment.load(choice, threads)
    interpreter = loaded.interpreter
    check_one_input(interpreter, Path(choice.path))
    adapters.check_scores_shape(adapters.output_details(interpreter, position)["shape"])
    from qrun.model.labels import for_model

    names, label_file = for_model(labels, deployment.labels_path(dep, None),
                                  dep.model if dep.manifest is None else None,
                                  adapters.num_classes(interpreter, position))
    data = adapters.prepare_image(interpreter, image, deployment.preprocess_of(dep))
    adapters.set_input(interpreter, data)
    timings = [invoke(interpreter, choice.path) for _ in range(count)]
    lowest = float("-inf") if threshold is None else threshold
    classes = adapters.get_classes(interpreter, top_k, lowest, names, position)
    info = runtime.runtime_info()
    return ClassifyResult(
        classes=classes, timings_ms=timings, model=str(choice.path), variant=loaded.variant,
        device={"requested": choice.requested, "used": choice.used, "reason": choice.reason},
        runtime={"name": info.name, "version": info.version}, init_ms=loaded.init_ms,
        labels=str(label_file) if label_file else None, fell_back=choice.fell_back,
        output=position)
