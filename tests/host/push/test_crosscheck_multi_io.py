"""`qdeploy push --verify` on models with several inputs and outputs.

The device's document is what `qrun verify` really returns on the multi_io fixtures
(tests/fixtures/multi_io.py); a device that computes something else is made by moving
one output of one sample by a known number of its quantization steps, so the expected
figures are known by construction.
"""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
from qdeploy.push import crosscheck
from qdeploy.push.fleet import push_many
from qdeploy.push.options import PushOptions
from qdeploy.remote import targets
from qdeploy.reports import store
from qrun.model import manifest as qm
from qrun.measure import verify as device_verify
from qrun.errors import UserError

from tests.fixtures.multi_io import SAMPLES


@pytest.fixture(scope="module")
def multi_io_document(multi_io_deployment):
    return device_verify.verify(multi_io_deployment, device="cpu")


def _check(directory, document, **kw):
    host = crosscheck.host_side(directory, qm.load(directory))
    return crosscheck.check(document, host.samples, host.model, host.preprocess,
                            task=host.task, **kw)


def _moved(document, position: int, sample: int, steps: int) -> dict:
    """The document with output `position` of `sample` moved by `steps` of its own
    quantization (or by `steps` FLOAT_STEPs for a float output), at its first element
    where that stays in range."""
    moved = copy.deepcopy(document)
    out = moved["variants"][0]["outputs"][position]
    count = int(np.prod(out["shape"]))
    values = device_verify.decode(out["values"][sample], out["dtype"], count)
    if np.issubdtype(values.dtype, np.floating):
        values = values + np.float32(steps * crosscheck.FLOAT_STEP)
    else:
        room = np.flatnonzero(values.astype(int) + steps <= np.iinfo(values.dtype).max)
        values = values.copy()
        values[room[0]] += steps
    out["values"][sample] = device_verify.encode(values)
    return moved


def _position(document, shape) -> int:
    return next(i for i, o in enumerate(document["variants"][0]["outputs"])
                if o["shape"] == shape)


def test_same_model_agrees_exactly_on_every_output(multi_io_deployment, multi_io_document):
    result = _check(multi_io_deployment, multi_io_document)
    [c] = result.comparisons
    assert result.ok and c.ok and (c.agree, c.samples, c.max_steps) == (SAMPLES, SAMPLES, 0.0)
    assert len(c.outputs) == 3 and all(o.max_abs_diff == 0 for o in c.outputs)
    scores = _position(multi_io_document, [1, 10])
    assert [o.scored for o in c.outputs] == [i == scores for i in range(3)]
    assert c.outputs[scores].agree == SAMPLES
    assert f"int8 on cpu: top-1 {SAMPLES}/{SAMPLES}, max |Δ| 0 (0 steps, output 0 '" in c.text()
    record = c.to_dict()
    assert record["agreement"] == 1.0 and len(record["outputs"]) == 3
    assert record["outputs"][scores]["name"] == c.outputs[scores].name


@pytest.mark.parametrize("steps, ok", [(3, True), (40, False)])
def test_one_output_moved_by_n_steps_is_measured_and_named(multi_io_deployment,
                                                           multi_io_document, steps, ok):
    """The map output of sample 3 moved by `steps` of its scale: max |Δ| is exactly that
    many steps, in that output, on that sample; over the tolerance (16) the variant fails."""
    position = _position(multi_io_document, [1, 8, 8])
    document = _moved(multi_io_document, position, 3, steps)
    result = _check(multi_io_deployment, document)
    [c] = result.comparisons
    name = c.outputs[position].name
    assert (c.ok, c.worst_output, c.worst_sample, c.max_steps) == (ok, position, 3, steps)
    assert c.agree == SAMPLES  # the scores did not move
    assert [o.ok for o in c.outputs] == [ok or i != position for i in range(3)]
    scale = multi_io_document["variants"][0]["outputs"][position]["scale"]
    assert c.max_abs_diff == pytest.approx(steps * scale, rel=1e-5)
    assert f"({steps:g} steps, output {position} '{name}', sample 3)" in c.text()
    if not ok:
        line = result.failure(crosscheck.DEFAULT_STEPS)
        assert f"output {position} '{name}'" in line and "tolerance 16 steps" in line


def test_a_flipped_top1_fails_on_the_score_vector(multi_io_deployment, multi_io_document):
    """Sample 0's scores as the host computes them, the device's top class moved to the
    class the host ranks last: top-1 7/8, the scores output fails."""
    position = _position(multi_io_document, [1, 10])
    document = copy.deepcopy(multi_io_document)
    out = document["variants"][0]["outputs"][position]
    values = device_verify.decode(out["values"][0], out["dtype"], 10).copy()
    values[np.argmin(values)] = 255
    out["values"][0] = device_verify.encode(values)
    [c] = _check(multi_io_deployment, document).comparisons
    assert not c.ok and c.agree == SAMPLES - 1 and c.worst_output == position
    assert c.outputs[position].flipped == [0]
    assert c.text().startswith(f"int8 on cpu: top-1 {SAMPLES - 1}/{SAMPLES}, ")


