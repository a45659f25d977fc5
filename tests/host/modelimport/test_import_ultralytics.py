"""An Ultralytics-format YOLO model (int8 I/O, raw [1, 4+C, N] head, temp_meta.txt) imported
from its bare file, run through qrun's preprocessing, pushed and verified on `local`."""

from __future__ import annotations

import numpy as np

from qdeploy.modelimport.importer import import_model
from qdeploy.push.fleet import push_many
from qdeploy.push.options import PushOptions
from qdeploy.remote import targets
from qrun.model import manifest as mf
from qrun.model import preprocess
from qrun.model.labels import read_labels
from qrun.model.runtime import make_interpreter
from tests.fixtures.yolo import ANCHORS, NAMES, cell_boxes, lit_cell


def test_import_reads_task_names_and_normalization_from_ultralytics(ultralytics_yolo, tmp_path):
    result = import_model(ultralytics_yolo, out=tmp_path / "dep")
    m = result.manifest
    assert (m.inputs[0].dtype, m.outputs[0].dtype) == ("int8", "int8")
    assert m.outputs[0].shape == [1, 4 + len(NAMES), ANCHORS]
    assert (m.task.kind, m.task.decoder, m.task.source) == (mf.DETECT, "yolov8", "ultralytics")
    assert m.task.outputs == {mf.HEAD: 0}
    assert m.task.params == {"classes": len(NAMES), "anchors": ANCHORS}
    assert read_labels(tmp_path / "dep" / "labels.txt").names == NAMES  # ids kept: "0 lamp"
    assert (m.preprocess.mean, m.preprocess.std) == (0.0, 255.0)  # Ultralytics: pixels / 255
    assert sorted(m.artifacts) == [mf.INT8, mf.LABELS, mf.REFERENCE]


def test_the_imported_preprocessing_gives_the_known_head(ultralytics_yolo, tmp_path):
    """The head computed by construction comes back through qrun's own input path."""
    m = import_model(ultralytics_yolo, out=tmp_path / "dep").manifest
    interpreter = make_interpreter(tmp_path / "dep" / "model_int8.tflite")
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    for k in (0, 5, ANCHORS - 1):
        data = preprocess.to_input(lit_cell(k), m.preprocess, np.int8, m.inputs[0].scale,
                                   m.inputs[0].zero_point)
        interpreter.set_tensor(inp["index"], data[None])
        interpreter.invoke()
        head = preprocess.dequantize(interpreter.get_tensor(out["index"])[0],
                                     m.outputs[0].scale, m.outputs[0].zero_point)
        assert int(np.argmax(head[4])) == k and head[4, k] > 0.9  # "lamp" at the lit cell
        assert np.all(np.delete(head[5], k) > 0.9) and head[5, k] < 0.1
        assert np.allclose(head[:4], cell_boxes(), atol=2 * m.outputs[0].scale)


def test_bare_yolo_is_pushed_and_verified(ultralytics_yolo, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("QDEPLOY_HOME", str(tmp_path / "device"))
    code, out, err = run_cli("push", ultralytics_yolo, "--target", "local", "--verify",
                             "--no-bench", "--reports", tmp_path / "reports")
    assert code == 0, err
    assert "imported" in err + out and ultralytics_yolo.name in err + out
    current = tmp_path / "device" / "current"
    assert mf.load(current).task.decoder == "yolov8"
    opts = PushOptions(remote_dir=str(tmp_path / "device"), reports_dir=tmp_path / "reports",
                       bench=False, verify=True)
    dep = next((tmp_path / "cache" / "qdeploy" / "imports").iterdir())
    [again] = push_many([targets.parse_target("local")], dep, opts)
    assert again.ok and again.unchanged, again.error
    [c] = again.verify
    assert c.ok and not c.scored and c.max_steps == 0 and len(c.outputs) == 1
