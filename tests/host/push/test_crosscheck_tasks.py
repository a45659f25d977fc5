"""push --verify judges a detector by its detections, not by single raw values.

The Ultralytics-format YOLO fixture (tests/fixtures/yolo.py: a [1, 6, 16] int8 head whose
boxes and scores are known by construction) imported with three lit-cell images as its
reference inputs; `qrun verify` runs it for real, then its document is changed as another
device's kernels would change it: a few large single-value steps where no detection is
(must pass), or a detection gone (must fail, naming it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from qdeploy.modelimport.importer import import_model
from qdeploy.push import crosscheck
from qrun.measure import verify as device_verify
from qrun.model import manifest as mf
from tests.fixtures.yolo import ANCHORS, lit_cell

LIT = (0, 5, 10)  # the cell lit in each reference input


@pytest.fixture(scope="module")
def yolo_deployment(ultralytics_yolo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("yolo-verify")
    np.save(tmp / "cells.npy", np.stack([lit_cell(k) for k in LIT]))
    import_model(ultralytics_yolo, out=tmp / "dep", reference=tmp / "cells.npy")
    return tmp / "dep"


def changed(document: dict, change) -> dict:
    """The document with the int8 head's raw values [samples, 6, 16] passed through
    `change` (in place)."""
    [record] = document["variants"]
    [out] = record["outputs"]
    count = int(np.prod(out["shape"]))
    raw = np.stack([device_verify.decode(t, out["dtype"], count) for t in out["values"]])
    head = raw.reshape(len(raw), 6, ANCHORS).astype(np.int32)
    change(head)
    info = np.iinfo(out["dtype"])
    head = head.clip(info.min, info.max).astype(out["dtype"])
    out["values"] = [device_verify.encode(row.reshape(-1)) for row in head]
    return document


def verified(dep, document):
    host = crosscheck.host_side(dep, mf.load(dep), required=True)
    return crosscheck.check(document, host.samples, host.model, host.preprocess,
                            reference_sha256=host.reference_sha256, task=host.task,
                            names=host.names)


def test_large_single_value_steps_with_the_same_detections_pass(yolo_deployment):
    def kernels(head):
        head[0, 2, 3] -= 25  # a box narrows by 25 steps (of 72): 2.7 of its 8 pixels
        head[1, 1, 12] -= 20  # another moves up by 20 steps
        head[2, 5, 0] -= 1  # a score by one step (0.11: the head's one scale spans pixels)

    document = changed(device_verify.verify(yolo_deployment, device="cpu"), kernels)
    result = verified(yolo_deployment, document)
    [c] = result.comparisons
    assert c.max_steps >= 25 > crosscheck.DEFAULT_STEPS  # raw steps alone would fail it
    assert result.ok and c.ok and (c.agree, c.samples) == (3, 3)
    assert c.task["metric"] == "detection_agreement" and c.task["value"] == 1.0
    assert "48 of 48 detections match" in c.text() and "raw max |Δ|" in c.text()


def test_the_store_keeps_a_detectors_agreement_in_task_terms(yolo_deployment, tmp_path):
    """push --verify stores what the verdict prints: the share of detections that match
    (47 of 48), shown in `qdeploy report`'s agreement column as top-1 agreement is for a
    classifier (it was left empty: a detector has no score vector)."""
    from qdeploy.push.pipeline import store_verification
    from qdeploy.reports import store

    def lamp_goes_out(head):
        head[1, 4, 5] = -128

    document = changed(device_verify.verify(yolo_deployment, device="cpu"), lamp_goes_out)
    result = verified(yolo_deployment, document)
    store_verification(result, "pi", tmp_path)
    with store.open_store(tmp_path) as s:
        [v] = s.verifications()
    assert v.scored and v.agreement == pytest.approx(47 / 48) and not v.ok
    assert result.comparisons[0].stored_figures() == (pytest.approx(47 / 48), True)


def test_different_detections_fail_with_a_sentence_naming_them(yolo_deployment):
    def lamp_goes_out(head):
        head[1, 4, 5] = -128  # sample 1: the lamp at its lit cell scores nothing

    document = changed(device_verify.verify(yolo_deployment, device="cpu"), lamp_goes_out)
    result = verified(yolo_deployment, document)
    [c] = result.comparisons
    assert not result.ok and c.task["differing"] == [1] and c.agree == 2
    line = result.failure(crosscheck.DEFAULT_STEPS)
    assert line.startswith("the device's detections differ from the host's: int8 on cpu: ")
    assert "sample 1: 15 detections, the reference 16, lamp (0) 0.9" in line
    assert "(25,25)-(50,50)% unmatched" in line
    assert "tolerance" not in line  # not judged by raw steps


def test_qrun_verify_reads_a_detector_in_its_task_terms(yolo_deployment, run_qrun):
    text = run_qrun("verify", "--model", yolo_deployment, "--device", "cpu")
    assert text.code == 0, text.err
    assert "int8 on cpu: detections per sample 16 16 16" in text.out
    # Two variants (as the CPU int8 and the Edge TPU model on a device with a TPU): the
    # second is compared with the first in the task's terms.
    document = device_verify.verify(yolo_deployment, device="cpu")
    [record] = document["variants"]
    copy = {**json.loads(json.dumps(record)), "variant": "edgetpu"}

    def lamp_goes_out(head):
        head[1, 4, 5] = -128

    other = changed({"variants": [copy]}, lamp_goes_out)["variants"][0]
    task = mf.load(yolo_deployment).task
    variants = [record, other]
    device_verify.in_task_terms(variants, task, (32, 32))
    assert record["task_outputs"]["detections"] == [16, 16, 16]
    assert other["task_outputs"]["detections"] == [16, 15, 16]
    assert not other["agreement"]["ok"] and other["agreement"]["against"] == "int8"
    lines = device_verify.summary({"variants": variants, "reference": {"samples": 3}})
    assert "edgetpu on cpu against int8: 47 of 48 detections match" in lines
    assert lines.splitlines()[-1].endswith("(differs)")
