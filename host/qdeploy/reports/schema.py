"""The report store's tables, their row types, and the migrations between store versions.

The `reports` table holds one row per qrun-bench report: the store's own columns
(id, target, model name; host name, report file, time added) around one column per
field of the report contract that names one (`qrun.measure.report_contract.FIELDS`). Its
CREATE statement, its row type `ReportRow` and the row `insert_row` makes of a
report are derived from that table, so a new report field needs no edit here.

The store's version is kept in `PRAGMA user_version` (`SCHEMA_VERSION`): 1 created
`reports` and `model_facts`, 2 added `verifications`, 3 its `scored` column (0 for a
model with no score vector, whose top-1 agreement means nothing; NULL before: scored), 4
`layer_reports` and `layer_rows` (`qdeploy evaluate --layers`, qdeploy.reports.layers). A field added to the contract
after a store was created becomes a column of its `reports` table at the next
`migrate` (rows stored before hold NULL there); so does an `optional` field of a
report that lacks it (a report of a qrun older than the field).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field, make_dataclass
from typing import Optional

from qrun.measure import report_contract as contract
from qrun.measure.report_contract import field_value, normalize_timestamp

SCHEMA_VERSION = 4  # of the SQLite file, in PRAGMA user_version (see the docstring)
TABLES = ("reports", "model_facts", "verifications", "layer_reports", "layer_rows")


def tables_at(version: int) -> tuple:
    """The tables a store of `version` holds (before it is migrated)."""
    return TABLES[:2] if version == 1 else TABLES[:3] if version in (2, 3) else \
        TABLES if version >= 4 else ()

# The reports table's own columns, before and after those of the report's fields.
OWN_FIRST = (("id", "INTEGER PRIMARY KEY"), ("target", "TEXT NOT NULL"),
             ("model_name", "TEXT NOT NULL"))
OWN_LAST = (("hostname", "TEXT NOT NULL"),  # host.hostname, "" when the report has none
            ("report_file", "TEXT NOT NULL"),  # the JSON file the report came in
            ("added", "TEXT NOT NULL"))  # when the store took it

REPORT_INDEXES = """
CREATE INDEX reports_by_series ON reports (target, model_name, variant, timestamp);
CREATE INDEX reports_by_sha ON reports (model_sha256);
"""
MODEL_FACTS = """
CREATE TABLE model_facts (
    sha256   TEXT PRIMARY KEY,
    variant  TEXT,
    size     INTEGER,
    accuracy REAL,
    source   TEXT NOT NULL,
    updated  TEXT NOT NULL
);
"""
# Version 2: what `qdeploy push --verify` measured, per target, model file and variant.
VERIFICATIONS = """
CREATE TABLE verifications (
    id               INTEGER PRIMARY KEY,
    target           TEXT NOT NULL,
    model_sha256     TEXT NOT NULL,
    variant          TEXT NOT NULL,
    device_used      TEXT NOT NULL,
    samples          INTEGER NOT NULL,
    agree            INTEGER NOT NULL,
    agreement        REAL NOT NULL,
    max_abs_diff     REAL NOT NULL,
    max_steps        REAL NOT NULL,
    worst_sample     INTEGER NOT NULL,
    tolerance_steps  REAL NOT NULL,
    ok               INTEGER NOT NULL,
    reference_sha256 TEXT NOT NULL,
    timestamp        TEXT NOT NULL,
    added            TEXT NOT NULL
);
CREATE INDEX verifications_by_series ON verifications (target, model_sha256, variant, timestamp);
"""
# Version 3: whether a verify compared top-1 (a score vector), so the store can say "—".
VERIFICATIONS_SCORED = "ALTER TABLE verifications ADD COLUMN scored INTEGER;"
# Version 4: `qdeploy evaluate --layers`, one report per run and one row per int8 tensor.
LAYERS = """
CREATE TABLE layer_reports (
    id INTEGER PRIMARY KEY, model_name TEXT NOT NULL, int8_sha256 TEXT NOT NULL,
    deployment TEXT NOT NULL, samples INTEGER NOT NULL, data TEXT NOT NULL,
    per_layer TEXT NOT NULL, matched INTEGER NOT NULL, int8_tensors INTEGER NOT NULL,
    float_tensors INTEGER NOT NULL, compare TEXT, notes TEXT NOT NULL, added TEXT NOT NULL
);
CREATE TABLE layer_rows (
    report_id INTEGER NOT NULL REFERENCES layer_reports (id), position INTEGER NOT NULL,
    op TEXT NOT NULL, tensor TEXT NOT NULL, dtype TEXT NOT NULL, scale REAL NOT NULL,
    zero_point INTEGER NOT NULL, range REAL NOT NULL, float_min REAL, float_max REAL,
    rmse_scale REAL, mean_error REAL, max_abs_error REAL, cumulative_rmse_scale REAL,
    cumulative_mean_error REAL, cumulative_max_abs_error REAL, per_tensor_rmse_scale REAL,
    flag TEXT NOT NULL, reason TEXT NOT NULL, fix TEXT NOT NULL, severity REAL NOT NULL,
    PRIMARY KEY (report_id, position)
);
CREATE INDEX layer_reports_by_model ON layer_reports (model_name, int8_sha256, added);
"""


# -- the reports table, from the report contract ----------------------------------

def stored_fields() -> list:
    """The contract's fields that have a column, in the contract's order."""
    return [f for f in contract.FIELDS if f.column]


def is_json(f: contract.Field) -> bool:
    """An object or list field, kept as JSON text."""
    return dict in f.types or list in f.types


def sql_type(f: contract.Field) -> str:
    if f.types == (int,):
        return "INTEGER"
    return "REAL" if float in f.types else "TEXT"


def takes_null(f: contract.Field) -> bool:
    """The column may hold NULL: the report may (null, or an optional field absent), or the
    store always let it."""
    return f.nullable or f.null_in_store or f.optional


def declaration(f: contract.Field) -> str:
    """The column's type, NOT NULL unless the report or the store allows null there."""
    return sql_type(f) + ("" if takes_null(f) else " NOT NULL")


