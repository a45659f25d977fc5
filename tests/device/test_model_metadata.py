"""qrun.model.metadata, the stdlib reader of what a .tflite carries besides its graph:
Model Maker's packed label file, Ultralytics' temp_meta.txt and metadata.json."""

from __future__ import annotations

import json
import zipfile

import pytest
from qrun.errors import UserError
from qrun.model import metadata

from tests.paths import CORAL

SEGMENTER = CORAL / "deeplabv3_mnv2_dm05_pascal_quant.tflite"  # no metadata, no zip
CLASSIFIER = CORAL / "mobilenet_v1_0.25_128_quant.tflite"  # imagenet_labels.txt packed


def appended(path, member: str, text: str):
    path.write_bytes(SEGMENTER.read_bytes())
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:  # as Ultralytics does
        archive.writestr(member, text)
    return path


def test_model_makers_label_file_is_read_through_its_metadata():
    labels, where = metadata.model_labels(CLASSIFIER)
    assert len(labels.names) == 1001 and labels.names[0] == "background"
    assert where == f"imagenet_labels.txt packed in {CLASSIFIER.name}"


def test_a_file_without_metadata_has_no_labels():
    assert metadata.model_labels(SEGMENTER) == (None, None)
    assert metadata.metadata_buffer(SEGMENTER.read_bytes()) is None


def test_temp_meta_txt_names(tmp_path):
    path = appended(tmp_path / "y.tflite", "temp_meta.txt",
                    str({"task": "detect", "names": {0: "person", 1: "bicycle"}}))
    labels, where = metadata.model_labels(path)
    assert labels.names == {0: "person", 1: "bicycle"} and labels.id_form
    assert where == "the Ultralytics metadata in y.tflite"


def test_newest_exports_metadata_json_names(tmp_path):
    """json.dumps turns the names' int keys into strings."""
    meta = {"task": "detect", "imgsz": [640, 640], "names": {0: "person", 1: "bicycle"}}
    path = appended(tmp_path / "y.tflite", "metadata.json", json.dumps(meta, indent=2))
    assert metadata.ultralytics_meta(path.read_bytes())["names"] == {"0": "person",
                                                                     "1": "bicycle"}
    assert metadata.model_labels(path)[0].names == {0: "person", 1: "bicycle"}


def test_temp_meta_that_is_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran.txt"
    path = appended(tmp_path / "evil.tflite", "temp_meta.txt",
                    f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')")
    with pytest.raises(UserError) as refused:
        metadata.model_labels(path)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message
    assert "temp_meta.txt" in message and "not a Python literal dict" in message
    assert not marker.exists()


def test_metadata_json_that_is_not_json_is_refused(tmp_path):
    path = appended(tmp_path / "bad.tflite", "metadata.json", "{'names': {0: 'a'}}")
    with pytest.raises(UserError, match="metadata.json .* is not JSON"):
        metadata.model_labels(path)


@pytest.mark.parametrize("names, want", [
    ({0: "a", 2: "c"}, {0: "a", 2: "c"}), (["a", "b"], {0: "a", 1: "b"}),
    ({"1": "b"}, {1: "b"}), ({"x": "b"}, None), ({-1: "a"}, None), ("a", None), ({}, None)])
def test_names_forms(names, want):
    found = metadata.names_labels(names)
    assert (found.names if found else None) == want
