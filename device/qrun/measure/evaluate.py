"""`qrun evaluate` (and `qdeploy evaluate` of detect, segment and pose models): how correctly
each variant of a deployment runs, in the metrics each field uses.

Every variant (float and int8 on the CPU, the Edge TPU model when its delegate loads, as
`qrun bench --compare` picks them) runs the task's own steps (qrun.tasks.detect/segment/
pose: the letterbox, decoders and NMS the commands use) on every image of the data set
(qrun.measure.evaldata), each image decoded once for all variants. Then:

- detect: COCO mAP50-95 and mAP50 by pycocotools' COCOeval ("bbox"), from detections kept
  at a score of 0.001 or more, at most 300 per image, NMS IoU 0.7 (as Ultralytics' val);
  the model's classes matched to the data's categories by name; AP per class.
- segment: mIoU over the classes present in the mask or the prediction (255 ignored),
  pixel accuracy and IoU per class, from one confusion matrix over all images.
- pose: OKS AP by COCOeval ("keypoints"); a single-person model predicts one person per
  image, scored by its keypoints' mean score.
- `against="float"`: no labels; the float model's outputs are the ground truth (its
  detections scoring 0.25 or more, its class map, its keypoints scoring 0.3 or more).

pycocotools is the `eval` extra; without it a detect or pose evaluation is one error line.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qrun.errors import UserError
from qrun.measure import evaldata
from qrun.model import deployment
from qrun.model.layout import EDGETPU, FLOAT, INT8

KIND = "qrun-evaluate"
SCHEMA_VERSION = 1
DETECT, SEGMENT, POSE = "detect", "segment", "pose"
FIGURES = {DETECT: ("map50_95", "map50"), SEGMENT: ("miou", "pixel_accuracy"),
           POSE: ("oks_ap",)}
PRIMARY = {task: names[0] for task, names in FIGURES.items()}  # the one the reports keep
SCORE_FLOOR = 0.001  # detections kept down to this score (Ultralytics' val: conf 0.001)
MAX_DETECTIONS = 300  # per image (Ultralytics' val: max_det 300)
VAL_IOU = 0.7  # NMS overlap of YOLO heads (Ultralytics' val: iou 0.7)
FLOAT_DETECT_TRUTH = 0.25  # --against float: float detections this sure are the truth
FLOAT_KEYPOINT_TRUTH = 0.3  # ... and float keypoints this sure
EXTRA_HINT = ("pip install 'qdeploy[eval]' (on a device: qdeploy push --eval DIR installs "
              "it into the runner)")


def cocoeval():
    """(COCO, COCOeval) from pycocotools; one UserError naming the extra without it."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise UserError(f"evaluating detect and pose models needs pycocotools, the eval "
                        f"extra: {EXTRA_HINT}") from None
    return COCO, COCOeval


# -- the metrics ------------------------------------------------------------------------

