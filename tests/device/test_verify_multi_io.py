"""`qrun verify` on models with several inputs and outputs (tests/fixtures/multi_io.py).

A seeded TF model with two uint8 inputs and three outputs (a score vector, a box-like
[1, 5, 4], an integer map), and one with two float32 outputs and no score vector, both
converted by TFLiteConverter; reference inputs are an .npz, one raw array per input.
What verify returns is checked against the same model run here input by input.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from qrun.measure import reference
from qrun.measure import verify as device_verify

from tests.fixtures.multi_io import SAMPLES
from tests.fixtures.tflite_models import specs_of


def _direct_outputs(model, arrays) -> list:
    """Every output of every sample, raw, running `model` with the runtime directly."""
    from qrun.model.runtime import make_interpreter

    interp = make_interpreter(model)
    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    rows = [[] for _ in outputs]
    for n in range(len(arrays[0])):
        for details, array in zip(inputs, arrays):
            interp.set_tensor(details["index"], array[n].reshape(details["shape"]))
        interp.invoke()
        for row, details in zip(rows, outputs):
            row.append(interp.get_tensor(details["index"]).reshape(-1).copy())
    return [np.stack(r) for r in rows]


def _decoded(out: dict) -> np.ndarray:
    count = int(np.prod(out["shape"]))
    return np.stack([device_verify.decode(t, out["dtype"], count) for t in out["values"]])


def _error_lines(outcome) -> list:
    return [ln for ln in outcome.err_lines if ln.startswith("error:")]


def test_verify_feeds_every_input_and_records_every_output(run_qrun, multi_io_deployment):
    out = run_qrun("verify", "--model", multi_io_deployment, "--device", "cpu", "--json", "-")
    assert out.code == 0, out.err
    document = json.loads(out.out)
    assert document["schema_version"] == 2
    assert document["reference"]["samples"] == SAMPLES and document["reference"]["inputs"] == 2
    [int8] = document["variants"]
    model = multi_io_deployment / "model_int8.tflite"
    _, outputs = specs_of(model)
    # Every output, in the interpreter's order, with its spec.
    assert [(o["name"], o["index"], o["dtype"], o["shape"], o["scale"], o["zero_point"])
            for o in int8["outputs"]] == \
        [(s.name, s.index, s.dtype, s.shape, s.scale, s.zero_point) for s in outputs]
    assert sorted(o["shape"] for o in int8["outputs"]) == [[1, 5, 4], [1, 8, 8], [1, 10]]
    # The values are what the model computes from the .npz arrays fed input by input.
    arrays = reference.load(multi_io_deployment / reference.NPZ_NAME).arrays
    direct = _direct_outputs(model, arrays)
    for got, expected in zip(int8["outputs"], direct):
        assert np.array_equal(_decoded(got), expected)
    # ... and the second input is really fed: without it the scores are others.
    zeroed = _direct_outputs(model, [arrays[0], np.zeros_like(arrays[1])])
    position = next(i for i, o in enumerate(int8["outputs"]) if o["shape"] == [1, 10])
    assert not np.array_equal(zeroed[position], direct[position])
    # Top-1 only for the score vector the task names.
    assert [("top1" in o) for o in int8["outputs"]] == [i == position for i in range(3)]
    scores = int8["outputs"][position]
    assert scores["top1"] == [int(np.argmax(row)) for row in direct[position]]

    text = run_qrun("verify", "--model", multi_io_deployment, "--device", "cpu")
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    tops = " ".join(map(str, scores["top1"]))
    assert lines[0] == f"int8 on cpu: top-1 {tops} (output {position} '{scores['name']}')"
    assert lines[1].startswith(f"int8 on cpu: {SAMPLES} samples through output(s) 0 '")
    assert all(f"'{o['name']}' {o['dtype']} {o['shape']}" in lines[1] for o in int8["outputs"])


def test_outputs_without_a_score_vector_have_no_top1(run_qrun, no_scores_deployment):
    out = run_qrun("verify", "--model", no_scores_deployment, "--device", "cpu", "--json", "-")
    assert out.code == 0, out.err
    [int8] = json.loads(out.out)["variants"]
    assert [o["dtype"] for o in int8["outputs"]] == ["float32", "float32"]
    assert not any("top1" in o for o in int8["outputs"])
    text = run_qrun("verify", "--model", no_scores_deployment, "--device", "cpu")
    assert text.code == 0 and "top-1" not in text.out
    assert text.out.startswith(f"int8 on cpu: {SAMPLES} samples through output(s) 0 '")


def _bad_npz(arrays: list) -> dict:
    return {f"input_{i}": a for i, a in enumerate(arrays)}


BAD_REFERENCES = {
    # name: (how to make the file from the good arrays, what the error says)
    "a missing input": (lambda a: _bad_npz(a[:1]),
                        ("holds 1 input array(s), the model has 2 inputs; it needs input_0, "
                         "input_1")),
    "one input too many": (lambda a: _bad_npz([*a, a[0]]),
                           "holds 3 input array(s), the model has 2 inputs"),
    "a wrong dtype": (lambda a: _bad_npz([a[0].astype(np.float32), a[1]]),
                      ("input_0 is float32 [8, 8], model input 0 ('serving_default_extra:0') "
                       "takes uint8 [N, 8]")),
    "a wrong shape": (lambda a: _bad_npz([a[0], a[1].transpose(0, 3, 1, 2)]),
                      "input_1 is uint8 [8, 3, 16, 16], model input 1"),
    "an input named otherwise": (lambda a: {"input_0": a[0], "image": a[1]},
                                 ("holds arrays ['image', 'input_0']; it needs input_0, "
                                  "input_1")),
}


@pytest.mark.parametrize("case", BAD_REFERENCES)
def test_an_npz_that_does_not_fit_the_inputs_is_one_error(case, run_qrun, multi_io_deployment,
                                                         tmp_path):
    make, says = BAD_REFERENCES[case]
    arrays = reference.load(multi_io_deployment / reference.NPZ_NAME).arrays
    path = tmp_path / "bad.npz"
    np.savez(path, **make(arrays))
    out = run_qrun("verify", "--model", multi_io_deployment, "--inputs", path, "--json", "-")
    assert out.code == 1 and out.out == ""
    [line] = _error_lines(out)
    assert line == out.err_lines[-1] and "Traceback" not in out.err
    assert says in line and str(path) in line


def test_an_npy_for_a_model_with_two_inputs_is_one_error(run_qrun, multi_io_deployment,
                                                         tmp_path):
    path = tmp_path / "pixels.npy"
    np.save(path, np.zeros((2, 16, 16, 3), np.uint8))
    out = run_qrun("verify", "--model", multi_io_deployment, "--inputs", path)
    assert out.code == 1 and out.out == ""
    [line] = _error_lines(out)
    assert f"{path} is an .npy (samples of one input), but the model has 2 inputs" in line
    assert "give an .npz with input_0, input_1" in line
