"""The report store's tables are derived from the report contract, and old stores still open."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys

import pytest

from qdeploy.reports import schema, store
from qrun.measure import report_contract as contract
from qrun.errors import UserError
from tests.fixtures.reports import STORE_V1, STORE_V2, old_store
from tests.paths import ROOT

# The columns the contract's optional fields (model.task, model.input_count,
# model.output_count) added after store version 2, as migrate adds them to an old store.
ADDED_SINCE_V2 = """
ALTER TABLE reports ADD COLUMN task TEXT;
ALTER TABLE reports ADD COLUMN input_count INTEGER;
ALTER TABLE reports ADD COLUMN output_count INTEGER;
ALTER TABLE reports ADD COLUMN frame_image TEXT;
ALTER TABLE reports ADD COLUMN frame_runs INTEGER;
""" + "".join(f"ALTER TABLE reports ADD COLUMN frame_{stage}_{stat}_us REAL;\n"
              for stage in ("preprocess", "invoke", "postprocess", "total")
              for stat in ("median", "p99")) + """
ALTER TABLE reports ADD COLUMN stream_video TEXT;
ALTER TABLE reports ADD COLUMN stream_frames INTEGER;
ALTER TABLE reports ADD COLUMN stream_fps REAL;
ALTER TABLE reports ADD COLUMN stream_dropped INTEGER;
""" + "".join(f"ALTER TABLE reports ADD COLUMN stream_{stage}_{stat}_ms REAL;\n"
              for stage in ("capture", "preprocess", "invoke", "postprocess", "sink")
              for stat in ("median", "p99")) + """
ALTER TABLE reports ADD COLUMN accuracy_metric TEXT;
ALTER TABLE reports ADD COLUMN accuracy_value REAL;
ALTER TABLE reports ADD COLUMN accuracy_images INTEGER;
ALTER TABLE reports ADD COLUMN accuracy_data TEXT;
"""


def table_layout(connection: sqlite3.Connection, table: str) -> tuple:
    """Every column (name -> type, not null, default, primary key) and index of a table."""
    columns = {r[1]: r[2:] for r in connection.execute(f"PRAGMA table_info({table})")}
    indexes = {r[1]: [c[2] for c in connection.execute(f"PRAGMA index_info({r[1]})")]
               for r in connection.execute(f"PRAGMA index_list({table})")}
    return columns, indexes


def layouts(sql: str) -> dict:
    con = sqlite3.connect(":memory:")
    con.executescript(sql)
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    result = {name: table_layout(con, name) for name in names}
    con.close()
    return result


def test_derived_tables_are_the_tables_old_stores_have():
    derived = layouts(schema.MIGRATIONS[1] + schema.MIGRATIONS[2])
    # Adapted for the optional fields: a fresh store has the old columns and the added
    # ones, declared as the migration of an old store declares them.
    assert derived == layouts(STORE_V1 + STORE_V2 + ADDED_SINCE_V2)
    # Adapted for `qrun bench --image`: 10 optional frame columns; for --video: 14 stream ones;
    # for `push --eval`: 4 optional accuracy columns.
    assert len(derived["reports"][0]) == 34 + 3 + 10 + 14 + 4 and len(derived["reports"][1]) == 2


def test_every_contract_column_is_in_the_row_and_the_insert(int8_report):
    contract_columns = [f.column for f in contract.FIELDS if f.column]
    table = [name for name, _ in schema.report_columns()]
    assert table == ["id", "target", "model_name", *contract_columns, "hostname",
                     "report_file", "added"]
    row_fields = [f.name for f in dataclasses.fields(schema.ReportRow)]
    # The host facts are archived as JSON, not read back; `added` is the store's own.
    assert set(row_fields) == set(table) - {"host_json", "added"} | set(schema.JOINED)
    row = schema.insert_row(contract.validate(int8_report))
    assert list(row) == contract_columns
    assert row["model_sha256"] == int8_report["model"]["sha256"].lower()
    assert row["median_us"] == int8_report["latency_us"]["median"]
    assert json.loads(row["timings_us"]) == int8_report["timings_us"]
    assert json.loads(row["host_json"]) == int8_report["host"]


def test_each_column_type_follows_the_field_types():
    for f in contract.FIELDS:
        if f.column:
            expected = {(int,): "INTEGER", contract.NUMBER: "REAL"}.get(f.types, "TEXT")
            assert schema.sql_type(f) == expected, f.path


def test_version_2_store_opens_and_keeps_its_layout(tmp_path, int8_report):
    path = old_store(tmp_path / "reports", 2)
    with store.open_store(tmp_path / "reports") as s:
        s.add_report(int8_report, "pi", tmp_path / "r.json")
    with store.open_store(tmp_path / "reports", create=False) as s:
        [row] = s.latest()
        assert row.median_us == int8_report["latency_us"]["median"]
    con = sqlite3.connect(path)
    # Adapted: migrated to version 4 (3: verifications.scored; 4: the layer tables of
    # evaluate --layers); the reports table keeps its layout and gains the optional
    # fields' columns.
    assert con.execute("PRAGMA user_version").fetchone()[0] == 4
    assert {"layer_reports", "layer_rows"} <= {r[0] for r in con.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert [r[1] for r in con.execute("PRAGMA table_info(verifications)")][-1] == "scored"
    assert table_layout(con, "reports") == layouts(STORE_V1 + ADDED_SINCE_V2)["reports"]
    con.close()


# Run in a fresh interpreter: the store derives its table when it is imported.
EXTENDED = """
import json, sys
from pathlib import Path
from qrun.measure import report_contract as contract
contract.FIELDS += (contract.Field("latency_us.p95", contract.NUMBER, column="p95_us"),
                    contract.Field("temperature_c", contract.NUMBER, nullable=True,
                                   column="temperature_c"))
