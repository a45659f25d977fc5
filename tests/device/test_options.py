"""Option values qrun refuses before loading or timing anything: one line naming the option."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.deployments import V1_025, make_deployment
from tests.paths import CORAL
from tests.fixtures.runner import one_error

MODEL = CORAL / f"{V1_025}.tflite"
CAT = CORAL / "cat.bmp"


def no_benchmark_ran(out) -> None:
    assert "qrun bench: loading" not in out.err and "qrun bench: timing" not in out.err


def test_bench_json_directory_is_refused_before_benchmarking(run_qrun, tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    out = run_qrun("bench", "--model", MODEL, "--runs", 5, "--json", folder)
    one_error(out, f"--json {folder} is a directory", "give a file name")
    no_benchmark_ran(out)
    assert list(folder.iterdir()) == []


def test_bench_json_missing_directory_is_refused_before_benchmarking(run_qrun, tmp_path):
    out = run_qrun("bench", "--model", MODEL, "--runs", 5, "--json", tmp_path / "nodir" / "x.json")
    one_error(out, "does not exist", "create it or give another path")
    no_benchmark_ran(out)


def test_bench_json_name_too_long_is_refused_before_benchmarking(run_qrun, tmp_path):
    out = run_qrun("bench", "--model", MODEL, "--runs", 5, "--json", tmp_path / ("r" * 300))
    one_error(out, "give another path")
    no_benchmark_ran(out)


def test_bench_json_write_failure_is_one_line(run_qrun, tmp_path):
    """A name the file system takes, but not its temporary name (longer): the write itself
    fails, as one line, and nothing is left behind."""
    folder = tmp_path / "reports"
    folder.mkdir()
    target = folder / ("r" * 245 + ".json")
    out = run_qrun("bench", "--model", MODEL, "--runs", 2, "--warmup", 0, "--json", target)
    one_error(out, "cannot write the report", "give a writable file path")
    assert list(folder.iterdir()) == []


def test_bench_compare_json_directory_is_refused(run_qrun, tmp_path):
    out = run_qrun("bench", "--model", MODEL, "--compare", "--json", tmp_path)
    one_error(out, "is a directory")
    no_benchmark_ran(out)


@pytest.mark.parametrize("command", [("classify", CAT), ("verify",), ("bench", "--runs", 1)],
                         ids=lambda c: c[0])
@pytest.mark.parametrize("threads", [0, -3])
def test_threads_below_one_is_the_option_not_the_model(run_qrun, tmp_path, command, threads):
    deploy = make_deployment(tmp_path / "deploy", {"int8": f"{V1_025}.tflite"})
    out = run_qrun(*command, "--model", deploy, "--threads", threads)
    line = one_error(out, f"--threads must be at least 1, got {threads}")
    assert "cannot be loaded" not in line and V1_025 not in line


@pytest.mark.parametrize("device", ["cpu", "edgetpu", "bogus"])
def test_bench_compare_refuses_device(run_qrun, tmp_path, device):
    deploy = make_deployment(tmp_path / "deploy", {"int8": f"{V1_025}.tflite"})
    out = run_qrun("bench", "--model", deploy, "--compare", "--device", device, "--runs", 1)
    one_error(out, f"--device {device} cannot be used with --compare")
    no_benchmark_ran(out)


def test_bench_device_default_is_still_auto(run_qrun):
    out = run_qrun("bench", "--model", MODEL, "--runs", 1, "--warmup", 0, "--json", "-")
    assert out.code == 0, out.err
    assert json.loads(out.out)["device"]["requested"] == "auto"
