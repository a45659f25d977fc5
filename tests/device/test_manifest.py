"""A hand-edited or damaged manifest.json: one error line naming manifest.json, the field and
the fix, never a traceback, the image blamed, or scores computed from nonsense."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.deployments import V1_025, make_deployment, schema_1
from tests.paths import CORAL
from tests.fixtures.runner import one_error

CAT = CORAL / "cat.bmp"


def edit(directory, change) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def set_pre(key, value):
    return lambda d: d["preprocess"].__setitem__(key, value)


CASES = {
    "preprocess as a string": (lambda d: d.__setitem__("preprocess", "unit"),
                               "preprocess is 'unit'"),
    "mean not a number": (set_pre("mean", "abc"), "preprocess.mean is 'abc'"),
    "mean an empty list": (set_pre("mean", []), "preprocess.mean is []"),
    "std 0": (set_pre("std", 0), "preprocess.std is 0"),
    "one std of three 0": (set_pre("std", [128, 0, 128]), "preprocess.std is 0"),
    "color lower case": (set_pre("color", "rgb"), "preprocess.color is 'rgb'"),
    "color L on an RGB model": (set_pre("color", "L"), "the model input [1, 128, 128, 3] has 3"),
    "two means and color RGB": (set_pre("mean", [1, 2]), "disagree on the number of channels"),
    "two means on an RGB model": (lambda d: d["preprocess"].update(mean=[1, 2], color=None),
                                  "is for 2 channel(s)"),
    "artifacts a list": (lambda d: d.__setitem__("artifacts", []), "field artifacts is []"),
    "labels file a number": (lambda d: d["artifacts"]["labels"].__setitem__("file", 5),
                             "artifact labels has file 5"),
    "labels a number": (lambda d: d.__setitem__("labels", 5), "field labels is 5"),
    "inputs of numbers": (lambda d: d.__setitem__("inputs", [1, 2]), "field inputs[0] is 1"),
    "no outputs": (lambda d: d.__setitem__("outputs", []), "field outputs is []"),
    "output without dtype": (lambda d: d["outputs"][0].pop("dtype"),
                             "field outputs[0] has fields"),
    "output with an unknown key": (lambda d: d["outputs"][0].__setitem__("layout", "NHWC"),
                                   "field outputs[0] has fields"),
    "index a string": (lambda d: d["inputs"][0].__setitem__("index", "0"),
                       "inputs[0].index is '0', not an integer"),
    "per_axis without scales": (lambda d: d["outputs"][0].__setitem__("per_axis", {"axis": 0}),
                                "outputs[0].per_axis is {'axis': 0}"),
    "task a list": (lambda d: d.__setitem__("task", ["classify"]), "field task is ['classify']"),
    "task kind unknown": (lambda d: d["task"].__setitem__("kind", "classifier"),
                          "field task.kind is 'classifier', not one of classify, detect"),
    "task output out of range": (lambda d: d["task"]["outputs"].__setitem__("scores", 1),
                                 "field task.outputs.scores is 1, not the position"),
    "task params a list": (lambda d: d["task"].__setitem__("params", [1]),
                           "field task.params is [1], not an object"),
    "schema 1 input a list": (lambda d: d.update(schema_1(d), input=[1, 2]),
                              "field input is [1, 2]"),
    "schema_version a string": (lambda d: d.__setitem__("schema_version", "1"),
                                "schema_version '1', not a number"),
    "converter a list": (lambda d: d.__setitem__("converter", [1]), "field converter is [1]"),
    "source model a number": (lambda d: d.__setitem__("converter", {"source_model": 3}),
                              "field converter.source_model is 3, not a string"),
    "source shape of strings": (lambda d: d.__setitem__("converter",
                                                        {"source_input_shape": ["a"]}),
                                "converter.source_input_shape is ['a']"),
    "compiled a string": (lambda d: d.__setitem__("compiled", "yes"), "field compiled is 'yes'"),
    "min_runtime true": (lambda d: d.__setitem__("compiled", {"min_runtime": True}),
                         "field compiled.min_runtime is True, not an integer"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_manifest_is_one_line_naming_the_field(run_qrun, tmp_path, name):
    change, needle = CASES[name]
    deploy = make_deployment(tmp_path / "deploy", {"int8": f"{V1_025}.tflite"})
    assert run_qrun("classify", CAT, "--model", deploy).code == 0  # good before the edit
    edit(deploy, change)
    for command in (("classify", CAT), ("bench", "--runs", 1), ("verify",)):
        out = run_qrun(*command, "--model", deploy)
        one_error(out, "manifest.json", needle, "re-run qdeploy convert")


def test_per_channel_preprocess_that_fits_is_accepted(run_qrun, tmp_path):
    deploy = make_deployment(tmp_path / "deploy", {"int8": f"{V1_025}.tflite"})
    edit(deploy, set_pre("mean", [127, 128, 129]))
    out = run_qrun("classify", CAT, "--model", deploy, "--top-k", 2)
    assert out.code == 0, out.err


def web_app_dir(tmp_path):
    """A real model file in a folder that also holds another tool's manifest.json."""
    import shutil

    folder = tmp_path / "webdir"
    folder.mkdir()
    shutil.copy(CORAL / f"{V1_025}.tflite", folder)
    (folder / "manifest.json").write_text('{"name": "My PWA", "start_url": "/", "icons": []}')
    return folder


