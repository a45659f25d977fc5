"""`qrun detect`: objects in one image, boxes in the original image's pixels.

Two decoder families, named by the manifest's task (`task.decoder`):

- "ssd_postprocess": the graph ends in the SSD post-processing op (roles.POSTPROCESS;
  SSD, EfficientDet-Lite), whose four outputs are boxes [1, N, 4] (normalised ymin, xmin,
  ymax, xmax), classes [1, N], scores [1, N] and count [1]. Rows past `count` are padding
  and are dropped (pycoral's get_objects reads them too). The image is letterboxed as
  pycoral's `set_resized_input` does it (aspect kept, top-left, zero padding, LANCZOS).
- "yolov8" ([1, 4 + C, N]: x, y, w, h, then C class scores) and "yolov5" ([1, N, 5 + C]:
  x, y, w, h, objectness, C class scores): Ultralytics' raw head, no NMS in the graph.
  The image is letterboxed as Ultralytics does it (centred, padding 114, bilinear), the
  candidates are thresholded on the quantized scores (only those few are dequantized),
  then class-aware NMS as Ultralytics' `non_max_suppression` (best class per box,
  score > threshold, IoU 0.45). TFLite exports give x, y, w, h normalised to the input
  (Ultralytics multiplies them by the input size); the manifest's task.params["boxes"]
  says which ("normalised" or "pixels", roles.boxes_normalised); without it a head
  whose candidates reach past 2 is taken to be in input pixels already.

A model file without a manifest is read by the same rules `qdeploy import` applies
(qrun.tasks.roles): the post-processing op's own output order, then the signature names,
each only when the shapes agree; a raw head by its shape. Never by a fixed output index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from qrun.tasks import letterbox, pipeline
from qrun.errors import UserError
from qrun.model.manifest import Task
from qrun.tasks import roles
from qrun.tasks.roles import (BOXES, CLASSES, COUNT, HEAD, POSTPROCESS_ROLES, SCORES, SSD,
                              YOLOV5, YOLOV8)
from qrun.model.preprocess import Preprocess, dequantize

DECODERS = roles.DECODERS[roles.DETECT]
MAX_WH = 7680  # Ultralytics' class offset for class-aware NMS, in pixels
YOLO_PREPROCESS = Preprocess(0.0, 255.0)  # pixels / 255


class BBox(NamedTuple):
    """A box in image pixels."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float


class Object(NamedTuple):
    """One detection: class id, label ("" if none), score, box in original image pixels."""

    id: int
    label: str
    score: float
    bbox: BBox


@dataclass(frozen=True)
class Layout:
    """Which decoder reads the outputs, which output plays which role, its parameters."""

    decoder: str
    outputs: dict
    params: dict = field(default_factory=dict)
    source: str = "manifest"


# --- which output is what ------------------------------------------------------------

def layout_of(interpreter, task: Optional[Task]) -> Layout:
    """The manifest task's decoder and roles, else the ones the model file shows."""
    if task is not None:
        roles.check_decoder(roles.DETECT, task.decoder)
        return Layout(task.decoder, dict(task.outputs), dict(task.params))
    return infer_layout(interpreter)


def infer_layout(interpreter) -> Layout:
    """The layout of a bare model file, by qrun.tasks.roles; a UserError naming the shapes
    seen when none fits."""
    found = roles.detect_roles(pipeline.model_view(interpreter))
    return Layout(found.decoder, found.outputs, found.params,
                  "graph" if found.decoder == SSD else "shape")


# --- the decoders --------------------------------------------------------------------

