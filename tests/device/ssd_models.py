"""Single-image SSDs ending in `TFLite_Detection_PostProcess`, in both output orders.

The quadrant detector of tests/fixtures/detectors.py with its gain fixed at 1, so qrun
detect can feed it one image: a white quadrant q gives class q at QUADRANT_BOXES[q].
"op order" returns the op's tuple (boxes, classes, scores, count, as TF1 exports order
the model's outputs); "model maker" returns a dict whose order is TF2 / Model Maker's
(scores, boxes, count, classes), so the outputs' positions differ between the two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.fixtures import detectors as d

ORDERS = ("op_order", "model_maker")


def build(tf, order: str):
    detect = d.build(tf)

    @tf.function(input_signature=[tf.TensorSpec([1, d.SIZE, d.SIZE, 3], tf.float32, "image")])
    def image_only(image):
        boxes, classes, scores, count = detect(image, tf.ones([1, d.ANCHORS]))
        if order == "op_order":
            return boxes, classes, scores, count
        return {"a_scores": scores, "b_boxes": boxes, "c_count": count, "d_classes": classes}

    return image_only


def representative():
    for image, _gain in d.representative():
        yield [image]


def make(directory: Path, order: str) -> Path:
    """Write the uint8-input, float32-output SSD of `order` into `directory`."""
    from qdeploy.quantize.tfquiet import quiet, tensorflow

    tf = tensorflow()
    module = tf.Module()
    module.detect = build(tf, order)
    saved = Path(directory) / f"ssd_{order}_saved_model"
    path = Path(directory) / f"ssd_{order}_quant.tflite"
    with quiet():
        tf.saved_model.save(module, str(saved), signatures={"serving_default": module.detect})
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        converter.allow_custom_ops = True
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
        path.write_bytes(converter.convert())
    return path


def quadrant_image(width: int, height: int, quadrant: int) -> np.ndarray:
    """uint8 [height, width, 3] black, with the part that pycoral's letterbox (top-left,
    aspect kept) puts in quadrant q white; and that part's box (xmin, ymin, xmax, ymax)."""
    scale = min(d.SIZE / width, d.SIZE / height)
    y0, x0, y1, x1 = d.QUADRANT_BOXES[quadrant]
    box = tuple(v * d.SIZE / scale for v in (x0, y0, x1, y1))
    xmin, ymin, xmax, ymax = (int(round(v)) for v in box)
    image = np.zeros((height, width, 3), np.uint8)
    image[ymin:min(ymax, height), xmin:min(xmax, width)] = 255
    return image, (xmin, ymin, min(xmax, width), min(ymax, height))
