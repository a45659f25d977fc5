"""`qdeploy push --eval DIR`: accuracy measured on the device, stored beside the latency;
`qdeploy report` shows it, flags a release whose accuracy dropped and plots accuracy
against latency."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from qdeploy.push.fleet import push_many
from qdeploy.remote import targets
from qdeploy.reports import store
from tests.fixtures.evalsets import coco_data
from tests.fixtures.sshd import push_options as options

pytest.importorskip("pycocotools", reason="the eval extra (pycocotools) scores detectors")


def test_local_push_stores_accuracy_beside_latency_and_report_shows_it(
        yolo_eval_dep, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("QDEPLOY_HOME", str(tmp_path / "device"))
    data = coco_data(tmp_path / "coco")
    reports = tmp_path / "r"
    code, out, err = run_cli("push", yolo_eval_dep, "--target", "local", "--compare",
                             "--eval", data, "--bench-runs", "3", "--no-verify",
                             "--reports", reports)
    assert code == 0, err
    assert "accuracy on 4 images: mAP50-95" in out + err
    (report_file,) = reports.glob("local-*.json")
    stored = json.loads(report_file.read_text())["reports"]
    assert {r["model"]["variant"]: r["accuracy"]["value"] for r in stored} == pytest.approx(
        {"float": 1.0, "int8": 1.0})
    assert stored[0]["accuracy"]["figures"]["map50"] == 1.0

    code, out, err = run_cli("report", "--reports", reports, "--json")
    assert code == 0, err
    latest = json.loads(out)["latest"]
    assert {r["variant"]: (r["accuracy_metric"], r["accuracy_images"]) for r in latest} == {
        "float": ("map50_95", 4), "int8": ("map50_95", 4)}

    # A later release whose int8 model scores less on the same data is flagged.
    document = json.loads(report_file.read_text())
    worse = document["reports"][1]
    worse["timestamp"] = "2099-01-01T00:00:00Z"
    worse["accuracy"]["value"] = 0.8
    later = tmp_path / "later.json"
    later.write_text(json.dumps(worse))
    with store.open_store(reports) as s:
        s.add_reports(worse, "local", later)
    code, out, err = run_cli("report", "--reports", reports, "--json")
    [drop] = json.loads(out)["accuracy_drops"]
    assert (drop["variant"], drop["value"], drop["previous"]) == ("int8", 0.8, pytest.approx(1.0))
    code, out, err = run_cli("report", "--reports", reports, "--plot", tmp_path / "p.png",
                             "--html", tmp_path / "p.html")
    assert code == 0, err
    assert "ACCURACY DROP" in out and "mAP50-95 0.800" in out
    with Image.open(tmp_path / "p.png") as png:
        assert png.size == (2100, 600)  # the accuracy-latency panel beside the two others
    assert 'id="accuracy-drops"' in (tmp_path / "p.html").read_text()


def test_eval_is_checked_before_connecting(yolo_eval_dep, tmp_path, run_cli):
    code, _, err = run_cli("push", yolo_eval_dep, "--target", "root@127.0.0.1:9",
                           "--eval", tmp_path / "missing")
    assert code == 1 and err.startswith("error: --eval") and "not a directory" in err
    (tmp_path / "d").mkdir()
    code, _, err = run_cli("push", yolo_eval_dep, "--target", "root@127.0.0.1:9",
                           "--eval", tmp_path / "d", "--no-bench")
    assert code == 1 and "drop --no-bench" in err


@pytest.mark.slow
def test_push_over_ssh_sends_the_data_once_and_installs_the_extra(
        sshd, ssh_client_key, device, device_wheelhouse, yolo_eval_dep, tmp_path,
        isolated_home):
    data = coco_data(tmp_path / "coco", shift=1.0)
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device), bench=True,
                   bench_runs=3, verify=False, compare=True, eval_data=data,
                   wheelhouse=device_wheelhouse)
    events = []
    result = push_many([targets.parse_target(sshd.target)], yolo_eval_dep, opts,
                       lambda t, stage, detail="", done=None, total=None:
                       events.append((stage, detail)))[0]
    assert result.ok, result.error
    [sent] = list((device / "eval").iterdir())
    assert (sent / "annotations.json").read_bytes() == (data / "annotations.json").read_bytes()
    assert sorted(p.name for p in (sent / "images").iterdir()) == sorted(
        p.name for p in (data / "images").iterdir())
    with store.open_store(tmp_path / "reports") as s:
        rows = {r.variant: r for r in s.latest()}
    assert set(rows) == {"float", "int8"}
    assert all(r.accuracy_metric == "map50_95" and r.accuracy_data == sent.name
               and 0 < r.accuracy_value < 1 for r in rows.values())
    from qrun.measure.evaluate import evaluate

    here = evaluate(yolo_eval_dep, data)["variants"]
    assert rows["float"].accuracy_value == pytest.approx(here["float"]["map50_95"])

    events.clear()
    again = push_many([targets.parse_target(sshd.target)], yolo_eval_dep, opts,
                      lambda t, stage, detail="", done=None, total=None:
                      events.append((stage, detail)))[0]
    assert again.ok, again.error
    assert ("eval", f"data {sent.name} already on the device") in events
