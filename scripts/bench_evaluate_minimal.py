#!/usr/bin/env python3
"""The minimal script `scripts/bench_evaluate.py` measures `qrun evaluate` against: COCO
mAP50-95 of a YOLOv8-style int8 detector (output [1, 4 + classes, anchors]) on labelled
images, written by hand with only numpy, PIL, a TFLite runtime and pycocotools.

It imports nothing of qdeploy or qrun, so the same file runs here and, copied as it is, in
the Pi in a box (`bench_evaluate.py --box`), in the runner's venv.

    python bench_evaluate_minimal.py MODEL.tflite DATA [--threads N] [--limit N]

DATA holds annotations.json (COCO) and images/. Prints one JSON line: mAP50-95, the images
and the seconds of the loop (decode to pycocotools, after the imports and the interpreter).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

SCORE_FLOOR = 0.001  # Ultralytics' val: conf 0.001, iou 0.7, max_det 300
NMS_IOU = 0.7
MAX_DETECTIONS = 300
PAD = 114
CLASS_OFFSET = 7680.0  # class-aware NMS: each class's boxes shifted apart by more than any box


def interpreter(model: Path, threads: Optional[int]):
    """The TFLite runtime's interpreter, tensors allocated: ai_edge_litert, else
    tflite_runtime (the order qrun picks them in)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    it = Interpreter(model_path=str(model), num_threads=threads)
    it.allocate_tensors()
    return it


class Minimal:
    """What one writes by hand: PIL decode and letterbox (bilinear, pad 114), pixels / 255
    quantized in float, invoke, the whole head dequantized, best class per anchor, score >=
    0.001, greedy class-offset NMS at IoU 0.7 (corners gathered column by column, as fast as
    numpy allows), at most 300, boxes mapped back."""

    def __init__(self, model: Path, threads: Optional[int]):
        self.it = interpreter(model, threads)
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]
        self.size = int(self.inp["shape"][1])  # square input, as YOLO exports it
        self.in_scale, self.in_zp = self.inp["quantization"]
        self.out_scale, self.out_zp = self.out["quantization"]

    def detections(self, path: Path, image_id: int) -> list:
        from PIL import Image

        s = self.size
        with Image.open(path) as img:
            img = img.convert("RGB")
        w, h = img.size
        r = min(s / w, s / h)
        nw, nh = round(w * r), round(h * r)
        left, top = (s - nw) // 2, (s - nh) // 2
        canvas = np.full((s, s, 3), PAD, np.uint8)
        canvas[top:top + nh, left:left + nw] = np.asarray(img.resize((nw, nh), Image.BILINEAR))
        q = np.clip(np.round(canvas.astype(np.float32) / 255.0 / self.in_scale + self.in_zp),
                    -128, 127).astype(np.int8)
        self.it.set_tensor(self.inp["index"], q[None])
        self.it.invoke()
        y = (self.it.get_tensor(self.out["index"])[0].astype(np.float32) - self.out_zp) \
            * self.out_scale
        scores = y[4:]
        cls, conf = scores.argmax(0), scores.max(0)
        keep = conf >= SCORE_FLOOR
        xywh, cls, conf = y[:4, keep].T * s, cls[keep], conf[keep]
        boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        order = np.argsort(-conf, kind="stable")  # ties: the lower index first
        shifted = (boxes + cls[:, None] * CLASS_OFFSET)[order]
        x0, y0, x1, y1 = (np.ascontiguousarray(shifted[:, k]) for k in range(4))
        areas = (x1 - x0) * (y1 - y0)
        rest, kept = np.arange(len(order)), []
        while rest.size and len(kept) < MAX_DETECTIONS:
            i, rest = rest[0], rest[1:]
            kept.append(order[i])
            iw = np.maximum(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0.0)
            ih = np.maximum(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0.0)
            inter = iw * ih
            rest = rest[inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12) <= NMS_IOU]
        out = boxes[kept]
        out[:, [0, 2]] = np.clip((out[:, [0, 2]] - left) / r, 0, w)
        out[:, [1, 3]] = np.clip((out[:, [1, 3]] - top) / r, 0, h)
        return [{"image_id": image_id, "category_id": int(c), "score": float(sc),
                 "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                for b, c, sc in zip(out, cls[kept], conf[kept])]

    def evaluate(self, data: Path, limit: Optional[int] = None) -> float:
        """mAP50-95 on `data` (its first `limit` images); one pycocotools call."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(data / "annotations.json"))
            images = gt.dataset["images"][:limit]
            results = []
            for image in images:
                results += self.detections(data / "images" / image["file_name"], image["id"])
            e = COCOeval(gt, gt.loadRes(results), "bbox")
            e.params.imgIds = [image["id"] for image in images]
            e.evaluate()
            e.accumulate()
            e.summarize()
        return float(e.stats[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path, help="annotations.json and images/")
    parser.add_argument("--threads", type=int, default=None,
                        help="interpreter threads (default: the runtime's, as qrun's)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    args = parser.parse_args()
    minimal = Minimal(args.model, args.threads)
    start = time.perf_counter()
    figure = minimal.evaluate(args.data, args.limit)
    seconds = time.perf_counter() - start
    images = len(json.loads((args.data / "annotations.json").read_text())["images"][:args.limit])
    print(json.dumps({"map50_95": figure, "images": images, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
