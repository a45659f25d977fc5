"""`qdeploy import`: real Coral files and a TF-made detector into deployment directories."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from qdeploy.modelfile import tflite_graph
from qdeploy.errors import UserError
from qdeploy.modelimport.importer import import_model
from qrun.model import manifest as mf
from qrun.measure import reference as qref
from qrun.model.runtime import make_interpreter
from qrun.model.tensors import TensorSpec

from tests.fixtures.convert import files_in
from tests.fixtures.detectors import QUADRANT_BOXES, square_image
from tests.paths import CORAL

V1 = "mobilenet_v1_0.25_128_quant"
MOVENET = "movenet_single_pose_lightning_ptq"
DEEPLAB = "deeplabv3_mnv2_dm05_pascal_quant"


def copy(names, directory: Path) -> Path:
    """Coral files copied into `directory` (a model and its twin, side by side)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(CORAL / name, directory / name)
    return directory


def runtime_specs(model: Path) -> tuple:
    interpreter = make_interpreter(model)
    return ([TensorSpec.from_details(d) for d in interpreter.get_input_details()],
            [TensorSpec.from_details(d) for d in interpreter.get_output_details()])


def classes(run_qrun, model: Path) -> list:
    out = run_qrun("classify", CORAL / "cat.bmp", "--model", model, "--top-k", 3, "--json")
    assert out.code == 0, out.err
    return json.loads(out.out)["ids"]


def left_behind(parent: Path) -> list:
    """What a failed import left in `parent` (staging directories included)."""
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


# --- Coral's classifier, both ways ---------------------------------------------------

def test_cpu_model_import_reads_tensors_labels_and_normalization(tmp_path, run_qrun):
    model = CORAL / f"{V1}.tflite"
    result = import_model(model, out=tmp_path / "dep")
    m = mf.load(tmp_path / "dep")
    inputs, outputs = runtime_specs(model)
    assert m.inputs == inputs and m.outputs == outputs
    assert [t.name for t in m.inputs] == [t.name for t in inputs] and m.inputs[0].index == 0
    assert (m.task.kind, m.task.outputs, m.task.labels, m.task.source) == (
        mf.CLASSIFY, {mf.SCORES: 0}, mf.LABELS, "graph")
    assert sorted(m.artifacts) == [mf.INT8, mf.LABELS, mf.REFERENCE]
    assert m.artifacts[mf.INT8].file == "model_int8.tflite"
    assert m.artifacts[mf.INT8].sha256 == mf.sha256_file(model)
    labels = (tmp_path / "dep" / "labels.txt").read_text().splitlines()
    assert len(labels) == 1001 and labels[:2] == ["background", "tench, Tinca tinca"]
    # The metadata's 127.5/127.5 is for a float input: the uint8 one takes pixels as they
    # are (Coral's and TFLite Support's way), which is mean 128, std 128 here.
    assert (m.preprocess.mean, m.preprocess.std) == (128.0, 128.0)
    assert len(result.notes) == 1 and "mean 127.5, std 127.5) is for a float input" in \
        result.notes[0]
    assert (m.converter.tool, m.converter.source_model, m.converter.source_kind) == (
        "qdeploy import", model.name, "tflite")
    assert m.compiled is None
    pixels = np.load(tmp_path / "dep" / "reference_inputs.npy")
    assert pixels.shape == (8, 128, 128, 3) and pixels.dtype == np.uint8
    assert "8 seeded random images" in result.reference_line
    assert classes(run_qrun, tmp_path / "dep") == classes(run_qrun, model)


def test_edgetpu_model_finds_its_twin_beside_it(tmp_path, run_qrun):
    source = copy([f"{V1}.tflite", f"{V1}_edgetpu.tflite"], tmp_path / "zoo")
    result = import_model(source / f"{V1}_edgetpu.tflite", out=tmp_path / "dep")
    m = result.manifest
    assert mf.load(tmp_path / "dep").to_dict() == m.to_dict()
    assert m.artifacts[mf.INT8].sha256 == mf.sha256_file(CORAL / f"{V1}.tflite")
    assert m.artifacts[mf.EDGETPU].sha256 == mf.sha256_file(CORAL / f"{V1}_edgetpu.tflite")
    assert (m.inputs, m.outputs) == runtime_specs(CORAL / f"{V1}.tflite")
    assert m.task.kind == mf.CLASSIFY and mf.REFERENCE in m.artifacts
    assert (m.compiled.edgetpu_subgraphs, m.compiled.ops_on_cpu) == (1, 0)
    assert m.compiled.ops_on_edgetpu == len(tflite_graph.load(CORAL / f"{V1}.tflite").ops)
    assert any(f"found the CPU twin {V1}.tflite" in note for note in result.notes)
    # No Edge TPU here: qrun falls back to the imported twin and answers as the bare model.
    assert classes(run_qrun, tmp_path / "dep") == classes(run_qrun, CORAL / f"{V1}.tflite")