def ssd_objects(boxes, classes, scores, count, threshold: float) -> tuple:
    """The rows of an SSD's post-processing outputs scoring at least `threshold`.

    Args:
      boxes: [N, 4] normalised ymin, xmin, ymax, xmax (dequantized).
      classes, scores: [N] each.
      count: how many rows are detections (the rest is padding).
      threshold: the lowest score kept.
    Returns:
      (ids [K], scores [K], boxes [K, 4] as normalised xmin, ymin, xmax, ymax, clamped to
      [0, 1]).
    """
    n = max(0, min(int(np.asarray(count).reshape(-1)[0]), len(scores)))
    keep = np.flatnonzero(scores[:n] >= threshold)
    b = np.clip(boxes[keep], 0.0, 1.0)
    return (classes[keep].astype(np.int64), scores[keep].astype(np.float64),
            b[:, [1, 0, 3, 2]].astype(np.float64))


def score_floor(threshold: float, scale: float, zero_point: int, dtype) -> Optional[int]:
    """The smallest quantized value whose score exceeds `threshold` (None: float scores)."""
    if not np.issubdtype(np.dtype(dtype), np.integer) or scale == 0:
        return None
    q = int(np.floor(threshold / scale + zero_point)) + 1
    info = np.iinfo(dtype)
    return min(max(q, int(info.min)), int(info.max) + 1)


