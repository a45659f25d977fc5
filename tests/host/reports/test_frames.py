"""`qdeploy report` frames per second: from a real `qrun bench --image` report's frame
median; "—" for a report without frames (no --image, or a qrun from before them), in a
store created before the frame columns."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from qdeploy.cli import app
from qdeploy.reports.store import open_store
from qrun.measure import report_contract
from tests.fixtures.reports import old_store, qrun_bench
from tests.paths import CORAL

IMAGE = CORAL / "cat.bmp"


@pytest.fixture(scope="module")
def frame_report(coral_int8) -> dict:
    """A real bench of Coral's int8 classifier with --image (CPU)."""
    return qrun_bench(coral_int8, "--device", "cpu", "--image", str(IMAGE), runs=5, warmup=1)


@pytest.fixture
def mixed(tmp_path, frame_report, int8_report):
    """A version-2 store (migrated on open) holding a frame report on `pi` and, on `nano`,
    one without frames plus one of a qrun from before the frame fields."""
    reports = tmp_path / "reports"
    old_store(reports, 2)
    older = {k: v for k, v in int8_report.items() if k != "frame"}
    older["model"] = {k: v for k, v in older["model"].items()
                      if k not in ("task", "input_count", "output_count")}
    with open_store(reports) as s:
        s.add_report(older, "nano", reports / "older.json")
        s.add_report(frame_report, "pi", reports / "frames.json")
        s.add_report(int8_report, "jetson", reports / "plain.json")
    return reports


def test_frame_report_validates_and_is_stored(mixed, frame_report):
    assert report_contract.validate(frame_report)["frame"]["total_us"]["count"] == 5
    with open_store(mixed, create=False) as s:
        rows = {r.target: r for r in s.latest()}
    frame = frame_report["frame"]
    pi = rows["pi"]
    assert pi.frame_total_median_us == frame["total_us"]["median"]
    assert pi.frame_invoke_p99_us == frame["invoke_us"]["p99"]
    assert pi.frame_image == frame["image"] and pi.frame_runs == 5
    for target in ("nano", "jetson"):
        assert rows[target].frame_total_median_us is None
        assert rows[target].frame_runs is None


def test_fps_in_json_table_and_page(mixed, frame_report, tmp_path):
    median = frame_report["frame"]["total_us"]["median"]
    data = json.loads(CliRunner().invoke(app, ["report", "--reports", str(mixed),
                                               "--json"]).output)
    fps = {r["target"]: r["fps"] for r in data["latest"]}
    assert fps == {"pi": pytest.approx(1e6 / median), "nano": None, "jetson": None}
    frame = {r["target"]: r["frame_median_us"] for r in data["latest"]}
    assert frame["pi"] == median and frame["nano"] is None

    text = CliRunner().invoke(app, ["report", "--reports", str(mixed)]).output
    header = next(line for line in text.splitlines() if "┃ target" in line)
    assert re.search(r"frame\s*┃\s*frame p99\s*┃\s*fps", header)
    latest = text.split("History (")[0]
    cells = {c[1]: c for c in ([x.strip() for x in line.split("│")]
                               for line in latest.splitlines() if line.startswith("│ "))
             if len(c) > 3 and c[1]}
    assert cells["pi"][-2] == f"{1e6 / median:.1f}"
    assert cells["pi"][-4] == f"{median / 1e3:.3f}"
    assert cells["nano"][-2] == cells["jetson"][-2] == "—"

    page = tmp_path / "report.html"
    assert CliRunner().invoke(app, ["report", "--reports", str(mixed), "--html",
                                    str(page)]).exit_code == 0
    html = page.read_text(encoding="utf-8")
    assert "<th>frames/s</th>" in html
    rows = re.findall(r"<tr><td class=\"text\">(\w+)</td>.*?</tr>", html)
    assert sorted(rows) == ["jetson", "nano", "pi"]
    latest_rows = html.split('<table id="latest">')[1].split("</table>")[0].split("<tr>")
    pi_row = next(r for r in latest_rows if r.startswith('<td class="text">pi</td>'))
    assert pi_row.split("</tr>")[0].endswith(f"<td>{1e6 / median:.1f}</td>")
    nano_row = next(r for r in latest_rows if r.startswith('<td class="text">nano'))
    assert nano_row.split("</tr>")[0].endswith("<td>—</td><td>—</td><td>—</td>")