def test_cpu_model_with_its_compiled_twin_given(tmp_path):
    m = import_model(CORAL / f"{V1}.tflite", edgetpu=CORAL / f"{V1}_edgetpu.tflite",
                     out=tmp_path / "dep").manifest
    assert sorted(m.artifacts) == [mf.EDGETPU, mf.INT8, mf.LABELS, mf.REFERENCE]
    assert (tmp_path / "dep" / "model_int8_edgetpu.tflite").read_bytes() == \
        (CORAL / f"{V1}_edgetpu.tflite").read_bytes()


def test_lone_edgetpu_model_turns_verify_and_fallback_off(tmp_path, run_cli):
    lone = copy([f"{V1}_edgetpu.tflite"], tmp_path / "alone") / f"{V1}_edgetpu.tflite"
    result = import_model(lone, out=tmp_path / "dep")
    m = result.manifest
    assert sorted(m.artifacts) == [mf.EDGETPU, mf.LABELS]
    assert (m.inputs[0].shape, m.outputs[0].shape) == ([1, 128, 128, 3], [1, 1001])
    assert any("no CPU twin" in n and "verify and the CPU fallback are off" in n
               for n in result.notes)
    assert "reference inputs: none" in result.reference_line
    # push --verify on it fails before connecting, in one line.
    code, _, err = run_cli("push", tmp_path / "dep", "--target", "local", "--verify")
    assert code != 0 and err.count("\n") == 1 and err.startswith("error: ")
    assert "no CPU int8 model to compare the device with" in err and "--cpu X.tflite" in err
    # And a --reference cannot be used without the twin to compare with.
    with pytest.raises(UserError, match="no CPU int8 model for verify"):
        import_model(lone, reference=CORAL / "cat.bmp", out=tmp_path / "dep2")
    assert not (tmp_path / "dep2").exists()


# --- tasks from the graph ------------------------------------------------------------

@pytest.mark.parametrize("name, kind, role, decoder", [
    (f"{MOVENET}.tflite", mf.POSE, mf.KEYPOINTS, "movenet"),
    (f"{MOVENET}_edgetpu.tflite", mf.POSE, mf.KEYPOINTS, "movenet"),  # no signature; twin
    (f"{DEEPLAB}.tflite", mf.SEGMENT, mf.MASK, "class_map"),
])
def test_task_auto_on_coral_models(tmp_path, name, kind, role, decoder):
    source = copy([name, name.replace("_edgetpu", "")], tmp_path / "zoo")
    result = import_model(source / name, task="auto", out=tmp_path / "dep")
    task = result.manifest.task
    assert (task.kind, task.outputs, task.decoder, task.source) == (kind, {role: 0}, decoder,
                                                                    "graph")
    assert task.reason in result.task_line and f"task: {kind}" in result.task_line


def test_ssd_detector_roles_follow_the_ops_outputs(tmp_path, ssd_detectors, run_cli):
    model = ssd_detectors.int8_model
    code, out, err = run_cli("import", model, "--out", tmp_path / "dep")
    assert code == 0, err
    m = mf.load(tmp_path / "dep")
    graph = tflite_graph.load(model)
    op = next(op for op in graph.ops if op.name == "TFLite_Detection_PostProcess")
    expected = {role: list(graph.outputs).index(index)
                for role, index in zip((mf.BOXES, mf.CLASSES, mf.SCORES, mf.COUNT), op.outputs)}
    assert (m.task.kind, m.task.decoder) == (mf.DETECT, "ssd_postprocess")
    assert m.task.outputs == expected and sorted(expected.values()) == [0, 1, 2, 3]
    assert expected != {mf.BOXES: 0, mf.CLASSES: 1, mf.SCORES: 2, mf.COUNT: 3}  # not trivial
    assert [(t.shape, t.dtype) for t in m.inputs] == [([1, 32, 32, 3], "uint8"),
                                                      ([1, 4], "uint8")]
    assert {t.dtype for t in m.outputs} == {"float32"}
    assert "task: detect" in out and "TFLite_Detection_PostProcess" in out
    assert "next: qdeploy push" in out
    # The roles read the known detection: a white bottom-left quadrant is class 2 there.
    interpreter = make_interpreter(tmp_path / "dep" / "model_int8.tflite")
    gain = m.inputs[1]
    interpreter.set_tensor(m.inputs[0].index, square_image(2)[None])
    interpreter.set_tensor(gain.index, np.full((1, 4), round(1 / gain.scale) + gain.zero_point,
                                               np.uint8))
    interpreter.invoke()
    got = {role: interpreter.get_tensor(m.outputs[pos].index) for role, pos in expected.items()}
    assert int(got[mf.COUNT][0]) == 1 and int(got[mf.CLASSES][0, 0]) == 2
    assert got[mf.SCORES][0, 0] > 0.9
    np.testing.assert_allclose(got[mf.BOXES][0, 0], QUADRANT_BOXES[2], atol=1e-3)
    # Two inputs that are not one image: raw reference samples, one array per input.
    ref = qref.load(tmp_path / "dep" / m.artifacts[mf.REFERENCE].file)
    assert ref.raw and [(a.shape, a.dtype.name) for a in ref.arrays] == [
        ((8, 32, 32, 3), "uint8"), ((8, 4), "uint8")]


