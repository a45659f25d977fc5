"""qrun info on models with several inputs and outputs, and the task a manifest records."""

from __future__ import annotations

import json

from qrun.model import manifest as mf
from qrun.model.runtime import make_interpreter

from tests.fixtures.deployments import make_deployment
from tests.fixtures.multi_io_models import model_deployment

DEEPLAB = "deeplabv3_mnv2_dm05_pascal_quant.tflite"
TENSOR_KEYS = {"name", "index", "shape", "dtype", "scale", "zero_point"}


def segment_deployment(directory):
    """Coral's DeepLab as a segment deployment: the manifest's task set with qrun.model.manifest.Task."""
    make_deployment(directory, {mf.INT8: DEEPLAB}, labels="pascal_voc_segmentation_labels.txt")
    manifest = mf.load(directory)
    manifest.task = mf.Task(mf.SEGMENT, labels=mf.LABELS, outputs={mf.MASK: 0},
                            decoder="argmax", source="option",
                            reason="--task segment: class id per pixel")
    mf.save(manifest, directory)
    return directory


def as_reported(details: dict) -> dict:
    """What info must say of one tensor, read straight from the runtime's details."""
    scale, zero_point = details["quantization"]
    return {"name": details["name"], "index": int(details["index"]),
            "shape": [int(n) for n in details["shape"]], "dtype": details["dtype"].__name__,
            "scale": float(scale), "zero_point": int(zero_point)}


def test_every_tensor_and_the_task_of_a_two_output_deployment(run_qrun, tmp_path,
                                                              two_head_classifier):
    heads = two_head_classifier
    task = mf.Task(mf.CLASSIFY, labels=mf.LABELS, outputs={mf.SCORES: heads["scores"]},
                   source="option", reason="scores are the 10-class softmax")
    folder = model_deployment(tmp_path / "two-head", heads["model"], mf.INT8, task,
                              labels=heads["labels"])
    out = run_qrun("info", "--model", folder, "--json")
    assert out.code == 0, out.err
    data = json.loads(out.out)
    assert data["task"] == {"kind": "classify", "labels": "labels",
                            "outputs": {"scores": heads["scores"]}, "decoder": None,
                            "params": {}, "source": "option",
                            "reason": "scores are the 10-class softmax"}
    [model] = data["models"]
    interp = make_interpreter(folder / heads["model"].name)
    assert model["inputs"] == [as_reported(d) for d in interp.get_input_details()]
    assert model["outputs"] == [as_reported(d) for d in interp.get_output_details()]
    assert [len(model[end]) for end in ("inputs", "outputs")] == [1, 2]
    assert all(set(t) == TENSOR_KEYS for t in model["inputs"] + model["outputs"])
    text = run_qrun("info", "--model", folder).out.splitlines()
    assert ("task: classify (scores: output {}; labels: labels; option: scores are the "
            "10-class softmax)".format(heads["scores"])) in text
    scores = model["outputs"][heads["scores"]]
    aux = model["outputs"][heads["aux"]]
    assert (f"  output {scores['name']}: [1, 10] uint8, scale {scores['scale']:.6g}, zero point "
            f"{scores['zero_point']} (output {heads['scores']}, tensor {scores['index']}; "
            "scores)") in text
    assert f"(output {heads['aux']}, tensor {aux['index']})" in "\n".join(text)


def test_two_input_bare_model_lists_both_inputs_and_no_task(run_qrun, two_input_model):
    data = json.loads(run_qrun("info", "--model", two_input_model, "--json").out)
    assert data["task"] is None
    [model] = data["models"]
    interp = make_interpreter(two_input_model)
    assert model["inputs"] == [as_reported(d) for d in interp.get_input_details()]
    assert sorted((t["name"], t["dtype"], t["shape"]) for t in model["inputs"]) == [
        ("serving_default_ids:0", "int32", [1, 4]),
        ("serving_default_values:0", "float32", [1, 8])]
    assert len(model["outputs"]) == 2
    text = run_qrun("info", "--model", two_input_model).out
    assert "task:" not in text
    assert "  input serving_default_ids:0: [1, 4] int32, not quantized (input " in text


def test_segment_task_of_deeplab(run_qrun, tmp_path):
    folder = segment_deployment(tmp_path / "deeplab")
    data = json.loads(run_qrun("info", "--model", folder, "--json").out)
    assert data["task"]["kind"] == "segment" and data["task"]["outputs"] == {"mask": 0}
    assert data["task"]["decoder"] == "argmax"
    assert data["task"]["reason"] == "--task segment: class id per pixel"
    [model] = data["models"]
    assert model["role"] == "int8"
    assert model["inputs"][0]["shape"] == [1, 513, 513, 3]
    text = run_qrun("info", "--model", folder).out
    assert ("task: segment (mask: output 0; decoder argmax; labels: labels; option: --task "
            "segment: class id per pixel)") in text
    assert "(output 0, tensor " in text and "; mask)" in text


def test_per_axis_quantization_is_reported(tiny_models):
    """A full-integer Conv2D's filter is quantized per output channel: info says so."""
    from qrun.info import tensor_info, tensor_line

    interp = make_interpreter(tiny_models["int8"])
    per_channel = [d for d in interp.get_tensor_details()
                   if len(d["quantization_parameters"]["scales"]) > 1]
    assert per_channel, "the int8 CNN has per-channel quantized filters"
    details = per_channel[0]
    reported = tensor_info(details)
    params = details["quantization_parameters"]
    assert reported["per_axis"] == {
        "axis": int(params["quantized_dimension"]),
        "scales": [float(s) for s in params["scales"]],
        "zero_points": [int(z) for z in params["zero_points"]]}
    assert len(reported["per_axis"]["scales"]) == details["shape"][
        reported["per_axis"]["axis"]]
    json.dumps(reported)  # as --json prints it
    line = tensor_line("input", 0, reported)
    assert f"per axis {reported['per_axis']['axis']} ({len(params['scales'])} scales " in line
    assert "per_axis" not in tensor_info(interp.get_input_details()[0])  # per-tensor: none


def test_schema_1_deployment_reports_the_classifier_task(run_qrun, deployment_dir):
    from tests.fixtures.deployments import write_schema_1

    write_schema_1(deployment_dir)
    data = json.loads(run_qrun("info", "--model", deployment_dir, "--json").out)
    assert data["task"]["kind"] == "classify" and data["task"]["outputs"] == {"scores": 0}
    assert {len(m["outputs"]) for m in data["models"]} == {1}
