"""The SQLite report store, fed with reports of real benchmarks run by the fixtures."""

from __future__ import annotations

import copy
import json
import sqlite3

import pytest

from qdeploy.reports import naming, schema, store
from qrun.model import manifest as qmanifest
from qrun.errors import UserError
from qrun.model.preprocess import Preprocess
from tests.fixtures.reports import bench, old_store, scaled


def _store(tmp_path):
    return store.open_store(tmp_path / "reports")


def test_open_store_creates_versioned_schema_and_reopens(tmp_path):
    with _store(tmp_path) as s:
        assert s.path == tmp_path / "reports" / store.STORE_NAME
        assert s.count() == 0
    con = sqlite3.connect(tmp_path / "reports" / store.STORE_NAME)
    assert con.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    con.close()
    assert {"reports", "model_facts"} <= tables
    with _store(tmp_path) as s:  # a second open keeps the schema, does not recreate it
        assert s.count() == 0


def test_reader_does_not_create_a_store(tmp_path):
    with pytest.raises(UserError, match="no reports yet: run qdeploy push"):
        store.open_store(tmp_path / "none", create=False)
    assert not (tmp_path / "none").exists()


def test_newer_store_schema_and_foreign_file_refused(tmp_path):
    _store(tmp_path).close()
    path = tmp_path / "reports" / store.STORE_NAME
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(UserError, match=rf"store schema version {schema.SCHEMA_VERSION + 1}, "
                                        r"newer .*upgrade qdeploy"):
        store.open_store(tmp_path / "reports")
    other = tmp_path / "other"
    other.mkdir()
    (other / store.STORE_NAME).write_text("not a database at all, just text\n" * 100)
    with pytest.raises(UserError, match="is not a qdeploy report store"):
        store.open_store(other)


def test_real_report_round_trips(tmp_path, int8_report):
    with _store(tmp_path) as s:
        row_id = s.add_report(int8_report, "local", tmp_path / "r.json")
        [row] = s.latest()
    lat = int8_report["latency_us"]
    assert row.id == row_id
    assert (row.target, row.model_name, row.variant) == ("local", "mobilenet_v1_0.25_128",
                                                         "int8")
    assert row.model_sha256 == int8_report["model"]["sha256"]
    assert row.model_size == int8_report["model"]["size"]
    assert (row.device_used, row.device_reason) == ("cpu", int8_report["device"]["reason"])
    assert row.runtime_name == int8_report["runtime"]["name"]
    assert (row.median_us, row.p90_us, row.p99_us, row.count) == (
        lat["median"], lat["p90"], lat["p99"], lat["count"])
    assert row.init_ms == int8_report["init_ms"]
    assert row.peak_rss_kb == int8_report["peak_rss_kb"]
    assert row.timings_us == int8_report["timings_us"]
    assert row.report_file == str(tmp_path / "r.json")
    assert row.timestamp.endswith("Z")


def test_compare_document_gives_one_row_per_report(tmp_path, int8_report):
    other = bench(store.Path(int8_report["model"]["path"]))
    doc = {"schema_version": 1, "kind": "qrun-bench-compare",
           "reports": [int8_report, {**other, "model": {**other["model"], "variant": "edgetpu",
                                                        "path": "m_edgetpu.tflite"}}]}
    with _store(tmp_path) as s:
        ids = s.add_reports(doc, "local", tmp_path / "c.json")
        assert len(ids) == 2 and s.count() == 2
        assert {r.variant for r in s.latest()} == {"int8", "edgetpu"}
        # add_report takes a compare document too and returns its last row id.
        assert s.add_report(doc, "pi", tmp_path / "c.json") == max(ids) + 2


def test_compare_with_one_bad_report_stores_nothing(tmp_path, int8_report):
    bad = copy.deepcopy(int8_report)
    del bad["latency_us"]["median"]
    doc = {"schema_version": 1, "kind": "qrun-bench-compare", "reports": [int8_report, bad]}
    with _store(tmp_path) as s:
        with pytest.raises(UserError, match=r"reports\[1\].*missing field 'latency_us.median'"):
            s.add_reports(doc, "local", tmp_path / "c.json")
        assert s.count() == 0