def coco_from(dataset: dict):
    """A pycocotools COCO object of a ground-truth or result dict, without its prints."""
    COCO, _ = cocoeval()
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def run_cocoeval(truth: dict, results: list, iou_type: str):
    """COCOeval evaluated, accumulated and summarized on `results` (empty: no detections)."""
    _, COCOeval = cocoeval()
    gt = coco_from(truth)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results) if results else coco_from(
            {**truth, "annotations": []})
        e = COCOeval(gt, dt, iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def box_metrics(truth: dict, results: list) -> dict:
    """mAP50-95, mAP50 and AP per category (pycocotools' precision at area all, 100 dets)."""
    e = run_cocoeval(truth, results, "bbox")
    names = {c["id"]: c["name"] for c in truth["categories"]}
    counts = {}
    for a in truth["annotations"]:
        counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
    per_class = []
    for k, cat in enumerate(e.params.catIds):
        p = e.eval["precision"][:, :, k, 0, -1]  # [IoU thresholds, recall points]
        ap = float(np.mean(p[p > -1])) if (p > -1).any() else None
        ap50 = float(np.mean(p[0][p[0] > -1])) if (p[0] > -1).any() else None
        per_class.append({"id": int(cat), "name": names.get(cat, str(cat)),
                          "instances": counts.get(cat, 0), "ap50_95": ap, "ap50": ap50})
    return {"map50_95": clean(e.stats[0]), "map50": clean(e.stats[1]), "per_class": per_class}


def keypoint_metrics(truth: dict, results: list) -> dict:
    """OKS AP (pycocotools' keypoint evaluation), and AP at OKS 0.5."""
    e = run_cocoeval(truth, results, "keypoints")
    return {"oks_ap": clean(e.stats[0]), "oks_ap50": clean(e.stats[1])}


def clean(value) -> float:
    """A COCOeval figure: -1 (nothing to score) becomes 0.0."""
    return max(float(value), 0.0)


def confusion(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """[256, 256] pixel counts of (true class, predicted class), pixels marked 255 left out."""
    keep = truth != evaldata.IGNORE
    pairs = truth[keep].astype(np.int64) * 256 + np.clip(predicted[keep], 0, 255)
    return np.bincount(pairs, minlength=256 * 256).reshape(256, 256)


def mask_metrics(matrix: np.ndarray, names: dict) -> dict:
    """mIoU over the classes present in the truth or the prediction, pixel accuracy, IoU
    per class, from a confusion matrix."""
    hit = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - hit
    present = np.flatnonzero(union > 0)
    iou = hit[present] / union[present]
    total = matrix.sum()
    return {"miou": float(iou.mean()) if present.size else 0.0,
            "pixel_accuracy": float(hit.sum() / total) if total else 0.0,
            "per_class": [{"id": int(c), "name": names.get(int(c), ""), "iou": float(v),
                           "pixels": int(matrix[c].sum())} for c, v in zip(present, iou)]}


# -- what each variant predicts ---------------------------------------------------------

@dataclass
class Variant:
    """One model of the deployment set up for the task, and what it predicted so far."""

    name: str
    opened: object  # qrun.tasks.pipeline.Opened
    steps: object  # the task's Detector, Segmenter or PoseFinder
    results: list = field(default_factory=list)  # COCO results (detect, pose)
    matrix: Optional[np.ndarray] = None  # segment: the confusion matrix
    seconds: float = 0.0  # preprocess, invoke and decode, all images


def task_steps(opened, task: str):
    """The task's steps with evaluate's settings (a low score floor, many detections)."""
    if task == DETECT:
        from qrun.tasks.detect import detector

        return detector(opened, None, SCORE_FLOOR, VAL_IOU, MAX_DETECTIONS)
    if task == SEGMENT:
        from qrun.tasks.segment import segmenter

        return segmenter(opened)
    from qrun.tasks.pose import pose_finder

    return pose_finder(opened)


def open_variants(dep: deployment.Deployment, task: str, tpu: str) -> tuple:
    """(Variant per model that runs here, skipped [{variant, reason}])."""
    from qrun.measure.bench import compare_choices, loaded_as_opened

    choices, skipped = compare_choices(dep, tpu)
    variants = []
    for choice in choices:
        opened = loaded_as_opened(dep, choice, deployment.load(choice))
        variants.append(Variant(opened.loaded.variant, opened, task_steps(opened, task)))
    return variants, skipped


def predict(variant: Variant, picture, size: tuple):
    """The task's result for one decoded image: objects, (model map, class map, counts) or
    keypoints."""
    from qrun.tasks import pipeline

    start = time.perf_counter()
    data, context = variant.steps.preprocess(picture, size)
    pipeline.invoke(variant.opened, data)
    found = variant.steps.postprocess(variant.opened.interpreter, context)
    variant.seconds += time.perf_counter() - start
    return found


def detection_results(objects: list, image_id: int, category_of: Optional[dict]) -> list:
    """COCO results of one image's objects: [{image_id, category_id, bbox xywh, score}];
    `category_of` maps model class ids to the data's (None: the ids as they are)."""
    out = []
    for o in objects:
        category = o.id if category_of is None else category_of.get(o.id)
        if category is None:
            continue
        b = o.bbox
        out.append({"image_id": image_id, "category_id": category, "score": round(o.score, 6),
                    "bbox": [b.xmin, b.ymin, b.xmax - b.xmin, b.ymax - b.ymin]})
    return out


def pose_result(keypoints: list, image_id: int, category: int) -> dict:
    """One person's COCO keypoint result: x, y, visibility 1 each; its mean score."""
    flat = [v for k in keypoints for v in (k.x, k.y, 1)]
    return {"image_id": image_id, "category_id": category, "keypoints": flat,
            "score": float(np.mean([k.score for k in keypoints]))}


def categories_by_name(model_names: dict, data: evaldata.DataSet) -> tuple:
    """(model class id -> data category id, note): matched by name; data categories the
    model does not have are a UserError listing them."""
    categories = data.names
    used = {a["category_id"] for a in data.coco["annotations"]}
    if not model_names:
        return ({i: i for i in categories},
                "the model has no labels: classes matched by id (give the deployment a "
                "labels file to match them by name)")
    by_name = {name.strip().lower(): i for i, name in model_names.items()}
    lacking = sorted(n for c, n in categories.items()
                     if c in used and n.strip().lower() not in by_name)
    if lacking:
        raise UserError(f"the data's classes {', '.join(lacking)} are not among the model's "
                        f"{len(model_names)} labels; rename them as the model's labels name "
                        "them, or drop their annotations")
    return ({by_name[n.strip().lower()]: c for c, n in categories.items()
             if n.strip().lower() in by_name}, None)


# -- the evaluation -----------------------------------------------------------------------

def evaluate(model: Optional[Path], data: Path, against: Optional[str] = None,
             tpu: str = "", limit: Optional[int] = None,
             progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Evaluate every variant of a detect, segment or pose deployment on `data`.

    Returns:
      {"kind": "qrun-evaluate", "task", "metric", "data": {path, layout, images, against},
       "variants": {variant: {figures..., "per_class", "device", "model", "images_per_s"}},
       "skipped": [...], "notes": [...]}.
    """
    if against not in (None, FLOAT):
        raise UserError(f"--against takes float (the float model's outputs as the truth), "
                        f"not {against!r}")
    dep = deployment.resolve(model)
    task = dep.manifest.task.kind if dep.manifest is not None else None
    if task not in FIGURES:
        raise UserError(f"qrun evaluate measures detect, segment and pose deployments; this "
                        f"one's task is {task or 'unknown (no manifest)'} (import the model "
                        "with qdeploy import; classifiers: qdeploy evaluate)")
    if task != SEGMENT:
        cocoeval()  # before any model runs
    dataset = evaldata.read(data, task, against_float=against == FLOAT, limit=limit)
    variants, skipped = open_variants(dep, task, tpu)
    if not variants:
        why = "; ".join(f"{s['variant']}: {s['reason']}" for s in skipped)
        raise UserError(f"{dep.root or dep.model} holds no model that runs here ({why}); "
                        "give the Edge TPU model its CPU twin (qdeploy import --cpu)")
    if against == FLOAT and (not variants or variants[0].name != FLOAT):
        raise UserError(f"--against float needs the deployment's float model, and "
                        f"{dep.root or dep.model} has none; evaluate on labelled data")
    notes = list(dataset.notes)
    truth, category_of = prepare_truth(task, dataset, variants, against, notes)
    run_images(task, dataset, variants, truth, category_of, against, progress)
    if against == FLOAT and task == DETECT:
        add_categories(truth, variants)
    scored = variants[1:] if against == FLOAT else variants
    figures = {v.name: {**score(task, v, truth, dataset, against), **facts(v, dataset)}
               for v in scored}
    return {"kind": KIND, "schema_version": SCHEMA_VERSION, "task": task,
            "metric": PRIMARY[task],
            "data": {"path": str(Path(data).resolve()), "layout": dataset.layout,
                     "images": len(dataset.items), "against": against or "labels"},
            "variants": figures, "skipped": skipped, "notes": notes}


def prepare_truth(task: str, dataset: evaldata.DataSet, variants: list,
                  against: Optional[str], notes: list) -> tuple:
    """(ground truth in COCO's form or None, model class id -> category id)."""
    if against == FLOAT:
        images = [{"id": i.id, "file_name": i.path.name, "width": i.width, "height": i.height}
                  for i in dataset.items]
        categories = ([{"id": 1, "name": "person", "keypoints": [], "skeleton": []}]
                      if task == POSE else [])
        return ({"info": {}, "images": images, "annotations": [], "categories": categories},
                None if task == DETECT else {0: 1})
    if task == DETECT:
        mapping, note = categories_by_name(variants[0].steps.names, dataset)
        if note:
            notes.append(note)
        return dataset.coco, mapping
    if task == POSE:
        person = next(c["id"] for c in dataset.coco["categories"] if c.get("keypoints"))
        return dataset.coco, {0: person}
    return None, {}


def run_images(task: str, dataset: evaldata.DataSet, variants: list, truth: Optional[dict],
               category_of: dict, against: Optional[str],
               progress: Optional[Callable[[int, int], None]]) -> None:
    """Every image through every variant, decoded once per colour mode."""
    from qrun.tasks import pipeline

    for n, item in enumerate(dataset.items, 1):
        decoded = {}
        mask = evaldata.read_mask(item.mask) if item.mask is not None else None
        for k, v in enumerate(variants):
            key = (v.steps.color, v.steps.draft_size)
            if key not in decoded:
                decoded[key] = pipeline.read_image(item.path, *key)
            found = predict(v, *decoded[key])
            if against == FLOAT and k == 0:
                mask = add_float_truth(task, truth, found, item, category_of)
                continue
            collect(task, v, found, item, mask, category_of)
        if progress:
            progress(n, len(dataset.items))


def collect(task: str, v: Variant, found, item: evaldata.Item, mask, category_of: dict):
    if task == DETECT:
        v.results.extend(detection_results(found, item.id, category_of))
    elif task == POSE:
        v.results.append(pose_result(found, item.id, category_of[0]))
    else:
        matrix = confusion(mask, found[1])
        v.matrix = matrix if v.matrix is None else v.matrix + matrix


def add_float_truth(task: str, truth: dict, found, item: evaldata.Item, category_of: dict):
    """Add the float model's output on one image to the truth; the class map for segment."""
    annotations = truth["annotations"]
    if task == SEGMENT:
        return found[1].astype(np.uint8)
    if task == DETECT:
        for o in found:
            if o.score < FLOAT_DETECT_TRUTH:
                continue
            b = o.bbox
            box = [b.xmin, b.ymin, b.xmax - b.xmin, b.ymax - b.ymin]
            annotations.append({"id": len(annotations) + 1, "image_id": item.id,
                                "category_id": o.id, "bbox": box, "area": box[2] * box[3],
                                "iscrowd": 0})
        return None
    seen = [k for k in found if k.score >= FLOAT_KEYPOINT_TRUTH]
    if seen:
        xs, ys = [k.x for k in seen], [k.y for k in seen]
        box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        flat = [v for k in found for v in ((k.x, k.y, 2) if k.score >= FLOAT_KEYPOINT_TRUTH
                                           else (0, 0, 0))]
        annotations.append({"id": len(annotations) + 1, "image_id": item.id, "category_id": 1,
                            "keypoints": flat, "num_keypoints": len(seen), "bbox": box,
                            "area": max(box[2] * box[3], 1.0), "iscrowd": 0})
    return None


def add_categories(truth: dict, variants: list) -> None:
    """--against float: a category for every class id in the truth or any variant's
    results, named by the model's labels."""
    names = variants[0].steps.names or {}
    ids = {a["category_id"] for a in truth["annotations"]}
    ids |= {r["category_id"] for v in variants for r in v.results}
    truth["categories"] = [{"id": i, "name": names.get(i, str(i))} for i in sorted(ids)]


def score(task: str, v: Variant, truth: Optional[dict], dataset: evaldata.DataSet,
          against: Optional[str]) -> dict:
    if task == DETECT:
        return box_metrics(truth, v.results)
    if task == POSE:
        return keypoint_metrics(truth, v.results)
    return mask_metrics(v.matrix if v.matrix is not None else np.zeros((256, 256), np.int64),
                        getattr(v.steps, "names", {}) or {})


def facts(v: Variant, dataset: evaldata.DataSet) -> dict:
    choice = v.opened.choice
    return {"device": choice.used, "model": str(choice.path),
            "images_per_s": len(dataset.items) / v.seconds if v.seconds else None}


def stderr_progress(done: int, total: int) -> None:
    """`evaluated N/M images` on stderr, every tenth and the last."""
    import sys

    if done == total or done % 10 == 0:
        print(f"evaluated {done}/{total} images", file=sys.stderr, flush=True)


# -- text ---------------------------------------------------------------------------------

LABELS = {"map50_95": "mAP50-95", "map50": "mAP50", "miou": "mIoU",
          "pixel_accuracy": "pixel accuracy", "oks_ap": "OKS AP"}
ORDER = (FLOAT, INT8, EDGETPU)


def summary(document: dict) -> str:
    """Lines of figures per variant, with the change from float (qrun evaluate's text)."""
    data, variants = document["data"], document["variants"]
    lines = [f"{document['task']} on {data['images']} images ({data['layout']} layout"
             + (", the float model's outputs as truth)" if data["against"] == FLOAT else ")")]
    base = variants.get(FLOAT)
    for name in sorted(variants, key=lambda n: ORDER.index(n) if n in ORDER else 9):
        figures = variants[name]
        parts = []
        for key in FIGURES[document["task"]]:
            text = f"{LABELS[key]} {figures[key]:.4f}"
            if base is not None and name != FLOAT:
                text += f" ({figures[key] - base[key]:+.4f})"
            parts.append(text)
        speed = figures.get("images_per_s")
        lines.append(f"  {name} ({figures['device']}): " + ", ".join(parts)
                     + (f"; {speed:.1f} images/s" if speed else ""))
    lines += [f"  skipped {s['variant']}: {s['reason']}" for s in document["skipped"]]
    lines += [f"note: {n}" for n in document["notes"]]
    return "\n".join(lines)
