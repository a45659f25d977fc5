"""qrun bench feeds every input, and its report's model records task and input/output counts."""

from __future__ import annotations

import json

import numpy as np
from qrun.model import manifest as mf
from qrun.measure import report_contract
from qrun.model.runtime import make_interpreter

from tests.fixtures.deployments import V1_025, make_deployment
from tests.fixtures.multi_io_models import model_deployment
from tests.paths import CORAL

RUNS = ("--runs", "3", "--warmup", "1")


def filled(model):
    """An interpreter of `model` after fill_inputs and one invoke, and what it was fed."""
    from qrun.measure.bench import fill_inputs

    interp = make_interpreter(model)
    fill_inputs(interp)
    fed = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_input_details()}
    interp.invoke()
    return interp, fed


def test_fill_inputs_sets_every_input_with_values_of_its_dtype(two_input_model):
    interp, fed = filled(two_input_model)
    details = {d["name"]: d for d in interp.get_input_details()}
    assert set(fed) == {"serving_default_values:0", "serving_default_ids:0"}
    for name, data in fed.items():
        assert data.dtype == details[name]["dtype"]
        assert list(data.shape) == list(details[name]["shape"])
    values, ids = fed["serving_default_values:0"], fed["serving_default_ids:0"]
    assert len(np.unique(values)) == values.size and 0 <= values.min() < values.max() < 1
    assert ids.min() < 0 < ids.max()  # drawn over the whole int32 range
    outputs = {tuple(d["shape"]): interp.get_tensor(d["index"])
               for d in interp.get_output_details()}
    # The model doubles `values` and clips `ids` at 0: both inputs were really fed.
    np.testing.assert_array_equal(outputs[(1, 8)], values * 2)
    np.testing.assert_array_equal(outputs[(1, 4)], np.maximum(ids, 0))
    _, again = filled(two_input_model)  # seed 0: the same values every run
    assert all(np.array_equal(fed[n], again[n]) for n in fed)


def test_bench_of_a_two_input_bare_model(run_qrun, two_input_model):
    out = run_qrun("bench", "--model", two_input_model, *RUNS, "--json", "-")
    assert out.code == 0, out.err
    report = report_contract.validate(json.loads(out.out))
    model = report["model"]
    assert (model["task"], model["input_count"], model["output_count"]) == (None, 2, 2)
    assert model["variant"] == "float" and report["latency_us"]["count"] == 3
    text = run_qrun("bench", "--model", two_input_model, *RUNS).out
    assert "task:    not recorded (a bare model file), 2 inputs, 2 outputs" in text


def test_bench_records_the_manifests_task(run_qrun, tmp_path, two_head_classifier):
    heads = two_head_classifier
    folder = model_deployment(tmp_path / "two-head", heads["model"], mf.INT8,
                              mf.Task(mf.CLASSIFY, outputs={mf.SCORES: heads["scores"]}))
    report = json.loads(run_qrun("bench", "--model", folder, *RUNS, "--json", "-").out)
    model = report["model"]
    assert (model["task"], model["input_count"], model["output_count"]) == ("classify", 1, 2)


def test_deeplab_segment_deployment_compare(run_qrun, tmp_path):
    """Every variant of a segment deployment is reported with its task (DeepLab: 513x513)."""
    folder = make_deployment(tmp_path / "deeplab",
                             {mf.INT8: "deeplabv3_mnv2_dm05_pascal_quant.tflite",
                              mf.EDGETPU: "deeplabv3_mnv2_dm05_pascal_quant_edgetpu.tflite"},
                             labels="pascal_voc_segmentation_labels.txt")
    manifest = mf.load(folder)
    manifest.task = mf.Task(mf.SEGMENT, outputs={mf.MASK: 0})
    mf.save(manifest, folder)
    out = run_qrun("bench", "--model", folder, "--compare", "--runs", "2", "--warmup", "0",
                   "--json", "-")
    assert out.code == 0, out.err
    reports = report_contract.reports_in(json.loads(out.out))
    assert reports and {r["model"]["task"] for r in reports} == {"segment"}
    assert {(r["model"]["input_count"], r["model"]["output_count"]) for r in reports} == {(1, 1)}


def test_a_coral_file_in_its_deployment_reports_classify(run_qrun, deployment_dir):
    model = deployment_dir / f"{V1_025}.tflite"
    report = json.loads(run_qrun("bench", "--model", model, "--device", "cpu", *RUNS, "--json",
                                 "-").out)
    assert report["model"]["task"] == "classify"
    bare = json.loads(run_qrun("bench", "--model", CORAL / f"{V1_025}.tflite", "--device", "cpu",
                               *RUNS, "--json", "-").out)
    assert (bare["model"]["task"], bare["model"]["input_count"]) == (None, 1)
