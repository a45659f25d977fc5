"""qrun classify on real Coral models and images: golden results, ties, labels, manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qrun.tasks import adapters
from qrun.tasks.classify import classify
from qrun.errors import UserError
from qrun.model.labels import check_fit, parse_labels, read_labels
from qrun.model.preprocess import Preprocess

from tests.fixtures.deployments import V1_025, make_deployment
from tests.paths import CORAL

BIRD = CORAL / "mobilenet_v2_1.0_224_inat_bird_quant.tflite"
IMAGENET = CORAL / "imagenet_labels.txt"


def test_bird_golden_through_the_cli(run_qrun):
    out = run_qrun("classify", CORAL / "parrot.jpg", "--model", BIRD,
                   "--labels", CORAL / "inat_bird_labels.txt", "--json")
    assert out.code == 0, out.err
    data = json.loads(out.out)
    assert data["ids"][0] == 923
    assert data["labels"][0] == "Ara macao (Scarlet Macaw)"
    assert data["scores"][0] > 0.7
    assert data["device"]["used"] == "cpu" and data["model"]["variant"] == "int8"
    assert len(data["timings_ms"]) == 1 and data["timings_ms"][0] > 0


@pytest.mark.parametrize("model, top_id, min_score", [
    ("mobilenet_v2_1.0_224_quant.tflite", 286, 0.6),
    ("mobilenet_v1_0.5_160_quant.tflite", 286, 0.5),
])
def test_cat_goldens(model, top_id, min_score):
    result = classify(CORAL / "cat.bmp", CORAL / model, IMAGENET, top_k=3)
    assert result.classes[0].id == top_id
    assert result.classes[0].label == "Egyptian cat"
    assert result.classes[0].score >= min_score
    scores = [c.score for c in result.classes]
    assert scores == sorted(scores, reverse=True)


def test_v1_025_cat_is_deterministic_and_ties_go_to_the_lower_id():
    runs = [classify(CORAL / "cat.bmp", CORAL / f"{V1_025}.tflite", IMAGENET, top_k=5)
            for _ in range(2)]
    assert runs[0].classes == runs[1].classes
    top = runs[0].classes
    assert {top[0].id, top[1].id} == {283, 286}  # tiger cat / Egyptian cat (Coral: 283 >= 0.25)
    for a, b in zip(top, top[1:]):
        assert a.score > b.score or (a.score == b.score and a.id < b.id)


def test_tie_order_on_equal_scores():
    scores = np.array([0.1, 0.4, 0.4, 0.05, 0.4], dtype=np.float32)
    classes = adapters.get_classes_from_scores(scores, top_k=4, labels={2: "two"})
    assert [c.id for c in classes] == [1, 2, 4, 0]
    assert classes[1].label == "two" and classes[0].label == ""


def test_threshold_and_top_k():
    scores = np.array([0.1, 0.5, 0.3, 0.2])
    assert [c.id for c in adapters.get_classes_from_scores(scores, 10, 0.25)] == [1, 2]
    assert [c.id for c in adapters.get_classes_from_scores(scores, 1)] == [1]


def test_count_times_each_invoke(run_qrun):
    out = run_qrun("classify", CORAL / "cat.bmp", "--model", CORAL / f"{V1_025}.tflite",
                   "--labels", IMAGENET, "--count", 3, "--top-k", 2)
    assert out.code == 0, out.err
    lines = out.out.splitlines()
    assert [ln.split(":")[0] for ln in lines[:3]] == ["invoke 1", "invoke 2", "invoke 3"]
    assert "includes loading the model" in lines[0]
    assert "includes" not in lines[1]
    assert lines[3].split(":")[0] in ("tiger cat", "Egyptian cat") and len(lines) == 5


def without_packed_files(source, path):
    """`source` with its appended zip (Model Maker's packed label file) cut off."""
    import io
    import zipfile

    data = source.read_bytes()
    start = min(i.header_offset for i in zipfile.ZipFile(io.BytesIO(data)).infolist())
    path.write_bytes(data[:start])
    return path


def test_without_labels_prints_ids(run_qrun, tmp_path):
    bare = without_packed_files(CORAL / "mobilenet_v2_1.0_224_quant.tflite",
                                tmp_path / "mobilenet_v2_1.0_224_quant.tflite")
    out = run_qrun("classify", CORAL / "cat.bmp", "--model", bare, "--top-k", 1)
    assert out.code == 0, out.err
    assert out.out.splitlines()[-1].startswith("286: ")


def test_a_bare_model_file_names_classes_by_its_packed_labels(run_qrun):
    """Coral's classifier carries imagenet_labels.txt in its TFLITE_METADATA's zip."""
    model = CORAL / "mobilenet_v2_1.0_224_quant.tflite"
    out = run_qrun("classify", CORAL / "cat.bmp", "--model", model, "--top-k", 1, "--json")
    assert out.code == 0, out.err
    data = json.loads(out.out)
    assert data["ids"] == [286] and data["labels"] == ["Egyptian cat"]
    assert data["labels_file"] == str(model)


def test_both_label_forms(tmp_path):
    plain = parse_labels("background\ntench\n\ngoldfish\n\n")
    assert plain.names == {0: "background", 1: "tench", 2: "", 3: "goldfish"}
    assert not plain.id_form
    ids = parse_labels("0 background\n1: tench, Tinca tinca\n\n5  goldfish\n")
    assert ids.names == {0: "background", 1: "tench, Tinca tinca", 5: "goldfish"}
    assert ids.id_form
    digits = parse_labels("0\n1\n2\n")  # MNIST-style: labels that are numbers
    assert digits.names == {0: "0", 1: "1", 2: "2"} and not digits.id_form
    path = tmp_path / "l.txt"
    path.write_text("0 background\n3 cat\n")
    check_fit(read_labels(path), 4, path)
    with pytest.raises(UserError, match="names class id 3 but the model outputs only 3"):
        check_fit(read_labels(path), 3, path)


def test_id_form_labels_classify_like_the_plain_file(tmp_path):
    lines = IMAGENET.read_text().splitlines()
    id_file = tmp_path / "imagenet_ids.txt"
    id_file.write_text("".join(f"{i}: {name}\n" for i, name in enumerate(lines)))
    a = classify(CORAL / "cat.bmp", CORAL / "mobilenet_v2_1.0_224_quant.tflite", IMAGENET)
    b = classify(CORAL / "cat.bmp", CORAL / "mobilenet_v2_1.0_224_quant.tflite", id_file)
    assert a.classes == b.classes


def test_deployment_dir_gives_labels_and_preprocess(deployment_dir):
    result = classify(CORAL / "cat.bmp", deployment_dir, device="cpu", top_k=2)
    assert result.labels.endswith("imagenet_labels.txt")
    assert {c.label for c in result.classes} == {"tiger cat", "Egyptian cat"}
    assert result.model == str(deployment_dir / f"{V1_025}.tflite")


def test_manifest_preprocess_is_applied(tmp_path):
    coral = make_deployment(tmp_path / "a", {"int8": f"{V1_025}.tflite"})
    other = make_deployment(tmp_path / "b", {"int8": f"{V1_025}.tflite"},
                            preprocess=Preprocess(mean=0.0, std=255.0, color="RGB"))
    a = classify(CORAL / "cat.bmp", coral, top_k=3)
    b = classify(CORAL / "cat.bmp", other, top_k=3)
    assert {c.id for c in a.classes[:2]} == {283, 286}
    assert [(c.id, c.score) for c in a.classes] != [(c.id, c.score) for c in b.classes]


def test_current_deployment_is_the_default(run_qrun, qdeploy_home, tmp_path):
    make_deployment(qdeploy_home / "current", {"int8": f"{V1_025}.tflite"})
    out = run_qrun("classify", CORAL / "cat.bmp", "--top-k", 1)
    assert out.code == 0, out.err
    assert out.out.splitlines()[-1].split(":")[0] in ("tiger cat", "Egyptian cat")
