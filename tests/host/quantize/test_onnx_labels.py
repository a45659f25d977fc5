"""Labels from an ONNX file's own metadata_props (as Ultralytics writes them): parsed as
Python literals, never run; `qdeploy convert` ships them as labels.txt, maps a --labels
file with a background line onto them, and refuses a `names` that is not a literal dict."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from qdeploy.modelfile import onnxmeta
from qrun.errors import UserError
from qrun.model.labels import read_labels

from tests.fixtures import onnx_graphs as graphs

NAMES = {i: f"digit {word}" for i, word in enumerate(
    "zero one two three four five six seven eight nine".split())}
assert len(NAMES) == graphs.CLASSES


def ultralytics_props(names=NAMES) -> dict:
    """metadata_props as Ultralytics' export_onnx writes them: str() of each value."""
    return {"description": "Ultralytics YOLOv8n-cls model", "author": "Ultralytics",
            "version": "8.2.103", "stride": str(32), "task": "classify", "batch": str(1),
            "imgsz": str([16, 16]), "names": str(names)}


def payload(marker) -> str:
    """A `names` value that creates `marker` if anything evaluates it."""
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"


# --- the parser (no conversion) ----------------------------------------------------------

def test_ultralytics_props_are_read_as_literals():
    meta = onnxmeta.parse(ultralytics_props(), "m.onnx")
    assert meta.names.names == NAMES and meta.names.id_form
    assert (meta.task, meta.imgsz, meta.stride) == ("classify", (16, 16), 32)
    assert meta.to_dict() == {"classes": 10, "task": "classify", "imgsz": [16, 16],
                              "stride": 32}


@pytest.mark.parametrize("names, want", [
    ("['a', 'b']", {0: "a", 1: "b"}),  # a list: line i is class i
    ('{"0": "a", "1": "b"}', {0: "a", 1: "b"}),  # string keys, as JSON writes them
])
def test_other_literal_forms_of_names(names, want):
    assert onnxmeta.parse({"names": names}, "m.onnx").names.names == want


def test_no_ultralytics_keys_means_no_names():
    meta = onnxmeta.parse({"producer_note": "anything at all ("}, "m.onnx")
    assert meta == onnxmeta.OnnxMeta() and meta.to_dict() == {}


def test_names_that_are_code_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran.txt"
    with pytest.raises(UserError) as refused:
        onnxmeta.parse({"names": payload(marker)}, "yolo.onnx")
    message = str(refused.value)
    assert "\n" not in message and "yolo.onnx: metadata_props 'names'" in message
    assert "not a Python literal dict" in message and "not run" in message
    assert not marker.exists()


@pytest.mark.parametrize("props, words", [
    ({"names": "'person'"}, "holds a str, not a dict"),
    ({"names": "{'a': 'b'}"}, "not a dict of class id -> name"),
    ({"imgsz": "[640, 640, 3]"}, "not [height, width]"),
    ({"stride": "32.5"}, "holds a float, not a int"),
    ({"stride": "max(8, 16)"}, "'stride' is not a Python literal"),
])
def test_bad_literals_are_one_line_each(props, words):
    with pytest.raises(UserError, match=words.replace("[", r"\[").replace("]", r"\]")):
        onnxmeta.parse(props, "m.onnx")


# --- qdeploy convert --------------------------------------------------------------------

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnx2tf")),
    reason="the onnx extra is not installed (scripts/test installs it: pip install -e "
           "'.[onnx]')")


def with_props(path, props: dict):
    model = graphs.small_cnn()
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return graphs.save(model, path)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx-labels-calib") / "calib_nchw.npy"
    np.save(path, graphs.calibration_nchw(16))
    return path


@needs_onnx
@pytest.mark.slow
def test_convert_ships_the_models_own_names(tmp_path, calib, run_cli):
    model = with_props(tmp_path / "cls.onnx", ultralytics_props())
    code, out, err = run_cli("convert", model, "--calib", calib, "--out", tmp_path / "out",
                             "--num-calib", 16)
    assert code == 0, err
    assert read_labels(tmp_path / "out" / "labels.txt").names == NAMES
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["labels"] == "labels.txt" and manifest["task"]["labels"] == "labels"
    assert manifest["converter"]["onnx_metadata"] == {
        "classes": 10, "task": "classify", "imgsz": [16, 16], "stride": 32}


@needs_onnx
@pytest.mark.slow
def test_convert_maps_a_labels_file_with_a_background_line(tmp_path, calib, run_cli):
    model = with_props(tmp_path / "cls.onnx", ultralytics_props())
    given = tmp_path / "labels.txt"
    given.write_text("background\n" + "\n".join(reversed(NAMES.values())) + "\n")
    code, out, err = run_cli("convert", model, "--calib", calib, "--out", tmp_path / "mapped",
                             "--num-calib", 16, "--labels", given)
    assert code == 0, err
    assert read_labels(tmp_path / "mapped" / "labels.txt").names == NAMES  # by name, not line
    assert "11 labels mapped onto the model's 10 classes" in out + err


@needs_onnx
def test_convert_refuses_names_that_are_code(tmp_path, calib, run_cli):
    marker = tmp_path / "ran.txt"
    model = with_props(tmp_path / "evil.onnx", {"names": payload(marker)})
    code, out, err = run_cli("convert", model, "--calib", calib, "--out", tmp_path / "out")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "evil.onnx: metadata_props 'names' is not a Python literal dict" in lines[0]
    assert not marker.exists()
    out_dir = tmp_path / "out"
    assert not out_dir.exists() or not any(out_dir.iterdir())


@needs_onnx
def test_labels_naming_other_classes_are_one_error_with_both_counts(tmp_path, calib,
                                                                     run_cli):
    model = with_props(tmp_path / "cls.onnx", ultralytics_props())
    given = tmp_path / "other.txt"
    given.write_text("cat\ndog\nbird\n")
    code, out, err = run_cli("convert", model, "--calib", calib, "--out", tmp_path / "out",
                             "--num-calib", 16, "--labels", given)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1, err
    assert "other.txt has 3 labels but the model outputs 10 scores" in lines[0]
    assert "or pass --labels" not in lines[0]
