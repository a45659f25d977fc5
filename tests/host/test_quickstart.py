"""`qdeploy quickstart`: the main job on the bundled default, every step for real."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qrun.model import manifest as mf

pytestmark = pytest.mark.slow


def test_quickstart_predicts_the_compiler_and_pushes_to_local(converted_demo):
    outcome = converted_demo.compile_outcome
    # no edgetpu_compiler on this machine: the preflight answers, and every op of the
    # batch-1 tutorial model is predicted to map
    assert outcome.compiled is False and outcome.missing
    assert outcome.ok, outcome.verdict
    assert "7 of 7" in outcome.verdict
    push = converted_demo.push_result
    assert push.ok, push.error
    assert push.files_sent >= 3
    (report,) = push.reports
    assert report["kind"] == "qrun-bench"
    assert report["model"]["sha256"] == mf.load(converted_demo.out_dir).artifacts[mf.INT8].sha256
    assert report["device"]["used"] == "cpu"
    lat = report["latency_us"]
    assert lat["min"] <= lat["median"] <= lat["p99"] <= lat["max"]
    (report_file,) = push.report_files
    assert json.loads(open(report_file).read())["latency_us"] == lat


def test_quickstart_command_help_explains_itself(run_cli):
    code, out, _ = run_cli("quickstart", "--help")
    assert code == 0
    assert "bundled MNIST" in out and "local" in out


def test_quickstart_report_carries_the_measured_accuracy(converted_demo, run_cli, tmp_path):
    """The push hands the manifest's evaluate figures to the store; `qdeploy report` shows them."""
    from qdeploy.reports import store

    manifest = mf.load(converted_demo.out_dir)
    reports_dir = converted_demo.push_result.report_files[0].parent
    with store.open_store(reports_dir) as s:
        facts = s.model_facts(manifest.artifacts[mf.INT8].sha256)
        (row,) = s.latest(target="local")
    assert facts.accuracy == converted_demo.evaluation.int8_accuracy
    assert row.accuracy == converted_demo.evaluation.int8_accuracy
    code, out, err = run_cli("report", "--reports", reports_dir, "--json")
    assert code == 0, err
    (latest,) = json.loads(out)["latest"]
    assert latest["variant"] == "int8"
    assert latest["accuracy"] == converted_demo.evaluation.int8_accuracy
    assert latest["model_size"] == manifest.artifacts[mf.INT8].size


def test_local_target_defaults_to_qdeploy_home(converted_demo, monkeypatch, tmp_path, run_cli):
    """On `local`, push and rollback use $QDEPLOY_HOME, where this machine's qrun looks."""
    from qdeploy.push.pipeline import push_local

    home = tmp_path / "home"
    monkeypatch.setenv("QDEPLOY_HOME", str(home))
    first = push_local(converted_demo.out_dir, tmp_path / "reports", bench_runs=3)
    assert first.ok, first.error
    current = (home / "current").resolve()
    assert current.parent == (home / "releases").resolve()
    assert (current / "model_int8.tflite").is_file()
    # a second, changed release, then the CLI's rollback finds it in $QDEPLOY_HOME too
    changed = tmp_path / "changed"
    shutil.copytree(converted_demo.out_dir, changed)
    manifest = mf.load(changed)
    manifest.evaluation = None
    mf.save(manifest, changed)
    second = push_local(changed, tmp_path / "reports", bench_runs=3)
    assert second.ok, second.error
    assert (home / "current").resolve() != current
    code, _, err = run_cli("rollback", "--target", "local")
    assert code == 0, err
    assert (home / "current").resolve() == current


def test_samples_are_held_out_digits_labelled_by_name(demo_split):
    """models/mnist/samples/digit-<label>.png: images of the held-out part, true labels."""
    from PIL import Image

    from qdeploy import demo

    recipe = demo.load_recipe()
    samples = sorted((recipe.root / demo.SAMPLES_DIR).glob("*.png"))
    assert [p.name for p in samples] == [f"digit-{d}.png" for d in range(10)]
    for path in samples:
        with Image.open(path) as image:
            assert (image.mode, image.size) == ("L", (28, 28))
            pixels = np.asarray(image)
        found = [i for i, x in enumerate(demo_split.x_heldout) if np.array_equal(x, pixels)]
        assert found, f"{path.name} is not a held-out image"
        assert {int(demo_split.y_heldout[i]) for i in found} == {int(path.stem[-1])}
    assert demo.sample_digit(recipe) == recipe.root / demo.SAMPLES_DIR / "digit-7.png"


def test_quickstart_ends_with_the_command_that_classifies_a_sample(converted_demo, run_cli,
                                                                    monkeypatch):
    """The last line is a command to paste: run as printed, it classifies the digit with
    the deployment quickstart pushed (to the default release directory, $QDEPLOY_HOME)."""
    from qdeploy import demo, quickstart

    home = converted_demo.remote_dir
    monkeypatch.setenv("QDEPLOY_HOME", str(home))
    as_pushed = dataclasses.replace(converted_demo, remote_dir=None)  # as the CLI pushes
    monkeypatch.setattr(quickstart, "run", lambda *args, **kwargs: as_pushed)
    code, out, err = run_cli("quickstart")
    assert code == 0, err
    *_, intro, command = out.splitlines()
    assert intro.startswith("Next, classify a held-out digit")
    program, *args = shlex.split(command)
    sample = demo.sample_digit(demo.load_recipe())
    assert args == ["classify", os.path.relpath(sample) if not os.path.relpath(
        sample).startswith("..") else str(sample)]
    assert Path(program).absolute() == Path(sys.executable).absolute().parent / "qrun"
    done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=120,
                          env={**os.environ, "QDEPLOY_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    classes = re.findall(r"^(\d): ([\d.]+)$", done.stdout, flags=re.M)
    assert len(classes) == 3 and classes[0][0] == "7", done.stdout  # top 3, the true label first


def test_classify_command_names_the_deployment_qrun_would_not_find(tmp_path):
    """Pushed elsewhere than qrun looks: its `current`; not pushed: the output directory."""
    from qdeploy.quickstart import QuickstartResult, classify_command

    sample = tmp_path / "samples" / "digit 7.png"
    pushed = QuickstartResult(tmp_path / "out", None, None, push_result=object(),
                              sample=sample)
    words = shlex.split(classify_command(pushed, cwd=tmp_path))
    assert words[1:] == ["classify", "samples/digit 7.png"]
    elsewhere = dataclasses.replace(pushed, remote_dir=Path("/srv/qdeploy"))
    assert shlex.split(classify_command(elsewhere, cwd=tmp_path))[1:] == [
        "classify", "--model", "/srv/qdeploy/current", "samples/digit 7.png"]
    unpushed = dataclasses.replace(pushed, push_result=None)
    assert shlex.split(classify_command(unpushed, cwd=tmp_path / "samples"))[1:] == [
        "classify", "--model", str(tmp_path / "out"), "digit 7.png"]
