"""Two runs of one model compared in the task's terms: does the other run tell the user
the same thing as the reference run?

A run is every output of the model for the same samples, dequantized: one array per
output in the interpreter's order, [N, ...] (N samples; each row reshapes to the output's
shape). `decode` turns a run into what the task outputs, with the task's own decoders
(qrun.tasks.detect, segment, pose; a classifier's top-1 as qrun.tasks.adapters orders
it); the comparisons take two decoded runs and give an `Agreement`: one figure, whether
it passes, the samples that differ and one sentence in the task's terms.

- classify: top-1 agreement (the share of samples whose best class is the same).
- detect: detections matched greedily, best reference score first, by class and IoU
  (0.5). The figure is the share of detections matched (matched / the larger count, over
  all samples). A sample agrees when its counts are within one, at most one detection
  is found by one run only, every matched score is within a tolerance (0.1), and the
  other run does not come back empty where the reference found something.
- segment: pixel agreement of the class maps at the model's output size.
- pose: keypoint distance, in units of the input's size (x and y are normalised), over
  the keypoints the reference scores at least 0.3; the figure is the mean, a sample
  agrees when its mean is within the tolerance (0.05).

Tasks without a decoder (raw) are not compared here: `decode` returns None and the
caller compares raw values (qdeploy.push.crosscheck counts quantization steps).
Pure numpy; runs on the device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from qrun.model.tensors import TensorSpec
from qrun.tasks import roles
from qrun.tasks.roles import (ARGMAX, BOXES, CLASSES, COUNT, HEAD, KEYPOINTS, MASK, SCORES,
                              SSD)

MINIMUM = 0.9  # the share a classifier, detector or segmenter must agree on
IOU = 0.5  # detections match at this IoU or more (and the same class)
SCORE_TOLERANCE = 0.1  # matched detections' scores differ by at most this
DETECT_THRESHOLD = 0.25  # detections kept (qrun detect's default)
NMS_IOU = 0.45  # a YOLO head's NMS overlap (qrun detect's default)
MAX_OBJECTS = 100
KEYPOINT_TOLERANCE = 0.05  # mean keypoint distance, in units of the input's size
KEYPOINT_SCORE = 0.3  # keypoints the reference scores lower are not compared
SHOWN = 3  # how many differences a sentence names


@dataclass(frozen=True)
class Detections:
    """One sample's detections: class ids [K], scores [K], boxes [K, 4] (xmin, ymin, xmax,
    ymax, normalised to the input), best first."""

    ids: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Agreement:
    """Two runs compared in the task's terms.

    `value` is the figure (`metric`: "top1_agreement", "detection_agreement",
    "pixel_agreement" as a share in 0..1; "keypoint_distance" as the mean distance in
    units of the input's size); `differing` the samples that do not agree; `text` the
    sentence a user reads.
    """

    task: str
    metric: str
    value: float
    ok: bool
    samples: int
    differing: list = field(default_factory=list)
    text: str = ""
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# --- decoding a run ----------------------------------------------------------------------

def rows(values: np.ndarray, shape: list) -> np.ndarray:
    """[N, ...] values of one output as [N, *shape]."""
    values = np.asarray(values)
    return values.reshape(len(values), *shape)


def top1(scores: np.ndarray) -> np.ndarray:
    """Best class per sample of [N, C] scores; ties go to the lower id (argmax's rule, as
    qrun.tasks.adapters orders them)."""
    return np.asarray(scores, dtype=np.float64).reshape(len(scores), -1).argmax(axis=1)


def yolo_detections(head: np.ndarray, decoder: str, input_size: tuple,
                    threshold: float = DETECT_THRESHOLD, iou_threshold: float = NMS_IOU,
                    max_objects: int = MAX_OBJECTS) -> Detections:
    """A raw YOLO head's detections ([1, 4 + C, N] or [1, N, 5 + C], dequantized) as qrun
    detect decodes them: candidates over the threshold, boxes to the input's units,
    class-aware NMS; boxes normalised to the input."""
    from qrun.tasks import detect

    head = np.asarray(head, dtype=np.float32)
    spec = TensorSpec(list(head.shape), "float32")
    xywh, ids, scores = detect.yolo_candidates(head, spec, decoder, threshold)
    if xywh.size and xywh.max() > 2.0:  # in input pixels, as torch exports them
        w, h = input_size
        xywh = xywh / [w, h, w, h]
    boxes = detect.xywh_to_xyxy(xywh)
    kept = detect.nms(boxes, scores, ids, iou_threshold, max_objects)
    return Detections(ids[kept].astype(np.int64), scores[kept], boxes[kept])


def ssd_detections(boxes, classes, scores, count, threshold: float = DETECT_THRESHOLD,
                   max_objects: int = MAX_OBJECTS) -> Detections:
    """The SSD post-processing op's detections of one sample (dequantized), best first."""
    from qrun.tasks import detect

    ids, kept_scores, xyxy = detect.ssd_objects(
        np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(classes).reshape(-1),
        np.asarray(scores, np.float64).reshape(-1), count, threshold)
    order = detect.best_first(ids, kept_scores, max_objects)
    return Detections(ids[order], kept_scores[order], xyxy[order])


def decode(task, shapes: list, outputs: list, input_size: tuple,
           threshold: float = DETECT_THRESHOLD):
    """What the task outputs for every sample of a run, or None for a task without a
    decoder (raw, or roles the manifest does not name).

    Args:
      task: a qrun.model.manifest.Task (kind, outputs by role, decoder).
      shapes: every output's shape, in order.
      outputs: every output's dequantized values, [N, ...] each, in order.
      input_size: the image input's (w, h).
    Returns:
      classify: top-1 ids [N]; detect: a list of Detections; segment: class maps
      [N, H, W]; pose: keypoints [N, 17, 3] (y, x, score).
    """
    kind, where = task.kind, task.outputs
    if kind == roles.CLASSIFY and SCORES in where:
        return top1(outputs[where[SCORES]])
    if kind == roles.DETECT and task.decoder == SSD and set(roles.POSTPROCESS_ROLES) <= set(where):
        got = {role: np.asarray(outputs[where[role]]) for role in roles.POSTPROCESS_ROLES}
        count = len(got[COUNT])
        return [ssd_detections(got[BOXES][n], got[CLASSES][n], got[SCORES][n], got[COUNT][n],
                               threshold) for n in range(count)]
    if kind == roles.DETECT and task.decoder in (roles.YOLOV8, roles.YOLOV5) and HEAD in where:
        heads = rows(outputs[where[HEAD]], shapes[where[HEAD]])
        return [yolo_detections(h, task.decoder, input_size, threshold) for h in heads]
    if kind == roles.SEGMENT and MASK in where:
        from qrun.tasks.segment import class_map

        maps = rows(outputs[where[MASK]], shapes[where[MASK]])
        decoder = task.decoder or roles.mask_decoder(shapes[where[MASK]])
        if decoder != ARGMAX:
            maps = np.rint(maps)
        return np.stack([class_map(m, decoder) for m in maps])
    if kind == roles.POSE and KEYPOINTS in where:
        return rows(outputs[where[KEYPOINTS]], shapes[where[KEYPOINTS]]).reshape(
            len(outputs[where[KEYPOINTS]]), -1, 3)
    return None


# --- the comparisons ---------------------------------------------------------------------

def samples_text(indices: list) -> str:
    shown = ", ".join(str(i) for i in indices[:SHOWN])
    more = f" and {len(indices) - SHOWN} more" if len(indices) > SHOWN else ""
    return f"sample{'s' if len(indices) > 1 else ''} {shown}{more}"


def top1_agreement(reference: np.ndarray, other: np.ndarray, minimum: float = MINIMUM,
                   names: Optional[dict] = None, what: str = "the other run") -> Agreement:
    """Top-1 class ids [N] of two runs (`top1`); passes at `minimum` agreement or more."""
    reference, other = np.asarray(reference).reshape(-1), np.asarray(other).reshape(-1)
    same = reference == other
    value = float(same.mean()) if len(same) else 1.0
    differing = [int(i) for i in np.flatnonzero(~same)]
    text = f"top-1 agrees on {int(same.sum())} of {len(same)} samples ({value:.0%})"
    if differing:
        label = class_name(names)
        flips = "; ".join(f"sample {i}: {label(reference[i])} became {label(other[i])}"
                          for i in differing[:SHOWN])
        text += f"; {flips}" + (f" and {len(differing) - SHOWN} more" if len(differing) > SHOWN
                                else "")
    return Agreement(roles.CLASSIFY, "top1_agreement", value, value >= minimum, len(same),
                     differing, text)


def class_name(names: Optional[dict]):
    names = names or {}
    return lambda i: f"{names[int(i)]} ({int(i)})" if int(i) in names else f"class {int(i)}"


def match(reference: Detections, other: Detections, iou_threshold: float = IOU) -> list:
    """(reference index, other index) pairs: each reference detection, best score first,
    takes the unmatched other detection of its class with the highest IoU, if at least
    `iou_threshold`."""
    from qrun.tasks.detect import iou

    pairs, free = [], np.ones(len(other), dtype=bool)
    for i in np.argsort(-np.asarray(reference.scores), kind="stable"):
        candidates = np.flatnonzero(free & (other.ids == reference.ids[i]))
        if not len(candidates):
            continue
        overlaps = iou(reference.boxes[i], other.boxes[candidates])
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou_threshold:
            pairs.append((int(i), int(candidates[best])))
            free[candidates[best]] = False
    return pairs


def detection_differences(reference: Detections, other: Detections, pairs: list,
                          score_tolerance: float, threshold: float, label) -> list:
    """What differs in one sample, as phrases; empty when the sample agrees.

    One detection found by one run only is forgiven when it scores within
    `score_tolerance` of the `threshold` (rounding moved it across), so the counts stay
    within one; any other unmatched detection, or a matched score further apart than
    `score_tolerance`, is a difference.
    """
    said = []
    n_ref, n_other = len(reference), len(other)
    if n_ref and not n_other:
        return [f"no detection where the reference has {n_ref}"]
    lost = sorted(set(range(n_ref)) - {i for i, _ in pairs})
    extra = sorted(set(range(n_other)) - {j for _, j in pairs})
    scores = [(i, j) for i, j in pairs
              if abs(float(reference.scores[i]) - float(other.scores[j])) > score_tolerance]
    edge = threshold + score_tolerance
    near = ([reference.scores[i] < edge for i in lost] + [other.scores[j] < edge for j in extra])
    if len(near) > 1 or not all(near) or scores:
        if n_ref != n_other:
            said.append(f"{n_other} detections, the reference {n_ref}")
        said += [f"{label(reference.ids[i])} {reference.scores[i]:.2f} at "
                 f"{box_text(reference.boxes[i])} unmatched" for i in lost[:SHOWN]]
        said += [f"an extra {label(other.ids[j])} {other.scores[j]:.2f} at "
                 f"{box_text(other.boxes[j])}" for j in extra[:SHOWN]]
        said += [f"{label(reference.ids[i])} scores {other.scores[j]:.2f}, the reference "
                 f"{reference.scores[i]:.2f}" for i, j in scores[:SHOWN]]
    return said


def box_text(box: np.ndarray) -> str:
    """A normalised box as 'x0,y0-x1,y1' in percent of the input."""
    x0, y0, x1, y1 = (100 * np.asarray(box, dtype=np.float64)).round().astype(int)
    return f"({x0},{y0})-({x1},{y1})%"


def detection_agreement(reference: list, other: list, minimum: float = MINIMUM,
                        iou_threshold: float = IOU, score_tolerance: float = SCORE_TOLERANCE,
                        every_sample: bool = False, names: Optional[dict] = None,
                        threshold: float = DETECT_THRESHOLD) -> Agreement:
    """Detections of two runs (one `Detections` per sample each).

    Passes when the other run is never empty where the reference found something, and
    the share of detections matched is at least `minimum`; with `every_sample` (verify:
    the same model on another device) instead every sample must agree
    (`detection_differences`).
    `threshold` is the score the detections were kept at (`decode`'s).
    """
    label = class_name(names)
    matched = larger = n_ref = n_other = 0
    empty, differing, phrases = [], [], []
    for n, (ref, got) in enumerate(zip(reference, other)):
        pairs = match(ref, got, iou_threshold)
        matched += len(pairs)
        larger += max(len(ref), len(got))
        n_ref += len(ref)
        n_other += len(got)
        if len(ref) and not len(got):
            empty.append(n)
        said = detection_differences(ref, got, pairs, score_tolerance, threshold, label)
        if said:
            differing.append(n)
            if n not in empty:  # said once for all of them below
                phrases.append(f"sample {n}: " + ", ".join(said))
    value = matched / larger if larger else 1.0
    samples = len(reference)
    ok = not empty and (not differing if every_sample else value >= minimum)
    if not larger:
        text = f"neither run detects anything in {samples} samples"
    else:
        text = (f"{matched} of {max(n_ref, n_other)} detections match ({value:.0%}: class and "
                f"IoU >= {iou_threshold:g}); {samples - len(differing)} of {samples} samples agree")
    if empty:
        text += (f"; no detection on {samples_text(empty)} where the reference has "
                 f"{sum(len(reference[n]) for n in empty)}")
    if phrases:
        text += "; " + "; ".join(phrases[:SHOWN]) + (
            f" and {len(phrases) - SHOWN} more" if len(phrases) > SHOWN else "")
    return Agreement(roles.DETECT, "detection_agreement", value, ok, samples, differing, text,
                     {"matched": matched, "reference_detections": n_ref,
                      "other_detections": n_other, "empty": empty,
                      "score_tolerance": score_tolerance, "iou": iou_threshold})


def pixel_agreement(reference: np.ndarray, other: np.ndarray, minimum: float = MINIMUM,
                    names: Optional[dict] = None) -> Agreement:
    """Class maps [N, H, W] of two runs; passes when at least `minimum` of the pixels
    agree (each sample's share is checked against it too)."""
    reference, other = np.asarray(reference), np.asarray(other)
    same = reference == other
    per_sample = same.reshape(len(same), -1).mean(axis=1) if len(same) else np.ones(0)
    value = float(same.mean()) if same.size else 1.0
    differing = [int(i) for i in np.flatnonzero(per_sample < minimum)]
    text = f"class maps agree on {value:.2%} of pixels over {len(same)} samples"
    if differing:
        worst = int(np.argmin(per_sample))
        swapped = ~same[worst]
        pairs, counts = np.unique(np.stack([reference[worst][swapped], other[worst][swapped]]),
                                  axis=1, return_counts=True)
        top = int(np.argmax(counts))
        label = class_name(names)
        text += (f"; sample {worst} agrees on {per_sample[worst]:.1%}, mostly "
                 f"{label(pairs[0, top])} read as {label(pairs[1, top])}")
    return Agreement(roles.SEGMENT, "pixel_agreement", value,
                     value >= minimum and not differing, len(same), differing, text,
                     {"per_sample": [round(float(x), 6) for x in per_sample]})


def keypoint_agreement(reference: np.ndarray, other: np.ndarray,
                       tolerance: float = KEYPOINT_TOLERANCE,
                       min_score: float = KEYPOINT_SCORE) -> Agreement:
    """Keypoints [N, K, 3] ((y, x, score), normalised) of two runs; passes when every
    sample's mean distance over the keypoints the reference scores at least `min_score`
    (all of them where it scores none so high) is within `tolerance`."""
    from qrun.tasks.pose import KEYPOINT_NAMES

    reference = np.asarray(reference, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    distance = np.hypot(reference[..., 0] - other[..., 0], reference[..., 1] - other[..., 1])
    sure = reference[..., 2] >= min_score
    sure[~sure.any(axis=1)] = True
    means = np.array([d[s].mean() for d, s in zip(distance, sure)]) if len(distance) else \
        np.zeros(0)
    value = float(means.mean()) if len(means) else 0.0
    differing = [int(i) for i in np.flatnonzero(means > tolerance)]
    text = (f"keypoints {value:.3f} of the input's size apart on average over "
            f"{len(means)} samples (tolerance {tolerance:g})")
    if len(distance):
        n, k = np.unravel_index(int(np.argmax(np.where(sure, distance, -1))), distance.shape)
        name = KEYPOINT_NAMES[k] if distance.shape[1] == len(KEYPOINT_NAMES) else f"keypoint {k}"
        text += f"; the farthest: {name} in sample {n}, {distance[n, k]:.3f}"
    if differing:
        text += f"; {samples_text(differing)} beyond the tolerance"
    return Agreement(roles.POSE, "keypoint_distance", value, not differing, len(means),
                     differing, text, {"max": float(distance[sure].max()) if sure.any() else 0.0})


def compare(task, reference, other, minimum: float = MINIMUM, every_sample: bool = False,
            score_tolerance: float = SCORE_TOLERANCE,
            keypoint_tolerance: float = KEYPOINT_TOLERANCE,
            names: Optional[dict] = None) -> Agreement:
    """Two decoded runs (`decode`) of a model whose task is `task` compared by its kind."""
    kind = task.kind
    if kind == roles.CLASSIFY:
        return top1_agreement(reference, other, minimum, names)
    if kind == roles.DETECT:
        return detection_agreement(reference, other, minimum, score_tolerance=score_tolerance,
                                   every_sample=every_sample, names=names)
    if kind == roles.SEGMENT:
        return pixel_agreement(reference, other, minimum, names)
    if kind == roles.POSE:
        return keypoint_agreement(reference, other, keypoint_tolerance)
    raise ValueError(f"no task comparison for {kind!r}")