def test_model_file_beside_a_foreign_manifest_runs_as_a_bare_model(run_qrun, tmp_path):
    folder = web_app_dir(tmp_path)
    labels = CORAL / "imagenet_labels.txt"
    out = run_qrun("classify", CAT, "--model", folder / f"{V1_025}.tflite", "--labels", labels,
                   "--json")
    assert out.code == 0, out.err
    bare = run_qrun("classify", CAT, "--model", CORAL / f"{V1_025}.tflite", "--labels", labels,
                    "--json")
    assert json.loads(out.out)["results"] == json.loads(bare.out)["results"]
    info = run_qrun("info", "--model", folder / f"{V1_025}.tflite")
    assert info.code == 0, info.err


def test_foreign_manifest_is_still_refused_for_a_directory(run_qrun, tmp_path):
    folder = web_app_dir(tmp_path)
    one_error(run_qrun("classify", CAT, "--model", folder), "no schema_version")


def test_broken_qdeploy_manifest_beside_a_model_file_is_still_refused(run_qrun, tmp_path):
    deploy = make_deployment(tmp_path / "deploy", {"int8": f"{V1_025}.tflite"})
    edit(deploy, set_pre("std", 0))
    one_error(run_qrun("classify", CAT, "--model", deploy / f"{V1_025}.tflite"),
              "manifest.json", "preprocess.std is 0")


# converter and compiled as `qdeploy convert` and `qdeploy compile` write them.
CONVERTER = {"tool": "tf.lite.TFLiteConverter.from_saved_model", "tensorflow": "2.16.1",
             "optimizations": ["DEFAULT"], "supported_ops": ["TFLITE_BUILTINS_INT8"],
             "inference_io_type": "uint8", "batch_fixed_to_1": True,
             "source_input_shape": [None, 28, 28], "source_model": "mnist.keras",
             "source_kind": "keras"}
COMPILED = {"compiler_version": "16.0.384591198", "min_runtime": 14, "edgetpu_subgraphs": 1,
            "ops_on_edgetpu": 7, "ops_on_cpu": 0, "log": None}


def test_converter_and_compiled_are_records_and_the_json_stays_as_written(tmp_path):
    from qrun.model import manifest as mf

    deploy = make_deployment(tmp_path / "deploy", {"int8": f"{V1_025}.tflite"})
    plain = (deploy / "manifest.json").read_text()
    assert json.loads(plain)["converter"] == {} and json.loads(plain)["compiled"] is None
    mf.save(mf.load(deploy), deploy)
    assert (deploy / "manifest.json").read_text() == plain  # nothing recorded: nothing added

    newer = {**CONVERTER, "calibration_method": "minmax"}  # a key a newer qdeploy writes
    data = json.loads(plain) | {"converter": newer, "compiled": {**COMPILED, "seconds": 2.5}}
    written = json.dumps(data, indent=2) + "\n"  # as qrun.model.manifest.save formats it
    (deploy / "manifest.json").write_text(written)
    m = mf.load(deploy)
    assert m.converter.source_model == "mnist.keras" and m.converter.batch_fixed_to_1 is True
    assert m.converter.source_input_shape == [None, 28, 28]
    assert m.converter.extra == {"calibration_method": "minmax"}
    assert m.compiled.ops_on_edgetpu == 7 and m.compiled.log is None
    assert m.compiled.extra == {"seconds": 2.5}
    mf.save(m, deploy)
    assert (deploy / "manifest.json").read_text() == written  # same bytes, same key order


def test_a_partial_converter_keeps_only_what_it_records():
    from qrun.model.manifest import Compiled, Converter

    assert Converter.from_dict({"source_model": "m.keras"}).to_dict() == {
        "source_model": "m.keras"}
    assert Converter().to_dict() == {}
    assert Compiled(compiler_version="16.0").to_dict() == {
        "compiler_version": "16.0", "min_runtime": None, "edgetpu_subgraphs": None,
        "ops_on_edgetpu": None, "ops_on_cpu": None, "log": None}


def test_tensor_spec_from_runtime_details():
    import numpy as np
    from qrun.model import runtime
    from qrun.model.tensors import TensorSpec

    interpreter = runtime.make_interpreter(CORAL / f"{V1_025}.tflite")
    spec = TensorSpec.from_details(interpreter.get_input_details()[0])
    assert spec == TensorSpec([1, 128, 128, 3], "uint8", 0.0078125, 128)
    assert type(spec.shape[0]) is int and type(spec.zero_point) is int
    assert type(spec.scale) is float
    plain = TensorSpec.from_details({"shape": np.array([1, 10]), "dtype": np.float32})
    assert plain == TensorSpec([1, 10], "float32", 0.0, 0)