from qdeploy.reports import history, schema, store
from qrun.errors import UserError
from qrun.measure import bench

report = json.loads(Path(sys.argv[1]).read_text())
out = {"keys": list(contract.keys()), "row_fields": list(schema.ReportRow.__dataclass_fields__),
       "insert": list(schema.insert_row(report)),
       "bench_fields": list(bench.BenchReport.__dataclass_fields__),
       "table_fields": list(history.TableRow.__dataclass_fields__)}
written = bench.BenchReport(**{k: report[k] for k in contract.keys()
                                if k not in ("schema_version", "kind")})
out["bench_keys"] = list(written.to_dict())
out["bench_temperature"] = written.to_dict()["temperature_c"]
try:
    contract.validate({**report, "latency_us": {k: v for k, v in report["latency_us"].items()
                                                if k != "p95"}}, "r.json")
except UserError as exc:
    out["refused"] = str(exc)
for reports in sys.argv[2:]:
    with store.open_store(Path(reports)) as s:
        s.add_report(report, "pi", Path(reports) / "r.json")
        out[reports] = {
            "columns": {r[1]: [r[2], r[3]] for r in s.connection.execute(
                "PRAGMA table_info(reports)")},
            "rows": [[r.p95_us, r.temperature_c] for r in s.history()],
            "table": [[r.p95_us, r.temperature_c] for r in history.build(s).table]}
print(json.dumps(out))
"""


def test_a_new_report_field_takes_only_its_line_in_the_contract(tmp_path, int8_report):
    """Two fields added to the contract alone reach validation, table, row and insert, and
    the rows of qrun bench's report and of qdeploy report's table."""
    report = {**int8_report, "latency_us": {**int8_report["latency_us"], "p95": 123.5},
              "temperature_c": 48.0}
    (tmp_path / "r.json").write_text(json.dumps(report))
    fresh, older = tmp_path / "fresh", tmp_path / "older"
    old_store(older, 2)
    with store.open_store(older) as s:  # a row stored before the fields existed
        s.add_report(int8_report, "pi", older / "before.json")
    done = subprocess.run([sys.executable, "-c", EXTENDED, str(tmp_path / "r.json"), str(fresh),
                           str(older)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["keys"] == [*contract.keys(), "temperature_c"]
    assert out["refused"] == "r.json is missing field 'latency_us.p95'; re-run qrun bench"
    assert {"p95_us", "temperature_c"} <= set(out["row_fields"])
    assert {"p95_us", "temperature_c"} <= set(out["insert"])
    new = out[str(fresh)]
    assert (new["columns"]["p95_us"], new["columns"]["temperature_c"]) == (["REAL", 1],
                                                                           ["REAL", 0])
    assert new["rows"] == [[123.5, 48.0]]
    old = out[str(older)]  # gained the columns; the earlier row holds NULL there
    assert (old["columns"]["p95_us"], old["columns"]["temperature_c"]) == (["REAL", 0],
                                                                           ["REAL", 0])
    assert old["rows"] == [[None, None], [123.5, 48.0]]
    with store.open_store(older) as s:  # and the current qdeploy still reads that store
        assert len(s.history()) == 2
    # qrun bench's report type and qdeploy report's table rows take the fields too: the
    # top-level one is an attribute of the report qrun bench writes, in the contract's
    # place; both columns are attributes (and --json keys) of a table row.
    assert "temperature_c" in out["bench_fields"] and "p95_us" not in out["bench_fields"]
    assert out["bench_keys"] == out["keys"] and out["bench_temperature"] == 48.0
    assert {"p95_us", "temperature_c"} <= set(out["table_fields"])
    assert new["table"] == [[123.5, 48.0]]
    assert old["table"] == [[123.5, 48.0]]  # the latest report of the series


def test_validation_messages_come_from_the_contract(int8_report):
    bad = {**int8_report, "settings": {**int8_report["settings"], "runs": None}}
    with pytest.raises(UserError, match=r"^r.json has a malformed field 'settings.runs' "
                                        r"\(expected int, got None\)$"):
        contract.validate(bad, "r.json")
    threads = {**int8_report, "settings": {**int8_report["settings"], "threads": None}}
    assert contract.validate(threads, "r.json") is threads
    with pytest.raises(UserError, match=r"malformed field 'init_ms' \(not a finite number\)"):
        contract.validate({**int8_report, "init_ms": float("nan")}, "r.json")
    with pytest.raises(UserError, match=r"malformed field 'peak_rss_kb' \(expected int, "
                                        r"got 1.5\)"):
        contract.validate({**int8_report, "peak_rss_kb": 1.5}, "r.json")