@pytest.mark.parametrize("dotted", ["init_ms", "model.sha256", "latency_us.p99", "timings_us",
                                    "device.used", "runtime.version", "timestamp", "host"])
def test_missing_field_refused_naming_it(tmp_path, int8_report, dotted):
    bad = copy.deepcopy(int8_report)
    holder = bad
    *parents, leaf = dotted.split(".")
    for part in parents:
        holder = holder[part]
    del holder[leaf]
    with _store(tmp_path) as s:
        with pytest.raises(UserError) as err:
            s.add_report(bad, "local", tmp_path / "bad.json")
        assert s.count() == 0
    message = str(err.value)
    assert f"missing field '{dotted}'" in message and "bad.json" in message
    assert "\n" not in message


def test_newer_report_schema_refused_naming_version(tmp_path, int8_report):
    with _store(tmp_path) as s:
        with pytest.raises(UserError, match=r"report schema version 2, newer than this qdeploy "
                                            r"understands \(1\); upgrade qdeploy"):
            s.add_report({**int8_report, "schema_version": 2}, "local", tmp_path / "n.json")
        compare = {"schema_version": 3, "kind": "qrun-bench-compare", "reports": [int8_report]}
        with pytest.raises(UserError, match="report schema version 3"):
            s.add_report(compare, "local", tmp_path / "n.json")
        assert s.count() == 0


def test_malformed_fields_refused(tmp_path, int8_report):
    cases = [({**int8_report, "latency_us": {**int8_report["latency_us"], "median": "fast"}},
              "malformed field 'latency_us.median'"),
             ({**int8_report, "timings_us": [1.0, "x"]}, "malformed field 'timings_us'"),
             ({**int8_report, "timestamp": "yesterday"}, "not an ISO-8601"),
             ({**int8_report, "kind": "qrun-classify"}, "not a 'qrun-bench' report"),
             ([int8_report], "expected a JSON object")]
    with _store(tmp_path) as s:
        for bad, message in cases:
            with pytest.raises(UserError, match=message):
                s.add_report(bad, "local", tmp_path / "m.json")
        with pytest.raises(UserError, match="schema_version"):
            s.add_report({k: v for k, v in int8_report.items() if k != "schema_version"},
                         "local", tmp_path / "m.json")


def test_load_report_file(tmp_path, int8_report):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(int8_report))
    assert store.load_report_file(good)[0]["latency_us"] == int8_report["latency_us"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(int8_report)[:-10])
    with pytest.raises(UserError, match="broken.json is not valid JSON"):
        store.load_report_file(broken)


def test_latest_history_and_filters(tmp_path, int8_report):
    first = {**int8_report, "timestamp": "2026-01-01T10:00:00Z"}
    second = scaled(int8_report, 1.02, "2026-02-01T10:00:00Z")
    with _store(tmp_path) as s:
        s.add_report(second, "local", tmp_path / "2.json")  # stored out of time order
        s.add_report(first, "local", tmp_path / "1.json")
        s.add_report(first, "pi", tmp_path / "p.json")
        latest = s.latest()
        assert [(r.target, r.timestamp[:10]) for r in latest] == [("local", "2026-02-01"),
                                                                   ("pi", "2026-01-01")]
        assert [r.median_us for r in latest if r.target == "local"] == [
            second["latency_us"]["median"]]
        history = s.history(target="local")
        assert [r.timestamp[:10] for r in history] == ["2026-01-01", "2026-02-01"]
        assert len(s.history(since="2026-01-15")) == 1
        assert len(s.history(since="2026-01-01T11:00:00+01:00")) == 3  # 10:00Z is in
        sha = int8_report["model"]["sha256"]
        for name in ("mobilenet_v1_0.25_128", "mobilenet_v1_0.25_128_quant.tflite", sha[:8]):
            assert len(s.history(model=name)) == 3, name
        with pytest.raises(UserError, match="no reports for target 'nano'; known targets: "
                                            "local, pi"):
            s.latest(target="nano")
        with pytest.raises(UserError, match="no reports for model 'resnet'; known models: "
                                            "mobilenet_v1_0.25_128"):
            s.latest(model="resnet")
        with pytest.raises(UserError, match="--since 'last tuesday' is not an ISO-8601"):
            s.latest(since="last tuesday")