def test_tensor_spec_records_name_index_and_per_axis_quantization():
    import numpy as np
    from qrun.model import runtime
    from qrun.model.tensors import PerAxis, TensorSpec

    interpreter = runtime.make_interpreter(CORAL / f"{V1_025}.tflite")
    details = interpreter.get_input_details()[0]
    spec = TensorSpec.from_details(details)
    assert spec.name == details["name"] and spec.name
    assert spec.index == details["index"]
    assert spec.per_axis is None and "per_axis" not in spec.to_dict()
    channels = {"shape": np.array([1, 3]), "dtype": np.int8, "index": 7, "name": "w",
                "quantization": (0.0, 0),
                "quantization_parameters": {"scales": np.array([0.5, 0.25, 0.125]),
                                            "zero_points": np.array([0, 0, 0]),
                                            "quantized_dimension": 1}}
    per = TensorSpec.from_details(channels)
    assert per.per_axis == PerAxis(1, (0.5, 0.25, 0.125), (0, 0, 0)) and per.quantized
    assert per.to_dict()["per_axis"] == {"axis": 1, "scales": [0.5, 0.25, 0.125],
                                         "zero_points": [0, 0, 0]}


def test_schema_1_manifest_is_migrated_in_memory(tmp_path):
    from qrun.model import manifest as mf

    deploy = make_deployment(tmp_path / "deploy", {"int8": f"{V1_025}.tflite"})
    new = mf.load(deploy)
    old_json = schema_1(json.loads((deploy / "manifest.json").read_text()))
    assert "inputs" not in old_json and old_json["schema_version"] == 1
    old = mf.Manifest.from_dict(old_json)
    assert old.inputs == new.inputs and old.outputs == new.outputs
    assert old.task == mf.Task(mf.CLASSIFY, labels=mf.LABELS, outputs={mf.SCORES: 0})
    assert old.input == new.input and old.output == new.output
    assert old.artifacts == new.artifacts and old.preprocess == new.preprocess
    written = old.to_dict()  # migrated: written back as schema 2
    assert written["schema_version"] == 2 and written["task"]["kind"] == "classify"
    assert mf.Manifest.from_dict(written).outputs == new.outputs


def test_schema_2_round_trip_keeps_every_tensor_and_the_task():
    from qrun.model import manifest as mf
    from qrun.model.preprocess import Preprocess
    from qrun.model.tensors import PerAxis, TensorSpec

    outputs = [TensorSpec([1, 10, 4], "float32", name="boxes", index=5),
               TensorSpec([1, 10], "float32", name="classes", index=6),
               TensorSpec([1, 10], "float32", name="scores", index=7),
               TensorSpec([1], "float32", name="count", index=8),
               TensorSpec([1, 3], "int8", 0.0, 0, name="w", index=9,
                          per_axis=PerAxis(1, (0.5, 0.25, 0.125), (0, 1, 2)))]
    task = mf.Task(mf.DETECT, labels=mf.LABELS, decoder="ssd_postprocess",
                   outputs={mf.BOXES: 0, mf.CLASSES: 1, mf.SCORES: 2, mf.COUNT: 3},
                   params={"max_detections": 10}, source="graph", reason="SSD")
    m = mf.Manifest(inputs=[TensorSpec([1, 64, 64, 3], "uint8", 0.0078125, 128, "image", 0),
                            TensorSpec([1, 2], "float32", name="anchors", index=1)],
                    outputs=outputs, task=task, preprocess=Preprocess())
    back = mf.Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back.task == task and back.outputs == outputs
    assert [t.name for t in back.outputs] == ["boxes", "classes", "scores", "count", "w"]
    assert [t.index for t in back.inputs] == [0, 1]
    assert back.output is back.outputs[0]  # the first role the task names


def test_qrun_reads_a_schema_1_deployment_as_it_reads_schema_2(run_qrun, tmp_path):
    from tests.fixtures.deployments import write_schema_1

    new = make_deployment(tmp_path / "new", {"int8": f"{V1_025}.tflite"}, reference=True)
    old = make_deployment(tmp_path / "old", {"int8": f"{V1_025}.tflite"}, reference=True)
    write_schema_1(old)
    assert json.loads((old / "manifest.json").read_text())["schema_version"] == 1
    for command in (("classify", CAT, "--json"), ("verify", "--json", "-")):
        a, b = run_qrun(*command, "--model", new), run_qrun(*command, "--model", old)
        assert a.code == 0 and b.code == 0, (a.err, b.err)
        key = "results" if command[0] == "classify" else "variants"
        got_a, got_b = json.loads(a.out)[key], json.loads(b.out)[key]
        if key == "variants":
            got_a, got_b = ([v["outputs"] for v in got] for got in (got_a, got_b))
        assert got_a == got_b