def report_columns() -> list:
    """(name, declaration) of every column of the reports table, in table order."""
    return [*OWN_FIRST, *((f.column, declaration(f)) for f in stored_fields()), *OWN_LAST]


def create_reports() -> str:
    """The CREATE statements of the reports table and its indexes."""
    lines = ",\n".join(f"    {name:<18} {decl}" for name, decl in report_columns())
    return f"CREATE TABLE reports (\n{lines}\n);\n{REPORT_INDEXES}"


def missing_columns(connection: sqlite3.Connection) -> list:
    """(name, type) of the contract's columns this store's reports table lacks.

    None when the file has no reports table (a foreign file: `open_store` says so).
    """
    have = {row[1] for row in connection.execute("PRAGMA table_info(reports)")}
    if not have:
        return []
    return [(f.column, sql_type(f)) for f in stored_fields() if f.column not in have]


# Statements that take a store from version N-1 to N.
MIGRATIONS = {1: create_reports() + MODEL_FACTS, 2: VERIFICATIONS, 3: VERIFICATIONS_SCORED,
              4: LAYERS}


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the store to SCHEMA_VERSION and the contract's columns, in one transaction.

    A new file gets every step from version 0; a version-1 store gains the
    verifications table; a reports table without a column of the contract gains it.
    Another process may have migrated between our read and the lock, so the
    version and the columns are read again under it. Returns the version reached.
    """
    with connection:
        connection.execute("BEGIN IMMEDIATE")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    connection.execute(statement)
        if version < SCHEMA_VERSION:
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        for name, kind in missing_columns(connection):
            connection.execute(f"ALTER TABLE reports ADD COLUMN {name} {kind}")
    return SCHEMA_VERSION


# -- rows --------------------------------------------------------------------------

def python_type(f: contract.Field):
    kind = int if f.types == (int,) else float if float in f.types else str
    return Optional[kind] if takes_null(f) else kind


JOINED = ("accuracy",  # from model_facts, when known
          "agreement",  # latest verify of this target, model file and variant
          "max_abs_diff")


def row_columns() -> list:
    """The reports columns a ReportRow holds as they are, in its order (JSON lists come last)."""
    return ["id", "target", "model_name",
            *(f.column for f in stored_fields() if not is_json(f)), "hostname", "report_file"]


def list_columns() -> list:
    """The JSON list columns (the raw timings), decoded into the last fields of a ReportRow."""
    return [f.column for f in stored_fields() if list in f.types]


def row_type() -> type:
    """The dataclass of one stored report: its columns, then what other tables add.

    JSON object columns (the host facts) are kept in the store but not read back.
    """
    own = {"id": int, "target": str, "model_name": str, "hostname": str, "report_file": str}
    types = {f.column: python_type(f) for f in stored_fields()}
    fields = [(name, own.get(name) or types[name]) for name in row_columns()]
    fields += [(name, Optional[float], field(default=None)) for name in JOINED]
    fields += [(name, list, field(default_factory=list, repr=False)) for name in list_columns()]
    row = make_dataclass("ReportRow", fields)
    row.__module__ = __name__
    row.__doc__ = "One stored benchmark report, as `qdeploy report` shows it."
    return row


ReportRow = row_type()


def column_value(f: contract.Field, value):
    """A report value as its column keeps it: numbers as floats, objects and lists as JSON."""
    if value is None:
        return None
    if dict in f.types:
        return json.dumps(value, sort_keys=True)
    if list in f.types:
        return json.dumps([float(v) for v in value] if float in f.items else value)
    return float(value) if float in f.types else value


def insert_row(report: dict) -> dict:
    """The reports columns a validated report fills, by name."""
    row = {f.column: column_value(f, field_value(report, f)) for f in stored_fields()}
    row["model_sha256"] = row["model_sha256"].lower()  # looked up in lower case
    row["timestamp"] = normalize_timestamp(row["timestamp"])  # sorts as text
    return row


@dataclass
class Verification:
    """One variant's verify on a target: top-1 agreement and largest output difference."""

    target: str
    model_sha256: str
    variant: str
    device_used: str
    samples: int
    agree: int
    agreement: float
    max_abs_diff: float
    max_steps: float
    worst_sample: int
    tolerance_steps: float
    ok: bool
    reference_sha256: str
    timestamp: str
    scored: Optional[bool] = True  # False: no score vector, `agree` counts nothing


@dataclass
class ModelFacts:
    """Size and accuracy of one model file, by sha256."""

    sha256: str
    variant: Optional[str]
    size: Optional[int]
    accuracy: Optional[float]
    source: str