def test_model_facts_from_a_real_manifest(tmp_path, coral_int8, int8_report):
    model = tmp_path / "deploy" / coral_int8.name
    model.parent.mkdir()
    model.write_bytes(coral_int8.read_bytes())
    art = qmanifest.artifact_for(model)
    m = qmanifest.Manifest(inputs=[qmanifest.TensorSpec([1, 128, 128, 3], "uint8")],
                           outputs=[qmanifest.TensorSpec([1, 1001], "uint8")],
                           preprocess=Preprocess(), artifacts={"int8": art},
                           evaluation={"samples": 200, "float_accuracy": 0.9,
                                       "int8_accuracy": 0.875, "delta_pp": -2.5})
    qmanifest.save(m, model.parent)
    m = qmanifest.load(model.parent)  # as a later step reads it
    with _store(tmp_path) as s:
        s.add_report(int8_report, "local", tmp_path / "r.json")
        assert s.latest()[0].accuracy is None
        assert s.add_manifest_facts(m) == 1
        [row] = s.latest()
        assert row.accuracy == 0.875
        assert s.model_facts(art.sha256).size == coral_int8.stat().st_size
        s.add_model_facts(art.sha256, "int8", None, None)  # None keeps what is known
        assert s.latest()[0].accuracy == 0.875
        with pytest.raises(UserError, match="not a fraction"):
            s.add_model_facts(art.sha256, "int8", None, 87.5)


def test_accuracy_carried_in_the_report(tmp_path, int8_report):
    carried = {**int8_report, "evaluation": {"float_accuracy": 0.7, "int8_accuracy": 0.5}}
    with _store(tmp_path) as s:
        s.add_report(carried, "local", tmp_path / "r.json")
        assert s.latest()[0].accuracy == 0.5


def test_accuracy_carried_by_a_compare_document(tmp_path, int8_report):
    tpu = {**int8_report, "model": {**int8_report["model"], "variant": "edgetpu",
                                    "sha256": "e" * 64, "path": "m_edgetpu.tflite"}}
    doc = {"schema_version": 1, "kind": "qrun-bench-compare", "reports": [int8_report, tpu],
           "evaluation": {"float_accuracy": 0.91, "int8_accuracy": 0.9}}
    with _store(tmp_path) as s:
        s.add_reports(doc, "local", tmp_path / "c.json")
        assert {r.variant: r.accuracy for r in s.latest()} == {"int8": 0.9, "edgetpu": 0.9}


@pytest.mark.parametrize("evaluation, variant, expected", [
    ({"float_accuracy": 0.91, "int8_accuracy": 0.9}, "float", 0.91),
    ({"float_accuracy": 0.91, "int8_accuracy": 0.9}, "int8", 0.9),
    ({"float_accuracy": 0.91, "int8_accuracy": 0.9}, "edgetpu", 0.9),
    ({"float_accuracy": 0.91}, "int8", None),
    ({"int8_accuracy": 90.0}, "int8", None),  # a percentage, not a fraction: not guessed
    ({"int8_accuracy": True}, "int8", None),
    # Forms no qdeploy writes are not read: per variant, nested, one figure for all.
    ({"int8": 0.8}, "int8", None),
    ({"accuracy": {"float": {"accuracy": 0.7}}}, "float", None),
    ({"accuracy": 0.6}, "int8", None),
    (None, "int8", None),
])
def test_accuracy_for(evaluation, variant, expected):
    assert store.accuracy_for(evaluation, variant) == expected


