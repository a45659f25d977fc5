"""`--against float` for a segmenter and a pose model: the float model's masks and
keypoints are the truth the int8 model is scored on (qrun.measure.evaluate).

Both models are built here with TF, seeded, as a float and an int8 `.tflite` of one
graph: a segmenter whose class is mostly each pixel's strongest colour, a MoveNet-shaped pose
model ([1,1,17,3]: y, x, score). The expected figures are computed independently: the
two `.tflite` files run through the interpreter on the same pixels, masks compared pixel
by pixel, keypoints through pycocotools' OKS.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qdeploy.modelimport.importer import import_model
from qrun.measure import evaluate as ev
from qrun.model import manifest as mf
from qrun.model.runtime import make_interpreter
from tests.fixtures.tflite_models import full_integer

pytestmark = pytest.mark.slow

SIDE = 64
IMAGES = 6


def pictures(seed: int = 0) -> list:
    """Seeded pictures of noisy coloured blocks (64x64 RGB, uint8)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(IMAGES):
        blocks = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1), np.int64))
        noise = rng.integers(-24, 25, blocks.shape)  # near-ties: int8 flips a few pixels
        out.append(np.clip(blocks + noise, 0, 255).astype(np.uint8))
    return out


def representative():
    for image in pictures(seed=1):
        yield [image[None].astype(np.float32) / 255]


