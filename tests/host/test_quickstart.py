"""`qdeploy quickstart`: the main job on the bundled default, every step for real."""

from __future__ import annotations

import json
import shutil

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