def test_accuracy_for_reads_what_qdeploy_evaluate_records():
    """The record evaluate stores in the manifest, made by evaluate's own scoring."""
    import numpy as np

    from qdeploy.quantize.evaluate import score

    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    record = score(labels, np.array([0, 1, 2, 3, 4, 5, 0, 0]), labels, 4000, 1000,
                   "held-out").to_dict()
    assert store.accuracy_for(record, "float") == 1.0
    assert store.accuracy_for(record, "int8") == 0.75
    assert store.accuracy_for(record, "edgetpu") == 0.75


@pytest.mark.parametrize("path, name", [("mnist_int8.tflite", "mnist"),
                                        ("/r/current/mnist_edgetpu.tflite", "mnist"),
                                        ("mobilenet_v1_0.25_128_quant_edgetpu.tflite",
                                         "mobilenet_v1_0.25_128"),
                                        ("model_float.tflite", "model"),
                                        ("plain.tflite", "plain"),
                                        ("_int8.tflite", "_int8")])
def test_model_name_of(path, name):
    assert naming.model_name_of(path) == name


def test_parallel_writers_each_get_their_row(tmp_path, int8_report):
    """A fleet push stores from several threads at once, each with its own connection."""
    from concurrent.futures import ThreadPoolExecutor

    def push_one(i: int) -> int:
        with store.open_store(tmp_path / "reports") as s:
            return s.add_report(int8_report, f"pi{i}", tmp_path / f"{i}.json")

    with ThreadPoolExecutor(max_workers=6) as pool:
        ids = list(pool.map(push_one, range(12)))
    assert len(set(ids)) == 12
    with _store(tmp_path) as s:
        assert s.count() == 12 and len(s.targets()) == 12


def _verification(report: dict, **kw) -> store.Verification:
    base = dict(target="local", model_sha256=report["model"]["sha256"],
                variant=report["model"]["variant"], device_used="cpu", samples=3, agree=3,
                agreement=1.0, max_abs_diff=0.0, max_steps=0.0, worst_sample=0,
                tolerance_steps=16.0, ok=True, reference_sha256="ab" * 32,
                timestamp=report["timestamp"])
    base.update(kw)
    return store.Verification(**base)


def test_version_1_store_is_migrated_keeping_its_reports(tmp_path, int8_report):
    """A store written before verify existed (schema 1) gains the verifications table."""
    reports = tmp_path / "reports"
    old_store(reports, 1)
    with store.open_store(reports) as s:
        s.add_report(int8_report, "local", tmp_path / "r.json")
    # What the old qdeploy wrote stays readable; the new version and table are there.
    with store.open_store(reports) as s:
        [row] = s.latest()
        assert row.median_us == int8_report["latency_us"]["median"]
        assert row.agreement is None and row.max_abs_diff is None
        s.add_verification(_verification(int8_report, agree=2, agreement=2 / 3,
                                         max_abs_diff=0.2305, max_steps=59.0, ok=False))
        [row] = s.latest()
        assert (row.agreement, row.max_abs_diff) == (2 / 3, 0.2305)
    con = sqlite3.connect(reports / store.STORE_NAME)
    assert con.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 4
    con.close()


def test_latest_verification_of_the_same_model_file_and_target_wins(tmp_path, int8_report):
    with _store(tmp_path) as s:
        s.add_report(int8_report, "local", tmp_path / "r.json")
        s.add_verification(_verification(int8_report, agree=1, agreement=1 / 3,
                                         max_abs_diff=0.5, max_steps=128.0, ok=False,
                                         timestamp="2026-01-01T00:00:00Z"))
        s.add_verification(_verification(int8_report, timestamp="2026-01-02T00:00:00Z"))
        s.add_verification(_verification(int8_report, target="other", agreement=0.0,
                                         max_abs_diff=1.0))
        s.add_verification(_verification(int8_report, model_sha256="f" * 64, agreement=0.0))
        [row] = s.latest()
        assert (row.agreement, row.max_abs_diff) == (1.0, 0.0)
        assert [v.ok for v in s.verifications("local")] == [False, True, True]