def test_float_detector_is_a_float_only_deployment(tmp_path, ssd_detectors):
    result = import_model(ssd_detectors.float_model, out=tmp_path / "dep")
    m = result.manifest
    assert sorted(m.artifacts) == [mf.FLOAT] and m.task.kind == mf.DETECT
    assert [t.dtype for t in m.inputs] == ["float32", "float32"]
    assert any("float model" in n and "full-integer quantization" in n and
               "source model" in n for n in result.notes)


def test_reference_images_go_through_the_preprocessing(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("cat.bmp", "parrot.jpg"):
        shutil.copyfile(CORAL / name, images / name)
    result = import_model(CORAL / f"{V1}.tflite", reference=images, out=tmp_path / "dep")
    pixels = np.load(tmp_path / "dep" / "reference_inputs.npy")
    assert pixels.shape == (2, 128, 128, 3) and "2 image(s)" in result.reference_line
    from qrun.model.preprocess import load_image
    np.testing.assert_array_equal(pixels[0], load_image(images / "cat.bmp", [1, 128, 128, 3],
                                                        result.manifest.preprocess))


def test_reference_npz_must_fit_the_inputs(tmp_path, ssd_detectors):
    good = qref.save_npz(tmp_path / "good.npz", [np.zeros((3, 32, 32, 3), np.uint8),
                                                 np.zeros((3, 4), np.uint8)])
    result = import_model(ssd_detectors.int8_model, reference=good, out=tmp_path / "dep")
    assert result.manifest.artifacts[mf.REFERENCE].file == "reference_inputs.npz"
    bad = qref.save_npz(tmp_path / "bad.npz", [np.zeros((3, 32, 32, 3), np.uint8)])
    with pytest.raises(UserError, match="holds 1 array.* but the model has 2 input"):
        import_model(ssd_detectors.int8_model, reference=bad, out=tmp_path / "dep2")


# --- options against what the file says ----------------------------------------------

def test_options_beat_the_metadata_with_a_note(tmp_path):
    labels = tmp_path / "ids.txt"
    labels.write_text("".join(f"{i} thing{i}\n" for i in range(1001)))
    result = import_model(CORAL / f"{V1}.tflite", labels=labels, preprocess="mean=127,std=128",
                          task="classify", out=tmp_path / "dep")
    m = result.manifest
    assert (m.preprocess.mean, m.preprocess.std) == (127.0, 128.0)
    assert (tmp_path / "dep" / "labels.txt").read_text() == labels.read_text()
    assert (m.task.source, m.task.reason) == ("option", "--task classify")
    notes = " | ".join(result.notes)
    assert "--labels" in notes and "replaces the 1001 labels in its metadata's" in notes
    assert "--preprocess mean=127,std=128 replaces the normalization" in notes
    assert "127.5" in notes


# --- bad input: one error line, nothing written --------------------------------------

def truncated(tmp_path: Path) -> Path:
    data = (CORAL / f"{V1}.tflite").read_bytes()
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[: len(data) // 2])
    return path


def not_tflite(tmp_path: Path) -> Path:
    path = tmp_path / "notes.tflite"
    path.write_text("hello, not a model\n")
    return path


def mismatched_twin(tmp_path: Path) -> list:
    return [CORAL / f"{V1}.tflite", "--edgetpu",
            CORAL / "mobilenet_v1_0.5_160_quant_edgetpu.tflite"]


def unfit_labels(tmp_path: Path) -> list:
    labels = tmp_path / "three.txt"
    labels.write_text("cat\ndog\nbird\n")
    return [CORAL / f"{V1}.tflite", "--labels", labels]


def evil_ultralytics(tmp_path: Path) -> Path:
    path = tmp_path / "yolo_full_integer_quant.tflite"
    path.write_bytes((CORAL / f"{V1}.tflite").read_bytes())
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("temp_meta.txt", "__import__('os').system('touch PWNED')")
    return path


@pytest.mark.parametrize("make, words", [
    (not_tflite, ["not a TFLite model"]),
    (truncated, ["truncated or corrupt"]),
    (mismatched_twin, ["input 0", "[1, 160, 160, 3]", "[1, 128, 128, 3]", "not twins",
                       "--cpu"]),
    (unfit_labels, ["3 labels", "1001 scores"]),
    (evil_ultralytics, ["temp_meta.txt", "not a Python literal dict", "refused, not run"]),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, monkeypatch, run_cli,
                                                        make, words):
    monkeypatch.chdir(tmp_path)
    made = make(tmp_path)
    args = made if isinstance(made, list) else [made]
    before = files_in(tmp_path)
    code, _, err = run_cli("import", *args, "--out", tmp_path / "out" / "dep")
    assert code == 1 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err, err
    assert files_in(tmp_path) == before and left_behind(tmp_path / "out") == []
    assert not (tmp_path / "PWNED").exists()


def test_out_that_is_not_empty_is_refused(tmp_path):
    out = tmp_path / "dep"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match=r"exists and is not empty; pass a new directory with "
                                        r"--out"):
        import_model(CORAL / f"{V1}.tflite", out=out)
    assert left_behind(out) == ["keep.txt"] and left_behind(tmp_path) == ["dep"]


def test_empty_out_is_filled(tmp_path):
    (tmp_path / "dep").mkdir()
    import_model(CORAL / f"{V1}.tflite", out=tmp_path / "dep")
    assert (tmp_path / "dep" / "manifest.json").is_file()
    assert left_behind(tmp_path) == ["dep"]


def test_default_out_is_named_after_the_model(tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    source = copy([f"{V1}.tflite", f"{V1}_edgetpu.tflite"], tmp_path / "zoo")
    code, out, err = run_cli("import", source / f"{V1}_edgetpu.tflite")
    assert code == 0, err
    assert (tmp_path / "qdeploy-out" / V1 / "manifest.json").is_file()
    assert f"next: qdeploy push qdeploy-out/{V1} --target HOST" in out


def test_ultralytics_names_and_task_are_read_as_literals(tmp_path):
    path = tmp_path / "cls_full_integer_quant.tflite"
    path.write_bytes((CORAL / f"{V1}.tflite").read_bytes())
    names = {i: f"class {i}" for i in range(1001)}
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("temp_meta.txt", repr({"names": names, "task": "classify",
                                                "imgsz": [128, 128], "stride": 32}))
    result = import_model(path, out=tmp_path / "dep")
    m = result.manifest
    assert (m.task.kind, m.task.source) == (mf.CLASSIFY, "ultralytics")
    assert "temp_meta.txt says task 'classify'" in result.task_line
    # The metadata's label file comes first; Ultralytics' names stand in without one.
    assert (tmp_path / "dep" / "labels.txt").read_text().splitlines()[0] == "background"
    detect = tmp_path / "det.tflite"
    detect.write_bytes((CORAL / f"{V1}.tflite").read_bytes())
    with zipfile.ZipFile(detect, "a") as archive:
        archive.writestr("temp_meta.txt", repr({"names": {0: "person"}, "task": "detect"}))
    result = import_model(detect, out=tmp_path / "dep2")
    assert result.manifest.task.kind == mf.CLASSIFY  # the graph's, with a note saying why
    assert any("Ultralytics' task 'detect' does not fit the outputs" in n for n in result.notes)


def test_movenet_uint8_input_without_quantization_takes_pixels_as_they_are(tmp_path):
    """MoveNet's uint8 input has no quantization parameters: pixels go in unchanged, through
    qrun's own input path (verify's and classify's), whatever mean and std say."""
    from qrun.model import preprocess

    result = import_model(CORAL / "movenet_single_pose_lightning_ptq.tflite", out=tmp_path / "d")
    m = result.manifest
    assert (m.inputs[0].dtype, m.inputs[0].scale) == ("uint8", 0.0)
    assert (m.preprocess.mean, m.preprocess.std) == (0.0, 1.0)
    pixels = np.random.default_rng(1).integers(0, 256, (192, 192, 3), dtype=np.uint8)
    for pre in (m.preprocess, preprocess.Preprocess(128.0, 128.0)):
        fed = preprocess.to_input(pixels, pre, np.uint8, 0.0, 0)
        assert fed.dtype == np.uint8 and np.array_equal(fed, pixels)
