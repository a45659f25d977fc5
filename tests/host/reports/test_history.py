"""`qdeploy report`: table, speed-ups, regression flag, PNG, HTML, JSON and bad input.

The store is filled with reports of real benchmarks run on this machine (see
tests/fixtures/reports.py).
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qdeploy.reports import plot as plotting
from qdeploy.reports import history as reporting
from qdeploy.cli import app
from qdeploy.reports.store import open_store
from qrun.errors import UserError
from tests.fixtures.reports import scaled
from tests.paths import ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def filled(tmp_path, tiny_compare, int8_report) -> Path:
    """A reports dir with the tiny float+int8 compare run on `local`, Coral's int8 on `pi`."""
    reports = tmp_path / "reports"
    with open_store(reports) as s:
        assert len(s.add_reports(tiny_compare, "local", reports / "compare.json")) == 2
        s.add_report(int8_report, "pi", reports / "pi.json")
    return reports


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed command line, as a user runs it (real exit code and stderr)."""
    return subprocess.run([sys.executable, "-m", "qdeploy", "report", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def read_png(data: bytes) -> np.ndarray:
    import matplotlib.image

    assert data.startswith(PNG_SIGNATURE)
    return matplotlib.image.imread(io.BytesIO(data), format="png")


def test_table_ratios_match_stored_medians(filled, tiny_reports):
    with open_store(filled) as s:
        stored = {(r.target, r.variant): r.median_us for r in s.latest()}
        result = reporting.build(s)
    rows = {(r.target, r.variant): r for r in result.table}
    assert set(rows) == {("local", "float"), ("local", "int8"), ("pi", "int8")}
    float_median = stored[("local", "float")]
    assert float_median == tiny_reports["float"]["latency_us"]["median"]
    assert rows[("local", "float")].speedup == 1.0
    assert rows[("local", "int8")].speedup == pytest.approx(
        float_median / stored[("local", "int8")], rel=1e-12)
    assert rows[("pi", "int8")].speedup is None  # no float report for that model there

    out = CliRunner().invoke(app, ["report", "--reports", str(filled), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    by_key = {(r["target"], r["variant"]): r for r in data["latest"]}
    assert by_key[("local", "int8")]["speedup"] == pytest.approx(
        float_median / stored[("local", "int8")])
    assert by_key[("local", "int8")]["median_us"] == stored[("local", "int8")]

    text = CliRunner().invoke(app, ["report", "--reports", str(filled)]).output
    expected = reporting.speedup_text(float_median / stored[("local", "int8")])
    int8_line = next(line for line in text.splitlines() if "│ local" in line and "int8" in line)
    assert expected in int8_line
    assert reporting.ms(stored[("local", "int8")]) in int8_line


def test_local_push_lands_in_the_store_and_report_reads_it(local_push):
    """qdeploy push --target local --compare (real qrun bench) -> store -> qdeploy report."""
    with open_store(local_push, create=False) as s:
        rows = s.latest()
        assert s.count() == 2 and s.targets() == ["local"]
    assert [(r.model_name, r.variant, r.device_used) for r in rows] == [
        ("tiny", "float", "cpu"), ("tiny", "int8", "cpu")]
    assert all(len(r.timings_us) == r.count > 0 for r in rows)
    assert all(Path(r.report_file).is_file() for r in rows)
    medians = {r.variant: r.median_us for r in rows}
    out = CliRunner().invoke(app, ["report", "--reports", str(local_push), "--json"])
    assert out.exit_code == 0, out.output
    speedup = {r["variant"]: r["speedup"] for r in json.loads(out.output)["latest"]}
    assert speedup["int8"] == pytest.approx(medians["float"] / medians["int8"], rel=1e-12)
    assert speedup["float"] == 1.0


def test_regression_flag_only_for_more_than_ten_percent(tmp_path, int8_report):
    base = {**int8_report, "timestamp": "2026-03-01T00:00:00Z"}
    series = [base,
              scaled(base, 1.05, "2026-03-02T00:00:00Z"),   # 5% slower: not flagged
              scaled(base, 1.25, "2026-03-03T00:00:00Z"),   # 19% slower than the previous
              scaled(base, 1.20, "2026-03-04T00:00:00Z")]   # faster again: not flagged
    reports = tmp_path / "reports"
    with open_store(reports) as s:
        for i, r in enumerate(series):
            s.add_report(r, "local", reports / f"{i}.json")
        s.add_report(scaled(base, 2.0, "2026-03-05T00:00:00Z"), "other", reports / "o.json")
        history = reporting.build(s).history
    local = [h for h in history if h.target == "local"]
    assert [h.regression for h in local] == [False, False, True, False]
    assert local[0].change is None
    assert local[2].change == pytest.approx(1.25 / 1.05 - 1)
    other = [h for h in history if h.target == "other"]
    assert [h.regression for h in other] == [False]  # first of its own series

    text = CliRunner().invoke(app, ["report", "--reports", str(reports)]).output
    flagged = [line for line in text.splitlines() if "REGRESSION" in line]
    assert len(flagged) == 1 and "2026-03-03" in flagged[0]
    assert "1 regression(s)" in text
    # The window starts after the baseline, yet the slower report is still judged against it.
    since = CliRunner().invoke(app, ["report", "--reports", str(reports), "--json",
                                     "--since", "2026-03-03"]).output
    assert [h["regression"] for h in json.loads(since)["history"]
            if h["target"] == "local"] == [True, False]


def test_plot_png_is_valid_sized_and_not_blank(filled, tmp_path):
    out = tmp_path / "latency.png"
    result = CliRunner().invoke(app, ["report", "--reports", str(filled), "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    image = read_png(out.read_bytes())
    assert image.shape[:2] == (plotting.HEIGHT_PX, plotting.WIDTH_PX)
    assert float(image[..., :3].std()) > 0.05  # a blank (single colour) image has 0
    assert not list(tmp_path.glob(".latency.png.*"))  # no temp file left behind


def test_plot_title_and_labels_name_model_target_and_units(filled):
    with open_store(filled) as s:
        rows = s.latest()
    assert plotting.title_for(rows) == ("Inference latency of mobilenet_v1_0.25_128, tiny on "
                                        "local, pi")
    labels = [plotting.series_label(r, rows) for r in rows]
    assert "tiny float (cpu) @ local" in labels
    local = [r for r in rows if r.target == "local"]
    assert [plotting.series_label(r, local) for r in local] == ["float (cpu)", "int8 (cpu)"]
    image = read_png(plotting.render_png(local, width_px=800, height_px=400))
    assert image.shape[:2] == (400, 800)


def test_html_page_holds_table_and_embedded_png(filled, tmp_path):
    page = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--reports", str(filled), "--html", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    assert '<table id="latest">' in text and '<table id="history">' in text
    with open_store(filled) as s:
        latest = s.latest()
    for row in latest:
        assert f"<td>{reporting.ms(row.median_us)}</td>" in text
    assert text.count("<tr>") >= len(latest) + 2  # header rows + one per report
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert match, "no embedded PNG"
    image = read_png(base64.b64decode(match.group(1)))
    assert image.shape[:2] == (plotting.HEIGHT_PX, plotting.WIDTH_PX)
    assert "http://" not in text and "https://" not in text  # self-contained


def test_filters(filled):
    runner = CliRunner()
    local = json.loads(runner.invoke(app, ["report", "--reports", str(filled), "--json",
                                           "--target", "local"]).output)
    assert {r["target"] for r in local["latest"]} == {"local"}
    tiny = json.loads(runner.invoke(app, ["report", "--reports", str(filled), "--json",
                                          "--model", "tiny"]).output)
    assert sorted(r["variant"] for r in tiny["latest"]) == ["float", "int8"]


def test_parse_since():
    now = datetime(2026, 5, 10, 12, 0, tzinfo=timezone.utc)
    assert reporting.parse_since("7d", now) == "2026-05-03T12:00:00.000000Z"
    assert reporting.parse_since("90m", now) == "2026-05-10T10:30:00.000000Z"
    assert reporting.parse_since("2026-05-01") == "2026-05-01T00:00:00.000000Z"
    with pytest.raises(UserError, match="--since"):
        reporting.parse_since("soon")


def test_huge_age_means_every_report():
    now = datetime(2026, 5, 10, 12, 0, tzinfo=timezone.utc)
    assert reporting.parse_since("1000000w", now) == "1970-01-01T00:00:00.000000Z"
    assert reporting.parse_since("99999999999999999999d", now) == "1970-01-01T00:00:00.000000Z"


def test_damaged_or_foreign_store_is_one_line(tmp_path):
    import sqlite3

    damaged = tmp_path / "damaged"
    with open_store(damaged) as s, s.connection:
        s.connection.executemany(
            "INSERT INTO model_facts (sha256, source, updated) VALUES (?, ?, ?)",
            [(f"{i:064x}", "x" * 500, "t") for i in range(50)])
    path = damaged / "qdeploy.sqlite"
    data = path.read_bytes()
    path.write_bytes(data[:4096] + b"\xa5" * (len(data) - 4096))  # page 1 (schema) intact
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    con = sqlite3.connect(foreign / "qdeploy.sqlite")
    con.execute("CREATE TABLE notes (text TEXT)")
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()
    for reports, why in ((damaged, "database disk image is malformed"),
                         (foreign, "no table model_facts")):
        done = run_cli("--reports", str(reports))
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0] == (f"error: {reports / 'qdeploy.sqlite'} is not a readable qdeploy "
                            f"report store ({why}); move it away (the JSON reports beside it "
                            "are kept) and push again")


def test_empty_store_is_one_line(tmp_path):
    for reports in (tmp_path / "missing", tmp_path / "empty"):
        if reports.name == "empty":
            open_store(reports).close()
        done = run_cli("--reports", str(reports))
        assert done.returncode == 1
        assert done.stderr.startswith("error: no reports yet: run qdeploy push")
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "missing").exists()


def test_unknown_target_is_one_line(filled):
    done = run_cli("--reports", str(filled), "--target", "nano")
    assert done.returncode == 1
    assert done.stderr == "error: no reports for target 'nano'; known targets: local, pi\n"


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet50"], "no reports for model 'resnet50'; known models: "
                              "mobilenet_v1_0.25_128, tiny"),
    (["--since", "someday"], "--since 'someday' is not an ISO-8601"),
    (["--plot", "/nonexistent-dir/p.png"], "cannot write plot /nonexistent-dir/p.png: "
                                           "directory /nonexistent-dir does not exist"),
    (["--html", "/nonexistent-dir/p.html"], "cannot write HTML page /nonexistent-dir/p.html"),
])
def test_bad_input_is_a_user_error(filled, args, message):
    result = CliRunner().invoke(app, ["report", "--reports", str(filled), *args])
    assert isinstance(result.exception, UserError), result.output
    assert str(result.exception).startswith(message)
    assert "\n" not in str(result.exception)


def test_unwritable_plot_paths_refused(filled, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for path, reason in ((a_file / "p.png", "does not exist"), (tmp_path, "it is a directory")):
        with pytest.raises(UserError, match=reason):
            reporting.check_output_path(path, "plot")
    with pytest.raises(UserError, match="cannot write HTML page"):
        reporting.write_output(a_file / "x.html", b"<html>", "HTML page")


@pytest.mark.parametrize("directory", ["/proc", "/sys"])
def test_directory_where_no_file_can_be_made_is_refused(directory):
    """os.access says yes to root for /proc and /sys; a real test file says no."""
    if not Path(directory).is_dir():
        pytest.skip(f"no {directory} here")
    with pytest.raises(UserError, match=rf"^cannot write in {directory} \(.+\); write the "
                                        r"plot p.png elsewhere$"):
        reporting.check_output_path(Path(directory) / "p.png", "plot")


def test_unwritable_plot_directory_is_refused_before_reading_the_store(tmp_path):
    if not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    result = CliRunner().invoke(app, ["report", "--reports", str(tmp_path / "none"),
                                      "--plot", "/proc/latency.png"])
    assert isinstance(result.exception, UserError), result.output
    assert str(result.exception).startswith("cannot write in /proc (")  # not "no reports yet"
    assert not (tmp_path / "none").exists()


def test_report_path_does_not_import_matplotlib():
    code = ("import sys, qdeploy.cli, qdeploy.reports.history, qdeploy.reports.store, qdeploy.reports.html; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_the_task_is_in_the_table_json_and_page(filled, tmp_path):
    """The tiny deployment's manifest says classify; Coral's bare file says nothing."""
    data = json.loads(CliRunner().invoke(app, ["report", "--reports", str(filled),
                                               "--json"]).output)
    tasks = {(r["target"], r["variant"]): r["task"] for r in data["latest"]}
    assert tasks == {("local", "float"): "classify", ("local", "int8"): "classify",
                     ("pi", "int8"): None}
    text = CliRunner().invoke(app, ["report", "--reports", str(filled)]).output
    header = next(line for line in text.splitlines() if "┃ target" in line)
    assert re.search(r"variant\s*┃\s*task\s*┃\s*device", header)
    latest = text.split("History (")[0]
    lines = [line for line in latest.splitlines() if "│ local" in line or "│ pi" in line]
    cells = [[c.strip() for c in line.split("│")] for line in lines]
    assert sorted(c[4] for c in cells) == ["classify", "classify", "—"]
    page = tmp_path / "report.html"
    assert CliRunner().invoke(app, ["report", "--reports", str(filled), "--html",
                                    str(page)]).exit_code == 0
    html = page.read_text(encoding="utf-8")
    assert "<th>task</th>" in html and html.count('<td class="text">classify</td>') == 2


def test_a_segment_deployment_beside_an_older_runners_report(tmp_path, int8_report):
    """Real benches in a store of version 2 (migrated): a report of a qrun from before the
    task field shows an empty task; Coral's DeepLab deployed as segment shows segment."""
    from qrun.model import manifest as mf
    from tests.fixtures.deployments import make_deployment
    from tests.fixtures.reports import old_store, qrun_bench

    reports = tmp_path / "reports"
    old_store(reports, 2)
    older = {**int8_report, "model": {k: v for k, v in int8_report["model"].items()
                                      if k not in ("task", "input_count", "output_count")}}
    with open_store(reports) as s:
        s.add_report(older, "pi", reports / "pi.json")
    folder = make_deployment(tmp_path / "deeplab",
                             {mf.INT8: "deeplabv3_mnv2_dm05_pascal_quant.tflite"},
                             labels="pascal_voc_segmentation_labels.txt")
    manifest = mf.load(folder)
    manifest.task = mf.Task(mf.SEGMENT, outputs={mf.MASK: 0})
    mf.save(manifest, folder)
    with open_store(reports) as s:
        s.add_report(qrun_bench(folder, "--device", "cpu", runs=3, warmup=0), "pi",
                     reports / "deeplab.json")
    data = json.loads(CliRunner().invoke(app, ["report", "--reports", str(reports),
                                               "--json"]).output)
    assert sorted((r["model"], r["task"]) for r in data["latest"]) == [
        ("deeplabv3_mnv2_dm05_pascal", "segment"), ("mobilenet_v1_0.25_128", None)]