def _deployment(source: str, shas: dict):
    """The manifest `qdeploy convert` writes for `source`: files named model_<variant>."""
    return qmanifest.Manifest(
        inputs=[qmanifest.TensorSpec([1, 128, 128, 3], "uint8")],
        outputs=[qmanifest.TensorSpec([1, 1001], "uint8")], preprocess=Preprocess(),
        artifacts={v: qmanifest.Artifact(f"model_{v}.tflite", sha, 1000)
                   for v, sha in shas.items()},
        converter={"source_model": source, "source_kind": "keras"})


def _on_device(report: dict, sha: str, variant: str, factor: float, when: str,
               release: str) -> dict:
    """`report` as qrun bench on a Pi reports a pushed convert output (resolved release path)."""
    r = scaled(report, factor, when)
    return {**r, "model": {**r["model"], "sha256": sha, "variant": variant,
                           "path": f"/home/pi/qdeploy/releases/{release}/model_{variant}.tflite"}}


def test_convert_deployments_are_series_of_their_source_model(tmp_path, int8_report):
    """Two unrelated models pushed to one target: no cross-model speed-up or regression."""
    from qdeploy.reports import history as reporting

    alpha = _deployment("alpha.keras", {"float": "a" * 64, "int8": "b" * 64})
    beta = _deployment("beta_savedmodel", {"float": "c" * 64, "int8": "d" * 64})
    with _store(tmp_path) as s:
        s.add_reports({"schema_version": 1, "kind": "qrun-bench-compare", "reports": [
            _on_device(int8_report, "a" * 64, "float", 1.0, "2026-05-01T10:00:00Z", "r1"),
            _on_device(int8_report, "b" * 64, "int8", 0.5, "2026-05-01T10:00:01Z", "r1")]},
            "pi", tmp_path / "1.json")
        s.add_manifest_facts(alpha)  # what push does after storing the reports
        s.add_report(_on_device(int8_report, "d" * 64, "int8", 3.0, "2026-05-02T10:00:00Z",
                                "r2"), "pi", tmp_path / "2.json")
        s.add_manifest_facts(beta)
        # a re-bench of alpha's int8 file, without its manifest, stays in alpha's series
        s.add_report(_on_device(int8_report, "b" * 64, "int8", 0.5, "2026-05-03T10:00:00Z",
                                "r1"), "pi", tmp_path / "3.json")
        assert sorted(s.models()) == ["alpha", "beta_savedmodel"]
        result = reporting.build(s)
        speedup = {(r.model, r.variant): r.speedup for r in result.table}
        assert speedup[("alpha", "int8")] == pytest.approx(2.0)
        assert speedup[("beta_savedmodel", "int8")] is None  # no float report of beta
        assert result.regressions == []  # beta is 6x slower than alpha, but not alpha
        assert [h.model for h in result.history] == ["alpha", "alpha", "beta_savedmodel",
                                                     "alpha"]
        assert {r.model_name for r in s.latest(model="alpha")} == {"alpha"}


@pytest.mark.parametrize("source, name", [("mnist.keras", "mnist"), ("net.h5", "net"),
                                          ("exported_sm", "exported_sm"),
                                          ("mnist_int8.tflite", "mnist"), ("", None)])
def test_deployment_name(source, name):
    assert naming.deployment_name(_deployment(source, {})) == name


def test_an_explicit_model_name_is_kept(tmp_path, int8_report):
    with _store(tmp_path) as s:
        s.add_report(_on_device(int8_report, "b" * 64, "int8", 1.0, "2026-05-01T10:00:00Z",
                                "r1"), "pi", tmp_path / "1.json", model_name="chosen")
        s.add_manifest_facts(_deployment("alpha.keras", {"int8": "b" * 64}))
        assert s.models() == ["chosen"]


# -- the task and input/output counts (optional fields, added with manifest schema 2) --

NEW_MODEL_FIELDS = ("task", "input_count", "output_count")


def older_report(report: dict) -> dict:
    """`report` as a qrun from before the optional model fields wrote it."""
    return {**report, "model": {k: v for k, v in report["model"].items()
                                if k not in NEW_MODEL_FIELDS}}


