"""`qdeploy evaluate` of detect, segment and pose deployments: what int8 cost in the metric
each field uses (COCO mAP, mIoU, OKS AP), for every variant the host can run (float, and
the int8 model, which is the compiled Edge TPU model's CPU twin).

The work is qrun.measure.evaluate's (the same code `qrun evaluate` runs on a device); this
module picks it for the deployment's task, keeps the figures in `manifest.json`
(`evaluation`, without the per-class lists) beside the classifier's, and says which
variant stands for which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from qrun import atomic
from qrun.errors import UserError
from qrun.measure import evaluate as task_evaluate
from qrun.model import manifest as mf


def is_task_model(directory: Path) -> bool:
    """True when the deployment's task is one evaluate scores with task metrics."""
    try:
        manifest = mf.load(Path(directory))
    except UserError:
        return False
    return manifest is not None and manifest.task.kind in task_evaluate.FIGURES


def evaluate(directory: Path, data: Path, against: Optional[str] = None,
             limit: Optional[int] = None, save: bool = True,
             progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """qrun.measure.evaluate's document for the deployment at `directory`, stored in its
    manifest when `save`."""
    directory = Path(directory)
    manifest = mf.load(directory)
    if save:
        atomic.check_writable(directory, "evaluate stores its figures in manifest.json there: "
                              "make it writable or copy the directory")
    document = task_evaluate.evaluate(directory, data, against, limit=limit,
                                      progress=progress)
    if mf.EDGETPU in manifest.artifacts and mf.INT8 in document["variants"]:
        document["notes"].append("int8 is the Edge TPU model's CPU twin; qrun evaluate (or "
                                 "qdeploy push --eval) measures the Edge TPU itself")
    if manifest.fidelity is not None:  # convert's fidelity gate, shown beside the metrics
        document["fidelity"] = manifest.fidelity.to_dict()
    if save:
        manifest.evaluation = stored(document)
        try:
            mf.save(manifest, directory)
        except OSError as exc:
            raise UserError(f"cannot store the figures in {directory / mf.MANIFEST_NAME}: "
                            f"{exc.strerror or exc}; free space or make it writable") from None
    return document


def stored(document: dict) -> dict:
    """What the manifest keeps: the task, metric, data and each variant's figures."""
    keep = task_evaluate.FIGURES[document["task"]]
    return {"task": document["task"], "metric": document["metric"], "data": document["data"],
            "variants": {name: {k: figures[k] for k in keep}
                         for name, figures in document["variants"].items()}}
