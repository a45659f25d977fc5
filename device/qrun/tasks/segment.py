"""`qrun segment`: a class id for every pixel of one image, at the image's own size.

As Coral's semantic segmentation example and pycoral's segment test do it: the image is
resized (LANCZOS) to the model's input size, and the model gives either an `ArgMax`
class map [1, H, W] (decoder "class_map": DeepLab on Coral, int64) or per-class scores
[1, H, W, C] (decoder "argmax": taken here). The class map is resized back to the
original image with NEAREST, so its values stay class ids. A bare model file's mask is
the output of [1, H, W] or [1, H, W, C] near the input's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from qrun.model import deployment
from qrun.tasks import pipeline
from qrun.errors import UserError
from qrun.model.manifest import Task
from qrun.tasks import roles
from qrun.tasks.roles import ARGMAX, MASK

DECODERS = roles.DECODERS[roles.SEGMENT]


def layout_of(interpreter, task: Optional[Task]) -> tuple:
    """(decoder, position of the mask output): the manifest task's, else by qrun.tasks.roles."""
    if task is not None and MASK in task.outputs:
        roles.check_decoder(roles.SEGMENT, task.decoder)
        return task.decoder, task.outputs[MASK]
    found = roles.segment_roles(pipeline.model_view(interpreter))
    return found.decoder, found.outputs[MASK]


def class_map(raw: np.ndarray, decoder: str) -> np.ndarray:
    """[H, W] int64 class ids from the model's output (a class map, or scores to argmax).
    Argmax on quantized scores equals argmax on their floats (the scale is positive)."""
    values = raw[0]
    if decoder == ARGMAX:
        return values.argmax(axis=-1).astype(np.int64)
    return values.reshape(values.shape[:2]).astype(np.int64)


def to_image_size(classes: np.ndarray, size: tuple) -> np.ndarray:
    """The class map resized (NEAREST) to the image's (w, h)."""
    from PIL import Image

    if classes.min(initial=0) < 0 or classes.max(initial=0) > 255:
        raise UserError(f"the model's class ids run from {classes.min()} to {classes.max()}; "
                        "qrun segment handles ids 0..255")
    if (classes.shape[1], classes.shape[0]) == tuple(size):
        return classes
    mask = Image.fromarray(classes.astype(np.uint8), "L").resize(size, Image.NEAREST)
    return np.asarray(mask, dtype=np.int64)


def class_counts(classes: np.ndarray, names: dict) -> list:
    """[{id, label, pixels, fraction}] of each class present, most pixels first."""
    ids, counts = np.unique(classes, return_counts=True)
    total = classes.size
    order = np.lexsort((ids, -counts))
    return [{"id": int(ids[i]), "label": names.get(int(ids[i]), ""),
             "pixels": int(counts[i]), "fraction": float(counts[i] / total)} for i in order]


@dataclass
class SegmentResult:
    classes: list  # class_counts
    class_map: np.ndarray  # [h, w] at the image's size
    model_map: np.ndarray  # [H, W] at the model's output size
    timing_ms: dict
    device: dict
    model: dict
    image: dict
    labels: Optional[str] = None
    mask: Optional[str] = None
    overlay: Optional[str] = None
    fell_back: bool = False

    def to_dict(self) -> dict:
        return {"kind": "qrun-segment", "schema_version": 1, "classes": self.classes,
                "image": self.image, "mask_size": {"width": self.model_map.shape[1],
                                                   "height": self.model_map.shape[0]},
                "mask": self.mask, "overlay": self.overlay, "timing_ms": self.timing_ms,
                "device": self.device, "model": self.model, "labels_file": self.labels}


def segment(image: Path, model: Optional[Path] = None, labels: Optional[Path] = None,
            out: Optional[Path] = None, overlay: Optional[Path] = None,
            colormap: str = "pascal", device: str = "auto", tpu: str = "",
            threads: Optional[int] = None) -> SegmentResult:
    """Segment `image` with the model `--model` names.

    Args:
      image: a JPEG, PNG or BMP file.
      model, labels: as qrun detect takes them.
      out: where to write the palette mask PNG (pixel values: class ids).
      overlay: where to write the photo with the coloured mask blended over it.
      colormap: "pascal" or "cityscapes".
      device, tpu, threads: as qrun classify takes them.
    Returns:
      A SegmentResult.
    """
    from qrun.tasks import draw

    if colormap not in draw.COLORMAPS:
        raise UserError(f"--colormap must be one of {', '.join(draw.COLORMAPS)}, not "
                        f"{colormap!r}")
    out = pipeline.check_out(out, "--out")
    overlay = pipeline.check_out(overlay, "--overlay")
    watch = pipeline.Stopwatch()
    opened = pipeline.open_model(model, "segment", device, tpu, threads, watch)
    steps = segmenter(opened, labels)
    picture, size, (model_map, full, found) = pipeline.timed_frame(opened, steps, image, watch)
    decoder, position, label_file = steps.decoder, steps.position, steps.label_file
    if out is not None or overlay is not None:
        mask = draw.palette_mask(full, colormap)
        if out is not None:
            pipeline.save_png(mask, out)
        if overlay is not None:
            pipeline.save_png(draw.overlay(picture, mask), overlay)
    return SegmentResult(found, full, model_map, watch.timing_ms(), opened.device(),
                         {**opened.model(), "decoder": decoder, "outputs": {MASK: position}},
                         {"path": str(image), "width": size[0], "height": size[1]},
                         str(label_file) if label_file else None,
                         str(out) if out else None, str(overlay) if overlay else None,
                         opened.choice.fell_back)


@dataclass(frozen=True)
class Segmenter:
    """What qrun segment does to one decoded image, set up once per model: resize and
    quantize it (`preprocess`), the class map at the image's size (`postprocess`)."""

    decoder: str
    position: int  # of the mask output
    names: dict
    label_file: Optional[Path]
    spec: object  # the input's TensorSpec
    table: np.ndarray  # pixel value -> input value (pipeline.lookup_table)
    color: str
    draft_size: Optional[tuple] = None  # the mask is at the original's size: decode it whole

    def preprocess(self, picture, size: tuple) -> tuple:
        """(input data, the image's (w, h)): resized (LANCZOS) to the input, quantized."""
        return pipeline.stretched(picture, self.spec, self.table), size

    def postprocess(self, interpreter, size: tuple) -> tuple:
        """(class map at the model's size, at the image's `size`, class_counts)."""
        raw, _ = pipeline.output(interpreter, self.position)
        model_map = class_map(raw, self.decoder)
        full = to_image_size(model_map, size)
        return model_map, full, class_counts(full, self.names)


def segmenter(opened: pipeline.Opened, labels: Optional[Path] = None) -> Segmenter:
    """Set qrun segment up for an opened model: the mask output, labels, input table."""
    interpreter = opened.interpreter
    decoder, position = layout_of(interpreter, opened.task)
    shape = pipeline.output_shapes(interpreter)[position]
    names, label_file = pipeline.read_labels(opened, labels,
                                             shape[3] if decoder == ARGMAX else None)
    spec = pipeline.input_spec(interpreter)
    pre = deployment.preprocess_of(opened.dep)
    return Segmenter(decoder, position, names, label_file, spec,
                     pipeline.lookup_table(pre, spec), pipeline.image_color(spec, pre))
