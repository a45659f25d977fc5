"""qrun.model.labels.fit: a labels file that does not fit the scores one to one is mapped
onto them by the model's own class names, or refused with one line naming both counts."""

from __future__ import annotations

import pytest
from qrun.errors import UserError
from qrun.model.labels import Labels, fit, parse_labels, read_labels, to_text

from tests.fixtures.ultralytics82 import NAMES80
from tests.paths import CORAL

MODEL_NAMES = Labels(dict(NAMES80), id_form=True)


def test_coral_coco_90_ids_map_onto_80_scores_by_name():
    coral = read_labels(CORAL / "coco_labels.txt")
    mapped, how = fit(coral, 80, CORAL / "coco_labels.txt", MODEL_NAMES)
    assert mapped.names == NAMES80
    assert [coral.names[i] for i in (11, 12)] == ["n/a", "stop sign"]
    assert mapped.names[11] == "stop sign"
    assert how.endswith("90 labels mapped onto the model's 80 classes by their names")


def test_an_id_form_file_with_background_maps_and_keeps_its_spelling():
    text = "0 background\n" + "".join(f"{i + 1} {n.upper()}\n" for i, n in NAMES80.items())
    mapped, how = fit(parse_labels(text), 80, "labels.txt", MODEL_NAMES)
    assert mapped.names == {i: n.upper() for i, n in NAMES80.items()} and how


def test_labels_that_fit_are_kept_as_they_are():
    plain = Labels(dict(NAMES80))
    assert fit(plain, 80, "labels.txt", MODEL_NAMES) == (plain, None)


def test_without_the_models_names_it_is_one_error_with_both_counts():
    coral = read_labels(CORAL / "coco_labels.txt")
    with pytest.raises(UserError) as refused:
        fit(coral, 80, CORAL / "coco_labels.txt", None, given=True)
    message = str(refused.value)
    assert "\n" not in message
    assert "has 90 labels but the model outputs 80 scores" in message
    assert "names no classes to map them by" in message and "or pass --labels" not in message


def test_names_missing_from_the_file_are_named():
    lines = ["background", *("television" if n == "tv" else n for n in NAMES80.values())]
    with pytest.raises(UserError, match=r"has 81 labels .* 80 scores, and 1 of the model's 80 "
                                        r"class names are not in it \('tv'\)"):
        fit(Labels(dict(enumerate(lines))), 80, "l.txt", MODEL_NAMES)


def test_to_text_round_trips_both_forms():
    for labels in (Labels({0: "a", 1: "b c"}), Labels({1: "a", 5: "b"}, id_form=True)):
        assert parse_labels(to_text(labels)) == labels