def test_report_without_the_optional_fields_is_stored_and_read(tmp_path, int8_report):
    assert (int8_report["model"]["task"], int8_report["model"]["input_count"],
            int8_report["model"]["output_count"]) == (None, 1, 1)  # a bare Coral file
    with _store(tmp_path) as s:
        s.add_report(older_report(int8_report), "old", tmp_path / "old.json")
        s.add_report(int8_report, "new", tmp_path / "new.json")
        rows = {r.target: r for r in s.latest()}
    assert (rows["old"].task, rows["old"].input_count, rows["old"].output_count) == (
        None, None, None)
    assert (rows["new"].task, rows["new"].input_count, rows["new"].output_count) == (
        None, 1, 1)
    assert rows["old"].median_us == int8_report["latency_us"]["median"]


@pytest.mark.parametrize("field, value, message", [
    ("input_count", None, "malformed field 'model.input_count' (expected int, got None)"),
    ("output_count", "2", "malformed field 'model.output_count' (expected int, got '2')"),
    ("task", 3, "malformed field 'model.task' (expected str, got 3)"),
])
def test_optional_fields_are_checked_when_present(tmp_path, int8_report, field, value,
                                                  message):
    bad = {**int8_report, "model": {**int8_report["model"], field: value}}
    with _store(tmp_path) as s:
        with pytest.raises(UserError) as err:
            s.add_report(bad, "local", tmp_path / "bad.json")
        assert s.count() == 0
    assert message in str(err.value)


def store_as_old_qdeploy_did(reports, report: dict, target: str) -> None:
    """A version-2 store holding `report` in the columns the old qdeploy had."""
    path = old_store(reports, 2)
    con = sqlite3.connect(path)
    columns = [r[1] for r in con.execute("PRAGMA table_info(reports)") if r[1] != "id"]
    row = {**schema.insert_row(older_report(report)), "target": target,
           "model_name": naming.model_name_of(report["model"]["path"]),
           "hostname": report["host"]["hostname"], "report_file": "old.json",
           "added": report["timestamp"]}
    con.execute(f"INSERT INTO reports ({', '.join(columns)}) VALUES "
                f"({', '.join('?' for _ in columns)})", [row[c] for c in columns])
    con.commit()
    con.close()


def test_an_old_stores_rows_get_an_empty_task(tmp_path, int8_report):
    reports = tmp_path / "reports"
    store_as_old_qdeploy_did(reports, int8_report, "pi")
    with store.open_store(reports) as s:  # migrated: the new columns added, NULL for old rows
        [old] = s.latest()
        assert (old.task, old.input_count, old.output_count) == (None, None, None)
        assert old.median_us == int8_report["latency_us"]["median"]
        s.add_report(int8_report, "local", tmp_path / "new.json")
        assert {r.target: r.input_count for r in s.latest()} == {"pi": None, "local": 1}


def test_a_verify_without_a_score_vector_has_no_agreement(tmp_path, int8_report):
    """A segmentation or detection model has no top-1: its agreement is unknown ("—"), not
    100%; its largest difference is still kept. Rows of a version-2 store count as scored."""
    reports = tmp_path / "reports"
    with store.open_store(reports) as s:
        s.add_report(int8_report, "local", tmp_path / "r.json")
        s.add_verification(_verification(int8_report, scored=False, max_abs_diff=0.5))
        [row] = s.latest()
        assert row.agreement is None and row.max_abs_diff == 0.5
        assert [v.scored for v in s.verifications()] == [False]
        s.add_verification(_verification(int8_report, agreement=0.75,
                                         timestamp="2099-01-01T00:00:00Z"))
        [row] = s.latest()
        assert row.agreement == 0.75
    con = sqlite3.connect(reports / store.STORE_NAME)
    with con:
        con.execute("UPDATE verifications SET scored = NULL")  # as a version-2 store held them
    con.close()
    with store.open_store(reports) as s:
        assert [v.scored for v in s.verifications()] == [True, True]
