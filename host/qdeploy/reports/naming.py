"""Which series a report belongs to: the model name of a model file or of a deployment.

Rows are grouped by a *model name*: the model file's stem with its variant suffix
removed (`mnist_int8.tflite`, `mnist_edgetpu.tflite` and `mnist_float.tflite` are
all model `mnist`), so the variants of one deployment can be compared and the
history of one model followed across pushes whose sha256 changed. `qdeploy convert`
names every model `model_*.tflite`, so a deployment's series is named after the
manifest's source model instead (`deployment_name`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qrun.model.layout import MODEL_ROLES

VARIANTS = MODEL_ROLES  # in the order tables and plots show them
# File-name endings that name a variant rather than the model, longest first.
VARIANT_SUFFIXES = ("_quant_edgetpu", "_int8_edgetpu", "_edgetpu", "_quant", "_int8",
                    "_float32", "_float16", "_float")
# Endings of a source model's name (a SavedModel directory has none).
SOURCE_SUFFIXES = (".keras", ".h5", ".hdf5", ".tflite")


def model_name_of(path: str) -> str:
    """The model's name from a model file path: its stem without a variant suffix."""
    stem = Path(str(path).replace("\\", "/")).name
    if stem.endswith(".tflite"):
        stem = stem[: -len(".tflite")]
    for suffix in VARIANT_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def deployment_name(manifest) -> Optional[str]:
    """The series name of a `qdeploy convert` deployment: its source model's name.

    Convert names its files `model_float.tflite`/`model_int8.tflite` whatever the model,
    so the file name cannot tell two deployments apart; the manifest's
    `converter.source_model` (`mnist.keras`, or a SavedModel directory's name) can.
    None when the manifest does not record it.
    """
    source = getattr(getattr(manifest, "converter", None), "source_model", None)
    if not isinstance(source, str) or not source.strip():
        return None
    name = Path(source.replace("\\", "/").rstrip("/")).name
    for suffix in SOURCE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return model_name_of(name) or None


def series_order(key: tuple) -> tuple:
    """Sort key of a (target, model, variant) series: variants float, int8, edgetpu, others."""
    target, model, variant = key
    rank = VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS)
    return (target, model, rank, variant)