def test_outputs_without_a_score_vector_pass_without_top1(no_scores_deployment):
    document = device_verify.verify(no_scores_deployment, device="cpu")
    result = _check(no_scores_deployment, document)
    [c] = result.comparisons
    assert result.ok and not c.scored and c.agree == SAMPLES and c.max_steps == 0
    assert all(o.agree is None and o.step == crosscheck.FLOAT_STEP for o in c.outputs)
    assert c.text().startswith(f"int8 on cpu: {SAMPLES} samples, no score vector, max |Δ| 0 ")
    # A float output moved by 20 FLOAT_STEPs: fails, named.
    moved = _check(no_scores_deployment, _moved(document, 1, 5, 20))
    [c] = moved.comparisons
    assert not c.ok and (c.worst_output, c.worst_sample) == (1, 5)
    assert c.max_steps == pytest.approx(20, abs=0.01)


def test_a_document_of_an_older_runner_is_refused(multi_io_deployment, multi_io_document):
    old = {**multi_io_document, "schema_version": 1}
    with pytest.raises(UserError, match=r"the runner on the device is older than this qdeploy "
                                        r"\(its qrun verify writes schema 1.*reinstalls it"):
        _check(multi_io_deployment, old)


def test_a_device_model_with_other_outputs_is_one_error(multi_io_deployment,
                                                        multi_io_document):
    fewer = copy.deepcopy(multi_io_document)
    fewer["variants"][0]["outputs"].pop()
    with pytest.raises(UserError, match="the device's model has 2 output"):
        _check(multi_io_deployment, fewer)


def test_an_npy_reference_for_two_inputs_is_refused_before_the_push(multi_io_deployment,
                                                                    tmp_path):
    directory = shutil.copytree(multi_io_deployment, tmp_path / "dep")
    npy = directory / "reference_inputs.npy"
    np.save(npy, np.zeros((2, 16, 16, 3), np.uint8))
    manifest = qm.load(directory)
    manifest.artifacts[qm.REFERENCE] = qm.artifact_for(npy)
    qm.save(manifest, directory)
    with pytest.raises(UserError, match="is an .npy .* but the model has 2 inputs"):
        crosscheck.host_side(directory, qm.load(directory), required=True)


def test_local_push_verifies_every_output_and_stores_the_figures(multi_io_deployment,
                                                                  tmp_path):
    opts = PushOptions(remote_dir=str(tmp_path / "device"), reports_dir=tmp_path / "reports",
                       bench=False, verify=True)
    [result] = push_many([targets.parse_target("local")], multi_io_deployment, opts)
    assert result.ok, result.error
    [c] = result.verify
    assert c.ok and len(c.outputs) == 3 and (c.agree, c.samples, c.max_steps) == (8, 8, 0.0)
    with store.open_store(tmp_path / "reports") as s:
        [v] = s.verifications("local")
        assert (v.samples, v.agreement, v.max_steps, v.ok) == (8, 1.0, 0.0, True)


def ssd_task_and_specs(detections: int = 3):
    from qrun.model import manifest as mf
    from qrun.model.tensors import TensorSpec

    specs = [TensorSpec([1, detections, 4], "float32"), TensorSpec([1, detections], "float32"),
             TensorSpec([1, detections], "float32"), TensorSpec([1], "float32")]
    task = mf.Task(mf.DETECT, decoder="ssd_postprocess",
                   outputs={mf.BOXES: 0, mf.CLASSES: 1, mf.SCORES: 2, mf.COUNT: 3})
    return task, specs


def test_detections_past_count_are_padding_and_not_compared():
    from qdeploy.push.crosscheck import compare_output, drop_padding

    task, specs = ssd_task_and_specs()
    rng = np.random.default_rng(0)
    host = [rng.random((2, 12)), rng.random((2, 3)), rng.random((2, 3)), np.array([[1.0], [2.0]])]
    device = [h.copy() for h in host]
    device[0][0, 4:] = 1e38  # sample 0: detections 1 and 2 are padding (count 1)
    device[2][1, 2] = np.nan  # sample 1: detection 2 is padding (count 2)
    h, d = drop_padding(task, specs, host, device)
    for i, spec in enumerate(specs):
        assert compare_output(h[i], d[i], 0.0).max_steps == 0, i
    assert np.array_equal(h[0][0, :4], host[0][0, :4])  # the filled detection is kept
    # Without the task, the padding is compared, and fails.
    assert not compare_output(host[0], device[0], 0.0).ok


def test_a_different_count_still_fails_on_the_count_output():
    from qdeploy.push.crosscheck import compare_output, drop_padding

    task, specs = ssd_task_and_specs()
    host = [np.zeros((1, 12)), np.zeros((1, 3)), np.full((1, 3), 0.5), np.array([[2.0]])]
    device = [h.copy() for h in host]
    device[3][0, 0] = 1.0
    h, d = drop_padding(task, specs, host, device)
    assert not compare_output(h[3], d[3], 0.0).ok
    assert np.all(d[2][0, 1:] == 0) and d[2][0, 0] == 0.5  # compared up to the smaller count
