"""What real .tflite files say about themselves: Coral's zoo, and small TF-made heads."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from qdeploy.errors import UserError
from qdeploy.modelfile import selfdescribe
from qdeploy.modelfile.selfdescribe import describe, infer_task

from tests.paths import CORAL

CLASSIFIER = CORAL / "mobilenet_v1_0.25_128_quant.tflite"
SEGMENTER = CORAL / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
ULTRALYTICS_META = "{'names': {0: 'person'}, 'task': 'detect', 'imgsz': [64, 64], 'stride': 32}"


def with_appended_zip(source: bytes, path: Path, member: str, text: str) -> Path:
    """`source` with a zip appended the way Ultralytics does: ZipFile(file, "a")."""
    path.write_bytes(source)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, text)
    return path


# --- Coral's zoo ----------------------------------------------------------------------

def test_coral_classifier_is_classify_with_its_labels_and_normalization():
    d = describe(CLASSIFIER)
    assert (d.task, d.reason) == ("classify", "one [1, 1001] score vector")
    assert [(t.shape, t.dtype) for t in d.inputs] == [((1, 128, 128, 3), "UINT8")]
    assert [(t.shape, t.dtype) for t in d.outputs] == [((1, 1001), "UINT8")]
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "SOFTMAX"} <= d.op_names
    assert d.signature is None and d.ultralytics is None
    meta = d.metadata
    assert meta.name == "ImageClassifier"
    assert meta.label_file == "imagenet_labels.txt" == meta.associated_files[0]
    assert meta.packed_files == ("imagenet_labels.txt",)
    assert (meta.mean, meta.std) == ((127.5,), (127.5,))
    assert len(meta.labels) == 1001 and meta.labels[:2] == ("background", "tench, Tinca tinca")


def test_compiled_twin_keeps_its_shapes_and_metadata():
    d = describe(CORAL / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    assert d.task == "classify" and d.op_names == {"edgetpu-custom-op"}
    assert d.metadata.label_file == "imagenet_labels.txt"


def test_bird_classifier_has_its_own_labels():
    meta = selfdescribe.metadata((CORAL / "mobilenet_v2_1.0_224_inat_bird_quant.tflite")
                                 .read_bytes())
    assert meta.label_file == "inat_bird_labels.txt" and len(meta.labels) == 965


def test_deeplab_is_segment_without_metadata():
    d = describe(SEGMENTER)
    assert d.task == "segment"
    assert d.reason == "a [1, 513, 513] per-pixel map for a 513x513 input"
    assert d.metadata is None and d.signature is None


def test_model_without_a_known_head_is_raw():
    d = describe(CORAL / "model_invoking_error.tflite")
    assert d.task == "raw" and "fake-op-double" in d.op_names


# --- the task, from shapes alone ------------------------------------------------------

@pytest.mark.parametrize("inputs, outputs, ops, kind, words", [
    ([[1, 300, 300, 3]], [[1, 10, 4], [1, 10], [1, 10], [1]],
     {"TFLite_Detection_PostProcess"}, "detect", "SSD"),
    ([[1, 640, 640, 3]], [[1, 84, 8400]], set(), "detect", "YOLOv8/v11"),
    ([[1, 640, 640, 3]], [[1, 25200, 85]], set(), "detect", "YOLOv5"),
    ([[1, 192, 192, 3]], [[1, 1, 17, 3]], set(), "pose", "17"),
    ([[1, 257, 257, 3]], [[1, 129, 129, 21]], set(), "segment", "per-pixel"),
    ([[1, 224, 224, 3]], [[1, 1001]], set(), "classify", "one [1, 1001] score vector"),
    ([[1, 224, 224, 3]], [[1, 1001], [1, 4]], set(), "raw", "no known head"),
    ([[1, 28, 28]], [[1, 3, 2]], set(), "raw", "no known head"),
])
def test_infer_task(inputs, outputs, ops, kind, words):
    got, reason = infer_task(inputs, outputs, ops)
    assert got == kind and words in reason


def test_yolo_reasons_count_classes_and_anchors():
    assert infer_task([[1, 640, 640, 3]], [[1, 84, 8400]], set())[1] == (
        "a raw [1, 84, 8400] detection head (YOLOv8/v11 layout [1, 4+C, N]: "
        "80 classes, 8400 anchors)")
    assert "80 classes, 25200 anchors" in infer_task([[1, 640, 640, 3]], [[1, 25200, 85]],
                                                     set())[1]


# --- Ultralytics' appended temp_meta.txt ----------------------------------------------

def test_ultralytics_meta_is_read_as_a_literal(tmp_path):
    path = with_appended_zip(SEGMENTER.read_bytes(), tmp_path / "m.tflite",
                             "temp_meta.txt", ULTRALYTICS_META)
    assert selfdescribe.ultralytics_meta(path.read_bytes()) == {
        "names": {0: "person"}, "task": "detect", "imgsz": [64, 64], "stride": 32}
    assert describe(path).task == "segment"  # the flatbuffer still reads past the zip


def test_ultralytics_meta_refuses_code_and_does_not_run_it(tmp_path):
    marker = tmp_path / "X"
    path = with_appended_zip(SEGMENTER.read_bytes(), tmp_path / "evil.tflite", "temp_meta.txt",
                             f"__import__('os').system('touch {marker}')")
    with pytest.raises(UserError) as caught:
        describe(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "temp_meta.txt" in message
    assert "not a Python literal dict" in message
    assert not marker.exists()


def test_ultralytics_meta_must_be_a_dict(tmp_path):
    path = with_appended_zip(SEGMENTER.read_bytes(), tmp_path / "m.tflite",
                             "temp_meta.txt", "['person']")
    with pytest.raises(UserError, match="temp_meta.txt .* holds a list, not a dict"):
        selfdescribe.ultralytics_meta(path.read_bytes())


def test_no_appended_zip_means_no_ultralytics_meta():
    assert selfdescribe.ultralytics_meta(SEGMENTER.read_bytes()) is None
    assert selfdescribe.ultralytics_meta(CLASSIFIER.read_bytes()) is None  # zip, no member


# --- files that are not models --------------------------------------------------------

def test_not_a_tflite_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "labels.tflite"
    path.write_text("background\ntench\n")
    with pytest.raises(UserError, match="not a TFLite model .*TFL3") as caught:
        describe(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("length, words", [
    (6, "not a TFLite model"),
    (262_799, "truncated or corrupt: its flatbuffer cannot be read"),
    (-100, "appended zip is cut short"),  # the flatbuffer is whole, its labels' zip is not
])
def test_truncated_file_is_one_line_naming_it(tmp_path, length, words):
    path = tmp_path / "cut.tflite"
    path.write_bytes(CLASSIFIER.read_bytes()[:length])
    with pytest.raises(UserError) as caught:
        describe(path)
    message = str(caught.value)
    assert str(path) in message and words in message and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="is not a file"):
        describe(tmp_path / "nope.tflite")


# --- small models converted with TF ---------------------------------------------------

@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict:
    """name -> path of tiny float models converted from Keras: `yolov8` ends in a
    [1, 5, 64] head (4 box + 1 class, 64 anchors), `yolov5` in a [1, 64, 6] head."""
    tf = pytest.importorskip("tensorflow", reason="TensorFlow converts the test models")
    tf.keras.utils.set_random_seed(0)
    out = tmp_path_factory.mktemp("heads")
    paths = {}
    for name, channels, permute in (("yolov8", 5, True), ("yolov5", 6, False)):
        inputs = tf.keras.Input(shape=(64, 64, 3), batch_size=1, name="images")
        x = tf.keras.layers.Conv2D(channels, 8, strides=8)(inputs)
        x = tf.keras.layers.Reshape((64, channels))(x)
        if permute:
            x = tf.keras.layers.Permute((2, 1))(x)
        model = tf.keras.Model(inputs, x)
        paths[name] = out / f"{name}.tflite"
        paths[name].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return paths


@pytest.mark.slow
def test_converted_model_has_a_serving_default_signature(heads):
    sig = describe(heads["yolov8"]).signature
    assert sig.key == "serving_default"
    assert list(sig.inputs) == ["images"] and len(sig.outputs) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name, shape, layout", [
    ("yolov8", (1, 5, 64), "YOLOv8/v11 layout [1, 4+C, N]: 1 classes, 64 anchors"),
    ("yolov5", (1, 64, 6), "YOLOv5 layout [1, N, 5+C]: 1 classes, 64 anchors"),
])
def test_raw_yolo_heads_are_detect(heads, name, shape, layout):
    d = describe(heads[name])
    assert [t.shape for t in d.outputs] == [shape]
    assert d.task == "detect" and layout in d.reason


@pytest.mark.slow
def test_ultralytics_style_model_describes_its_meta(heads, tmp_path):
    path = with_appended_zip(heads["yolov8"].read_bytes(), tmp_path / "best_int8.tflite",
                             "temp_meta.txt", ULTRALYTICS_META)
    d = describe(path)
    assert d.ultralytics == {"names": {0: "person"}, "task": "detect", "imgsz": [64, 64],
                             "stride": 32}
    assert d.task == "detect" and d.signature.key == "serving_default"


@pytest.mark.slow
def test_ultralytics_style_model_with_code_is_refused(heads, tmp_path):
    marker = tmp_path / "X"
    path = with_appended_zip(heads["yolov5"].read_bytes(), tmp_path / "evil.tflite",
                             "temp_meta.txt", f"__import__('os').system('touch {marker}')")
    with pytest.raises(UserError, match="temp_meta.txt .*not a Python literal dict"):
        describe(path)
    assert not marker.exists()
