"""An Ultralytics 8.0-8.2 export (TFLITE_METADATA naming temp_meta.txt as its label file,
the dict packed in the appended zip) imported and run: its 80 names, not one label line;
Coral's 90-line coco_labels.txt mapped onto its 80 scores by those names."""

from __future__ import annotations

import json

import pytest
from qdeploy.modelfile.selfdescribe import describe
from qdeploy.modelimport.importer import import_model
from qrun.errors import UserError
from qrun.model import manifest as mf
from qrun.model import metadata
from qrun.model.labels import read_labels

from tests.fixtures.ultralytics82 import ANCHORS, META82, NAMES80, lit_cell
from tests.paths import CORAL

COCO90 = CORAL / "coco_labels.txt"


def test_the_fixture_is_packed_as_8_2_packs_it(ultralytics_82):
    data = ultralytics_82.read_bytes()
    files = metadata.associated_files(metadata.metadata_buffer(data))
    assert files == [("temp_meta.txt", metadata.TENSOR_AXIS_LABELS)]
    assert metadata.appended_zip(data).namelist() == ["temp_meta.txt"]
    assert metadata.appended_zip(data).read("temp_meta.txt").decode() == str(META82)


def test_describe_reads_the_dict_not_a_label_line(ultralytics_82):
    d = describe(ultralytics_82)
    assert d.metadata.name == META82["description"]
    assert d.metadata.associated_files == ("temp_meta.txt",)
    assert d.metadata.label_file is None and d.metadata.labels == ()
    assert d.ultralytics["names"] == NAMES80 and d.ultralytics["version"] == "8.2.103"


def test_import_takes_the_80_names(ultralytics_82, tmp_path):
    result = import_model(ultralytics_82, out=tmp_path / "dep")
    m = result.manifest
    assert (m.task.kind, m.task.decoder, m.task.source) == (mf.DETECT, "yolov8", "ultralytics")
    assert m.task.params == {"classes": 80, "anchors": ANCHORS}
    assert read_labels(tmp_path / "dep" / "labels.txt").names == NAMES80


def test_coral_coco_labels_map_onto_the_80_scores_by_name(ultralytics_82, tmp_path):
    coral = read_labels(COCO90)
    assert len(coral.names) == 90 and coral.names[11] == "n/a"  # COCO's 90-id layout
    result = import_model(ultralytics_82, out=tmp_path / "dep", labels=COCO90)
    labels = read_labels(tmp_path / "dep" / "labels.txt").names
    assert labels == NAMES80 and labels[11] == "stop sign"
    assert [n for n in result.notes if "labels" in n] == [
        f"{COCO90}'s 90 labels mapped onto the model's 80 classes by their names in "
        "Ultralytics' metadata"]  # mapped, not "replaces the 80 labels"


def test_a_labels_file_with_a_background_line_is_mapped(ultralytics_82, tmp_path):
    given = tmp_path / "labels.txt"
    given.write_text("background\n" + "\n".join(NAMES80.values()) + "\n")
    import_model(ultralytics_82, out=tmp_path / "dep", labels=given)
    assert read_labels(tmp_path / "dep" / "labels.txt").names == NAMES80


def test_labels_naming_other_classes_are_one_error_with_both_counts(ultralytics_82,
                                                                     tmp_path):
    with pytest.raises(UserError) as refused:
        import_model(ultralytics_82, out=tmp_path / "dep",
                     labels=CORAL / "pascal_voc_segmentation_labels.txt")
    message = str(refused.value)
    assert "\n" not in message and "but the model outputs 80 scores" in message
    assert "labels" in message and "or pass --labels" not in message
    assert not (tmp_path / "dep").exists()


def test_qrun_detect_names_the_bare_files_classes(ultralytics_82, tmp_path, run_qrun):
    from PIL import Image

    image = tmp_path / "cell.png"
    Image.fromarray(lit_cell(5)).save(image)
    for extra in ((), ("--labels", COCO90)):
        out = run_qrun("detect", image, "--model", ultralytics_82, "--json", *extra)
        assert out.code == 0, out.err
        objects = json.loads(out.out)["objects"]
        person = [o for o in objects if o["id"] == 0]
        assert len(person) == 1 and person[0]["label"] == "person"
        assert {o["label"] for o in objects if o["id"] == 1} == {"bicycle"}