def yolo_candidates(head: np.ndarray, spec, decoder: str, threshold: float) -> tuple:
    """Boxes, best class and score of the anchors scoring above `threshold`.

    Args:
      head: the raw output, [1, 4 + C, N] (yolov8) or [1, N, 5 + C] (yolov5), quantized
        or float.
      spec: its TensorSpec (scale, zero point).
      decoder: "yolov8" or "yolov5".
      threshold: the lowest score kept (strictly above, as Ultralytics).
    Returns:
      (xywh [K, 4], class ids [K], scores [K]), dequantized.
    """
    rows = head[0] if decoder == YOLOV8 else head[0].T  # [4 + C (+1), N]
    floor = score_floor(threshold, spec.scale, spec.zero_point, head.dtype)
    first = 4 if decoder == YOLOV8 else 5
    gate = rows[4] if decoder == YOLOV5 else rows[first:].max(axis=0)
    if floor is not None:
        picked = np.flatnonzero(gate >= floor)
    else:
        picked = np.flatnonzero(gate > threshold)
    values = dequantize(np.ascontiguousarray(rows[:, picked]), spec.scale, spec.zero_point)
    class_scores = values[first:]
    if decoder == YOLOV5:
        class_scores = class_scores * values[4]
    ids = class_scores.argmax(axis=0) if len(picked) else np.zeros(0, np.int64)
    scores = class_scores[ids, np.arange(len(picked))] if len(picked) else np.zeros(0)
    keep = scores > threshold
    return values[:4, keep].T.astype(np.float64), ids[keep], scores[keep].astype(np.float64)


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """Centre, size [K, 4] -> corners [K, 4]."""
    xy, wh = xywh[:, :2], xywh[:, 2:] / 2
    return np.concatenate([xy - wh, xy + wh], axis=1)


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box [4] (xmin, ymin, xmax, ymax) with each of `others` [K, 4]."""
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
        max_objects: int) -> np.ndarray:
    """Greedy class-aware non-maximum suppression, best first (ties: lower index).

    Boxes of different classes never suppress each other (each class is offset by
    MAX_WH, as Ultralytics does). Returns the indices kept, at most `max_objects`.
    The corners and areas are taken apart once, so each step gathers four columns of the
    remaining candidates (thousands at evaluate's 0.001 floor), not rows of [K, 4].
    """
    order = np.lexsort((np.arange(len(scores)), -scores))
    shifted = boxes + (classes.astype(np.float64) * MAX_WH)[:, None]
    x0, y0, x1, y1 = (np.ascontiguousarray(shifted[order, k]) for k in range(4))
    areas = (x1 - x0) * (y1 - y0)
    rest = np.arange(len(order))  # positions in `order` still in the running
    kept = []
    while rest.size and len(kept) < max_objects:
        best, rest = rest[0], rest[1:]
        kept.append(int(order[best]))
        w = np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest])
        h = np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest])
        inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
        union = np.maximum(areas[best] + areas[rest] - inter, 1e-12)
        rest = rest[inter / union <= iou_threshold]
    return np.asarray(kept, dtype=np.int64)


def best_first(ids: np.ndarray, scores: np.ndarray, max_objects: int) -> np.ndarray:
    """Indices by score descending, then class id ascending, at most `max_objects`."""
    return np.lexsort((ids, -scores))[:max_objects]


# --- the command ---------------------------------------------------------------------

@dataclass
class DetectResult:
    objects: list
    timing_ms: dict
    device: dict
    model: dict
    image: dict
    labels: Optional[str] = None
    annotated: Optional[str] = None
    fell_back: bool = False

    def to_dict(self) -> dict:
        return {
            "kind": "qrun-detect",
            "schema_version": 1,
            "objects": [{"id": o.id, "label": o.label, "score": o.score,
                         "box": o.bbox._asdict()} for o in self.objects],
            "image": self.image,
            "timing_ms": self.timing_ms,
            "device": self.device,
            "model": self.model,
            "labels_file": self.labels,
            "annotated": self.annotated,
        }


def detect(image: Path, model: Optional[Path] = None, labels: Optional[Path] = None,
           threshold: float = 0.25, iou_threshold: float = 0.45, max_objects: int = 100,
           out: Optional[Path] = None, device: str = "auto", tpu: str = "",
           threads: Optional[int] = None) -> DetectResult:
    """Detect objects in `image` with the model `--model` names (see qrun.model.deployment).

    Args:
      image: a JPEG, PNG or BMP file.
      model: model file or deployment directory; the current deployment when None.
      labels: labels file; the deployment's when None.
      threshold, iou_threshold: the lowest score kept; the NMS overlap (YOLO heads).
      max_objects: how many objects to keep at most.
      out: where to write the annotated PNG (its directory is checked first).
      device, tpu, threads: as qrun classify takes them.
    Returns:
      A DetectResult, objects best first.
    """
    pipeline.check_fraction(threshold, "--threshold")
    pipeline.check_fraction(iou_threshold, "--iou")
    if max_objects < 1:
        raise UserError(f"--max must be at least 1, got {max_objects}")
    out = pipeline.check_out(out, "--out")
    watch = pipeline.Stopwatch()
    opened = pipeline.open_model(model, "detect", device, tpu, threads, watch)
    steps = detector(opened, labels, threshold, iou_threshold, max_objects)
    picture, size, objects = pipeline.timed_frame(opened, steps, image, watch,
                                                  None if out else steps.draft_size)
    if out is not None:
        from qrun.tasks import draw

        pipeline.save_png(draw.draw_objects(picture, objects), out)
    layout = steps.layout
    return DetectResult(objects, watch.timing_ms(), opened.device(),
                        {**opened.model(), "decoder": layout.decoder,
                         "outputs": layout.outputs, "layout_from": layout.source},
                        {"path": str(image), "width": size[0], "height": size[1]},
                        str(steps.label_file) if steps.label_file else None,
                        str(out) if out else None, opened.choice.fell_back)


@dataclass(frozen=True)
class Detector:
    """What qrun detect does to one decoded image, set up once per model: letterbox and
    quantize it (`preprocess`), decode the outputs into objects (`postprocess`)."""

    layout: Layout
    names: dict
    label_file: Optional[Path]
    spec: object  # the input's TensorSpec
    table: np.ndarray  # pixel value -> input value (pipeline.lookup_table)
    color: str
    threshold: float
    iou_threshold: float
    max_objects: int

    @property
    def yolo(self) -> bool:
        return self.layout.decoder != SSD

    @property
    def draft_size(self) -> tuple:
        """The input's (w, h): the box a JPEG's draft decode must still fill once fitted
        (pipeline.read_image)."""
        return self.spec.shape[2], self.spec.shape[1]

    def preprocess(self, picture, size: tuple) -> tuple:
        """(input data, Letterbox) of a decoded image whose original size is `size`."""
        from PIL import Image

        pixels, box = letterbox.fit(
            picture, self.draft_size, centre=self.yolo,
            fill=letterbox.ULTRALYTICS_FILL if self.yolo else letterbox.PYCORAL_FILL,
            resample=Image.BILINEAR if self.yolo else Image.LANCZOS, image_size=size)
        return pipeline.to_input(pixels, self.table, self.spec), box

    def postprocess(self, interpreter, box: letterbox.Letterbox) -> list:
        """The objects of the last invoke, best first, boxes in the original's pixels."""
        if self.yolo:
            return decode_yolo(interpreter, self.layout, self.threshold, self.iou_threshold,
                               self.max_objects, box, self.names)
        return decode_ssd(interpreter, self.layout, self.threshold, self.max_objects, box,
                          self.names)


def detector(opened: pipeline.Opened, labels: Optional[Path] = None, threshold: float = 0.25,
             iou_threshold: float = 0.45, max_objects: int = 100) -> Detector:
    """Set qrun detect up for an opened model: its layout (checked), labels, input table."""
    interpreter = opened.interpreter
    layout = layout_of(interpreter, opened.task)
    check_layout(layout, pipeline.output_shapes(interpreter))
    names, label_file = pipeline.read_labels(opened, labels, layout.params.get("classes"))
    spec = pipeline.input_spec(interpreter)
    pre = (opened.dep.manifest.preprocess if opened.dep.manifest is not None
           else YOLO_PREPROCESS if layout.decoder != SSD else pixels_unchanged(spec))
    return Detector(layout, names, label_file, spec, pipeline.lookup_table(pre, spec),
                    pipeline.image_color(spec, pre), threshold, iou_threshold, max_objects)


def pixels_unchanged(spec) -> Preprocess:
    """What pycoral's `set_resized_input` feeds a bare SSD: the uint8 pixels as they are
    (for a float input: pixels / 255)."""
    if spec.dtype == "uint8" and spec.scale:
        return Preprocess(float(spec.zero_point), 1.0 / spec.scale)
    return Preprocess(0.0, 255.0)


def check_layout(layout: Layout, shapes: list) -> None:
    """Refuse roles whose outputs do not have the shapes the decoder reads."""
    roles.check_detect(layout.decoder, layout.outputs, layout.params, shapes)


def to_objects(ids, scores, boxes_input_px, box: letterbox.Letterbox, names: dict) -> list:
    mapped = letterbox.boxes_to_image(boxes_input_px, box)
    return [Object(int(i), names.get(int(i), ""), float(s), BBox(*map(float, b)))
            for i, s, b in zip(ids, scores, mapped)]


def decode_ssd(interpreter, layout: Layout, threshold: float, max_objects: int,
               box: letterbox.Letterbox, names: dict) -> list:
    got = {role: pipeline.output(interpreter, layout.outputs[role])
           for role in POSTPROCESS_ROLES}
    value = {role: dequantize(raw, spec.scale, spec.zero_point) for role, (raw, spec)
             in got.items()}
    ids, scores, boxes = ssd_objects(value[BOXES][0], value[CLASSES][0], value[SCORES][0],
                                     value[COUNT], threshold)
    order = best_first(ids, scores, max_objects)
    iw, ih = box.input_size
    return to_objects(ids[order], scores[order], boxes[order] * [iw, ih, iw, ih], box, names)


def decode_yolo(interpreter, layout: Layout, threshold: float, iou_threshold: float,
                max_objects: int, box: letterbox.Letterbox, names: dict) -> list:
    raw, spec = pipeline.output(interpreter, layout.outputs[HEAD])
    xywh, ids, scores = yolo_candidates(raw, spec, layout.decoder, threshold)
    if xywh.size and roles.boxes_normalised(layout.params, float(xywh.max())):
        iw, ih = box.input_size
        xywh = xywh * [iw, ih, iw, ih]
    boxes = xywh_to_xyxy(xywh)
    kept = nms(boxes, scores, ids, iou_threshold, max_objects)
    return to_objects(ids[kept], scores[kept], boxes[kept], box, names)