def convert(tf, fn, directory, name):
    """`name`.tflite (int8, uint8 I/O) and `name`_float.tflite of the function `fn`."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()],
                                                                fn)
    int8 = directory / f"{name}.tflite"
    int8.write_bytes(full_integer(converter, representative))
    plain = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    floating = directory / f"{name}_float.tflite"
    floating.write_bytes(plain.convert())
    return int8, floating


def segmenter(tf):
    """Logits [1,64,64,3] from two seeded convolutions over the colours: each pixel's
    class mostly its strongest colour, with the near-ties int8 decides differently."""
    rng = np.random.default_rng(3)
    first = tf.constant(rng.normal(0, 1.0, (3, 3, 3, 8)), tf.float32)
    mix = rng.normal(0, 0.3, (8, 3))
    mix[:3] += np.eye(3) * 2.0  # the first three features carry the colours through
    second = tf.constant(mix[None, None], tf.float32)
    identity = tf.constant(np.eye(3, 8)[None, None] * 2.0, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, SIDE, SIDE, 3], tf.float32)])
    def model(image):
        features = tf.nn.relu(tf.nn.conv2d(image, first, 1, "SAME") * 0.1
                              + tf.nn.conv2d(image, identity, 1, "SAME"))
        return tf.nn.conv2d(features, second, 1, "SAME")
    return model


def poser(tf):
    """MoveNet's output layout [1,1,17,3] (y, x, score in 0..1) from the picture's 4x4
    colour means through a seeded dense layer; scores biased high so every keypoint is
    seen."""
    rng = np.random.default_rng(7)
    dense = tf.constant(rng.normal(0, 0.6, (48, 51)), tf.float32)
    bias = tf.constant(np.tile([0.0, 0.0, 3.0], 17), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, SIDE, SIDE, 3], tf.float32)])
    def model(image):
        pooled = tf.reshape(tf.nn.avg_pool2d(image, 16, 16, "VALID"), [1, 48])
        return tf.reshape(tf.sigmoid(pooled @ dense + bias), [1, 1, 17, 3])
    return model


def deployment(tmp_path_factory, build, name) -> tuple:
    """The int8 model imported, its float model listed as the float variant."""
    from qdeploy.quantize.tfquiet import quiet, tensorflow

    tf = tensorflow()
    work = tmp_path_factory.mktemp(name)
    with quiet():
        int8, floating = convert(tf, build(tf), work, name)
    out = import_model(int8, out=work / "dep").out_dir
    floating = floating.replace(out / "model_float.tflite")
    m = mf.load(out)
    m.artifacts[mf.FLOAT] = mf.artifact_for(floating)
    mf.save(m, out)
    return out, int8, floating


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pictures")
    for k, picture in enumerate(pictures()):
        Image.fromarray(picture).save(directory / f"picture{k}.png")
    return directory


def run(model, picture: np.ndarray) -> np.ndarray:
    """One invoke on the uint8 picture (the float model gets it divided by 255, as the
    manifest's preprocessing says); the output dequantized."""
    interpreter = make_interpreter(model)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    data = picture[None]
    interpreter.set_tensor(detail["index"], data.astype(np.float32) / 255
                           if detail["dtype"] == np.float32 else data.astype(detail["dtype"]))
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    values = interpreter.get_tensor(out["index"]).astype(np.float32)
    scale, zero = out["quantization"]
    return scale * (values - zero) if scale else values


def test_segmenter_int8_is_scored_on_the_float_masks(tmp_path_factory, images):
    dep, int8, floating = deployment(tmp_path_factory, segmenter, "segmenter")
    assert mf.load(dep).task.kind == "segment"
    doc = ev.evaluate(dep, images, against="float")
    assert list(doc["variants"]) == ["int8"] and doc["data"]["against"] == "float"
    figures = doc["variants"]["int8"]
    same = total = 0
    for picture in pictures():
        a, b = run(floating, picture).argmax(-1), run(int8, picture).argmax(-1)
        same, total = same + int((a == b).sum()), total + a.size
    assert figures["pixel_accuracy"] == pytest.approx(same / total, abs=1e-9)
    assert 0.9 < figures["pixel_accuracy"] < 1.0 and figures["miou"] > 0.8
    assert {c["id"] for c in figures["per_class"]} == {0, 1, 2}


def test_pose_int8_is_scored_on_the_float_keypoints(tmp_path_factory, images):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dep, int8, floating = deployment(tmp_path_factory, poser, "poser")
    assert mf.load(dep).task.kind == "pose"
    doc = ev.evaluate(dep, images, against="float")
    assert list(doc["variants"]) == ["int8"] and doc["data"]["against"] == "float"
    ap = doc["variants"]["int8"]["oks_ap"]
    # independently: the float keypoints as COCO person annotations, the int8 ones as
    # results, through pycocotools (the figure qrun reports is COCOeval's AP)
    assert ap == pytest.approx(oks_ap(floating, int8), abs=1e-9)
    assert 0.5 < ap <= 1.0, ap
    # and the figure moves with the keypoints: int8 scored on a float truth moved 6 pixels
    assert oks_ap(floating, int8, shift=6.0) < ap


def oks_ap(floating, int8, shift: float = 0.0) -> float:
    """COCOeval's keypoint AP of the int8 keypoints on the float ones (shifted right by
    `shift` pixels), each image 64x64, every keypoint seen."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for k, picture in enumerate(pictures()):
        images.append({"id": k, "file_name": f"picture{k}.png", "width": SIDE,
                       "height": SIDE})
        for model, keep in ((floating, annotations), (int8, results)):
            y, x, s = run(model, picture).reshape(17, 3).T
            x, y = x * SIDE + (shift if keep is annotations else 0.0), y * SIDE
            flat = [float(v) for i in range(17) for v in (x[i], y[i], 2)]
            box = [float(x.min()), float(y.min()), float(np.ptp(x)), float(np.ptp(y))]
            if keep is annotations:
                keep.append({"id": k + 1, "image_id": k, "category_id": 1, "keypoints": flat,
                             "num_keypoints": 17, "bbox": box,
                             "area": max(box[2] * box[3], 1.0), "iscrowd": 0})
            else:
                keep.append({"image_id": k, "category_id": 1, "keypoints": flat,
                             "score": float(s.mean())})
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": [
            {"id": 1, "name": "person", "keypoints": [], "skeleton": []}]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "keypoints")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])
