"""`qdeploy push` end to end on the Pi in a box (emulated arm64 Debian bookworm over SSH).

The box starts with no runner: the push must install qrun into a venv there (pip on arm64,
pulling numpy/pillow/ai-edge-litert/typer for aarch64), bench, and bring the report home;
then qrun on the device classifies the parrot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import CORAL

pytestmark = pytest.mark.slow

MODEL = "mobilenet_v2_1.0_224_inat_bird_quant"
LABELS = "inat_bird_labels.txt"
PUSH_TIMEOUT = 1800  # emulated pip install of the runner and its dependencies, then bench


def bird_deployment(directory: Path) -> Path:
    """A deployment of Coral's iNat birds MobileNet v2 (int8 only), as qdeploy convert writes
    one: model, labels, reference inputs (Coral's test images at 224x224) and a manifest with
    the tensor specs read from the model."""
    from qrun.model import manifest as qm

    from tests.fixtures.deployments import make_deployment

    return make_deployment(directory, {qm.INT8: f"{MODEL}.tflite"}, labels=LABELS,
                           reference=True)


@pytest.fixture(scope="module")
def pushed(pibox, tmp_path_factory):
    """`qdeploy push` (the CLI) of the bird deployment to the box, with a 3-run bench."""
    tmp = tmp_path_factory.mktemp("pibox-push")
    dep = bird_deployment(tmp / "qdeploy-out")
    (tmp / "empty-ssh-config").write_text("")
    reports = tmp / "reports"
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    argv = [sys.executable, "-m", "qdeploy", "push", str(dep),
            "--target", f"{pibox.user}@{pibox.host}:{pibox.port}",
            "--identity", str(pibox.key), "--known-hosts", str(pibox.known_hosts),
            "--ssh-config", str(tmp / "empty-ssh-config"), "--reports", str(reports),
            "--bench-runs", "3"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=PUSH_TIMEOUT)
    return done, reports


def test_push_installs_the_runner_on_the_box_and_brings_the_bench_report_home(pushed, pibox):
    done, reports = pushed
    assert done.returncode == 0, f"qdeploy push failed:\n{done.stdout}\n{done.stderr}"
    # The runner was not there before: the push put qrun (and only qrun of ours) in a venv.
    site = pibox.run("ls -d ~/qdeploy/venv/lib/python3.11/site-packages/*.dist-info").stdout
    assert "/qrun-" in site and "/qdeploy-" not in site
    assert pibox.run("~/qdeploy/venv/bin/qrun --version").stdout.strip()
    found = [json.loads(p.read_text()) for p in reports.rglob("*.json")]
    benches = [r for r in found if r.get("kind") == "qrun-bench"]
    assert len(benches) == 1, sorted(str(p) for p in reports.rglob("*"))
    report = benches[0]
    assert report["device"]["used"] == "cpu"
    assert report["latency_us"]["count"] == 3
    assert "aarch64" in json.dumps(report["host"])


def test_the_box_computes_what_the_host_computes(pushed):
    """push --verify (on by default with the bench): arm64 kernels against x86 XNNPACK on the
    reference images agree on every top-1; their outputs differ by a few quantization steps."""
    import sqlite3

    from qdeploy.reports import store
    from qdeploy.push import crosscheck as verify

    done, reports = pushed
    assert done.returncode == 0, f"qdeploy push failed:\n{done.stdout}\n{done.stderr}"
    db = sqlite3.connect(reports / store.STORE_NAME)
    rows = db.execute("SELECT variant, device_used, samples, agree, max_abs_diff, max_steps, ok "
                      "FROM verifications").fetchall()
    assert len(rows) == 1, rows
    variant, device_used, samples, agree, max_abs_diff, max_steps, ok = rows[0]
    assert (variant, device_used, samples, agree, ok) == ("int8", "cpu", 3, 3, 1)
    assert max_abs_diff == pytest.approx(max_steps / 256)  # output scale 1/256
    assert max_steps <= verify.DEFAULT_STEPS, rows
    assert "verify int8 on cpu: top-1 3/3" in " ".join(done.stdout.split())


def test_qrun_on_the_box_classifies_the_parrot(pushed, pibox):
    assert pushed[0].returncode == 0, "the push failed; see the test above"
    pibox.put(CORAL / "parrot.jpg", "parrot.jpg")
    out = pibox.run("~/qdeploy/venv/bin/qrun classify parrot.jpg", timeout=600).stdout
    ranked = [line for line in out.splitlines() if line.strip() and not line.startswith("invoke")]
    label, _, score = ranked[0].rpartition(": ")
    assert label == "Ara macao (Scarlet Macaw)", out
    assert float(score) > 0.7, out  # arm64 kernels: 0.766; x86 XNNPACK 0.797


def test_a_detector_pushed_to_the_box_is_verified_by_its_detections(pushed, pibox,
                                                                    ultralytics_yolo, tmp_path):
    """An Ultralytics-format YOLO (int8 head [1, 6, 16], boxes in pixels beside scores in
    one scale) with three lit-cell images as reference inputs: push --verify on the arm64
    box judges it by its decoded detections (issue 25), not by single raw values. Last in
    this module: it makes the detector the box's current release."""
    import numpy as np

    from qdeploy.modelimport.importer import import_model
    from tests.fixtures.yolo import lit_cell

    assert pushed[0].returncode == 0, "the first push failed; see the tests above"
    np.save(tmp_path / "cells.npy", np.stack([lit_cell(k) for k in (0, 5, 10)]))
    dep = tmp_path / "yolo"
    import_model(ultralytics_yolo, out=dep, reference=tmp_path / "cells.npy")
    (tmp_path / "empty-ssh-config").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    argv = [sys.executable, "-m", "qdeploy", "push", str(dep),
            "--target", f"{pibox.user}@{pibox.host}:{pibox.port}",
            "--identity", str(pibox.key), "--known-hosts", str(pibox.known_hosts),
            "--ssh-config", str(tmp_path / "empty-ssh-config"),
            "--reports", str(tmp_path / "reports"), "--bench-runs", "2"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=PUSH_TIMEOUT)
    assert done.returncode == 0, f"qdeploy push failed:\n{done.stdout}\n{done.stderr}"
    said = " ".join(done.stdout.split())
    assert "verify int8 on cpu: 48 of 48 detections match (100%" in said, said
    assert "3 of 3 samples agree" in said
    out = pibox.run("~/qdeploy/venv/bin/qrun verify --device cpu", timeout=600).stdout
    assert "int8 on cpu: detections per sample 16 16 16" in out, out
