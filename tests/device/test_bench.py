"""qrun bench: the report contract's JSON, its consistency, atomic --json FILE, --compare."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest

from qrun.measure import report_contract
from tests.fixtures.deployments import V1_025
from tests.paths import CORAL

MODEL = CORAL / f"{V1_025}.tflite"
EDGETPU = CORAL / f"{V1_025}_edgetpu.tflite"
TOP_KEYS = list(report_contract.keys())
# What schema-version-1 reports held, in this order, since the first qrun bench: older
# hosts read these keys, so each stays and keeps its place among them.
VERSION_1_KEYS = ["schema_version", "kind", "timestamp", "qrun_version", "model", "runtime",
                  "device", "settings", "init_ms", "first_inference_ms", "warmup_mean_ms",
                  "latency_us", "timings_us", "peak_rss_kb", "host"]


def check_report(r: dict, runs: int, warmup: int) -> None:
    """Every schema field present with its type, and the numbers consistent with each other."""
    import qrun

    assert list(r) == TOP_KEYS, set(TOP_KEYS) ^ set(r)
    assert [k for k in r if k in VERSION_1_KEYS] == VERSION_1_KEYS
    assert report_contract.validate(r) is r  # what the host checks before storing it
    assert r["schema_version"] == 1 and r["kind"] == "qrun-bench"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["timestamp"])
    assert r["qrun_version"] == qrun.__version__
    m = r["model"]
    assert set(m) >= {"path", "sha256", "size", "variant"}
    with open(m["path"], "rb") as f:
        data = f.read()
    assert m["sha256"] == hashlib.sha256(data).hexdigest() and m["size"] == len(data)
    assert m["variant"] in ("int8", "edgetpu", "float")
    assert r["runtime"]["name"] in ("ai_edge_litert", "tflite_runtime") and r["runtime"]["version"]
    assert r["device"]["requested"] in ("auto", "edgetpu", "cpu")
    assert r["device"]["used"] in ("cpu", "edgetpu") and r["device"]["reason"]
    s = r["settings"]
    assert (s["runs"], s["warmup"]) == (runs, warmup) and "threads" in s
    lat = r["latency_us"]
    assert lat["count"] == runs == len(r["timings_us"])
    assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
    assert lat["min"] == min(r["timings_us"]) and lat["max"] == max(r["timings_us"])
    assert all(isinstance(t, float) and t > 0 for t in r["timings_us"])
    for key in ("init_ms", "first_inference_ms", "warmup_mean_ms"):
        assert isinstance(r[key], float) and r[key] >= 0
    assert r["init_ms"] > 0 and r["first_inference_ms"] > 0
    assert (r["warmup_mean_ms"] > 0) == (warmup > 0)
    assert isinstance(r["peak_rss_kb"], int) and r["peak_rss_kb"] > 1000
    h = r["host"]
    assert set(h) >= {"hostname", "machine", "cpu", "pi_model", "os", "python"}
    assert h["machine"] == os.uname().machine


def test_json_to_stdout_progress_to_stderr(qrun_process):
    out = qrun_process("bench", "--model", MODEL, "--runs", 15, "--warmup", 2, "--json", "-")
    assert out.code == 0, out.err
    report = json.loads(out.out)  # stdout holds nothing but the report
    check_report(report, 15, 2)
    assert report["device"] == {"requested": "auto", "used": "cpu",
                                "reason": "the model has no Edge TPU ops; ran on the CPU"}
    assert report["model"]["variant"] == "int8"
    assert any(ln.startswith("qrun bench: timing 15 runs") for ln in out.err_lines)


def test_fallback_report_names_twin_and_reason(run_qrun, tmp_path):
    from tests.fixtures.runner import libedgetpu_loads as _libedgetpu_loads

    if _libedgetpu_loads():
        pytest.skip("libedgetpu loads on this machine; the fallback cannot be seen")
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "bench.json"
    out = run_qrun("bench", "--model", EDGETPU, "--runs", 5, "--warmup", 0, "--threads", 1,
                   "--json", target)
    assert out.code == 0, out.err
    report = json.loads(target.read_text())
    check_report(report, 5, 0)
    assert report["settings"]["threads"] == 1
    assert report["model"]["path"] == str(MODEL.resolve())
    assert report["device"]["used"] == "cpu"
    assert report["device"]["reason"].startswith("libedgetpu.so.1 not found")
    assert report["device"]["reason"].endswith(f"fell back to int8 twin {MODEL.name}")
    assert "steady state (5 runs" in out.out
    assert [p.name for p in target.parent.iterdir()] == ["bench.json"]  # no temp file left


def test_json_file_replaced_atomically(run_qrun, tmp_path):
    target = tmp_path / "bench.json"
    target.write_text("old")
    inode_before = target.stat().st_ino
    out = run_qrun("bench", "--model", MODEL, "--runs", 3, "--warmup", 1, "--json", target)
    assert out.code == 0, out.err
    check_report(json.loads(target.read_text()), 3, 1)
    assert target.stat().st_ino != inode_before  # a new file renamed over the old one


def test_json_into_missing_directory(run_qrun, tmp_path):
    out = run_qrun("bench", "--model", MODEL, "--runs", 1, "--json", tmp_path / "no" / "b.json")
    assert out.code == 1 and out.err_lines[-1].startswith("error: --json")


def test_compare_reports_every_variant(run_qrun, tmp_path):
    from tests.fixtures.deployments import make_deployment
    from tests.fixtures.runner import libedgetpu_loads as _libedgetpu_loads

    dep = make_deployment(tmp_path / "d", {"float": "mobilenet_v1_0.5_160_quant.tflite",
                                           "int8": MODEL.name, "edgetpu": EDGETPU.name})
    out = run_qrun("bench", "--model", dep, "--compare", "--runs", 3, "--warmup", 1,
                   "--json", "-")
    assert out.code == 0, out.err
    data = json.loads(out.out)
    assert data["schema_version"] == 1 and data["kind"] == "qrun-bench-compare"
    variants = [r["model"]["variant"] for r in data["reports"]]
    for r in data["reports"]:
        check_report(r, 3, 1)
    if _libedgetpu_loads():
        assert variants == ["float", "int8", "edgetpu"]
    else:
        assert variants == ["float", "int8"]
        assert data["skipped"][0]["variant"] == "edgetpu"
        assert "libedgetpu.so.1 not found" in data["skipped"][0]["reason"]
    assert {r["device"]["used"] for r in data["reports"][:2]} == {"cpu"}


def test_latency_stats_math():
    from qrun.measure.bench import latency_stats

    stats = latency_stats([4.0, 1.0, 3.0, 2.0])
    assert stats["count"] == 4 and stats["median"] == 2.5 and stats["mean"] == 2.5
    assert stats["min"] == 1.0 and stats["max"] == 4.0
    assert stats["std"] == pytest.approx(1.118034, rel=1e-6)
    assert stats["p90"] == pytest.approx(3.7)


def test_bench_report_holds_the_contract_keys_in_order():
    """BenchReport has an attribute per top-level key of the contract, written in its order."""
    import dataclasses

    from qrun.measure.bench import BenchReport

    attributes = [f.name for f in dataclasses.fields(BenchReport)]
    # Adapted for `frame` (qrun bench --image) and `stream` (--video), keys written only
    # when measured.
    every_key = list(report_contract.keys(optional=True))
    assert sorted(attributes) == sorted(every_key)
    values = {name: name.upper() for name in attributes}
    assert list(BenchReport(**values).to_dict()) == every_key
    # Adapted for `stream` (qrun bench --video) and `accuracy` (push --eval adds it on the host):
    # every optional key left out.
    unmeasured = {f.path: None for f in report_contract.top_fields() if f.optional}
    assert list(BenchReport(**{**values, **unmeasured}).to_dict()) == TOP_KEYS
