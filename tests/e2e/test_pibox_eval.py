"""`qdeploy push --eval` end to end on the Pi in a box: the labelled images go to the arm64
device, pycocotools (the eval extra) is installed into its runner venv from the box's
aarch64 wheelhouse, `qrun evaluate` scores every variant there, and the figures come home
into the store beside the latency and into `qdeploy report --json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.fixtures.evalsets import coco_data

pytestmark = pytest.mark.slow
PUSH_TIMEOUT = 1800


def test_push_eval_on_the_box_brings_accuracy_home(pibox, yolo_eval_dep, tmp_path):
    from qrun.measure.evaluate import evaluate

    data = coco_data(tmp_path / "coco", shift=1.0)
    (tmp_path / "empty-ssh-config").write_text("")
    reports = tmp_path / "reports"
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    argv = [sys.executable, "-m", "qdeploy", "push", str(yolo_eval_dep),
            "--target", f"{pibox.user}@{pibox.host}:{pibox.port}",
            "--identity", str(pibox.key), "--known-hosts", str(pibox.known_hosts),
            "--ssh-config", str(tmp_path / "empty-ssh-config"), "--reports", str(reports),
            "--bench-runs", "3", "--compare", "--no-verify", "--eval", str(data)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=PUSH_TIMEOUT)
    assert done.returncode == 0, f"qdeploy push failed:\n{done.stdout}\n{done.stderr}"
    assert "accuracy on 4 images: mAP50-95" in " ".join((done.stdout + done.stderr).split())
    assert pibox.run("~/qdeploy/venv/bin/python -c 'import pycocotools'", check=False) \
        .returncode == 0
    [document] = [json.loads(p.read_text()) for p in reports.glob("*.json")]
    for report in document["reports"]:  # measured on the box, figures included
        assert "aarch64" in json.dumps(report["host"]) and report["accuracy"]["images"] == 4
    shown = subprocess.run([sys.executable, "-m", "qdeploy", "report", "--reports",
                            str(reports), "--json"], capture_output=True, text=True, env=env,
                           timeout=120)
    latest = {r["variant"]: r for r in json.loads(shown.stdout)["latest"]}
    here = evaluate(yolo_eval_dep, data)["variants"]
    assert set(latest) == {"float", "int8"}
    for variant, row in latest.items():
        assert row["accuracy_metric"] == "map50_95" and row["accuracy_images"] == 4
        # arm64 kernels round otherwise than x86's: the same boxes within a step or two
        assert row["accuracy_value"] == pytest.approx(here[variant]["map50_95"], abs=0.05)
