"""The local report store: one SQLite file holding every benchmark brought home.

`qdeploy push` adds the `qrun bench --json` report of each target here (one row per
report, a compare run gives one row per variant); `qdeploy report` reads it back.
The file is `<reports_dir>/qdeploy.sqlite`, created with its schema when missing
(tables, row types and migrations: qdeploy.reports.schema; what a report holds:
qrun.measure.report_contract).

Rows are grouped by a model name (qdeploy.reports.naming): the model file's name
without its variant suffix, or what a caller that knows better passes as
`model_name=`. `add_manifest_facts` renames the reports of a deployment's files
after the manifest's source model, and a later report of a file already named that
way gets the same name.

Size and accuracy per model file are kept by sha256 in a second table
(`Store.add_model_facts`, or `Store.add_manifest_facts` for a whole deployment);
the size also comes with each report. The accuracy is what `qdeploy evaluate`
wrote in the manifest (see `accuracy_for`); a compare document or a report may
carry the same record as `evaluation`.

`qdeploy push --verify` adds, per target, model file and variant, the top-1 agreement
and largest output difference it measured (`Store.add_verification`, store schema 2);
report rows carry the latest of these for their model file.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

from qdeploy.reports import schema
from qdeploy.reports.naming import VARIANTS, deployment_name, model_name_of, series_order
from qdeploy.reports.schema import ModelFacts, ReportRow, Verification
from qrun.errors import UserError
from qrun.model.layout import EDGETPU, INT8
from qrun.measure.report_contract import NUMBER, normalize_timestamp, reports_in

STORE_NAME = "qdeploy.sqlite"


def load_report_file(path: Path) -> list[dict]:
    """Read a report file written by `qrun bench --json` and validate it."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read report {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None
    return reports_in(document, str(path))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def accuracy_for(evaluation, variant: str) -> Optional[float]:
    """The accuracy (a fraction) of `variant` in a `qdeploy evaluate` record, or None.

    The record is what evaluate writes in the manifest (`evaluation`):
    `float_accuracy` and `int8_accuracy`, fractions in [0, 1]. The compiled Edge TPU
    model computes what its int8 model computes, so `edgetpu` gets the int8 figure.
    """
    if not isinstance(evaluation, dict):
        return None
    value = evaluation.get(f"{INT8 if variant == EDGETPU else variant}_accuracy")
    if isinstance(value, NUMBER) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    return None


def _accuracy_of(report: dict, evaluation=None) -> Optional[float]:
    """Accuracy a report carries: its own `evaluation` record, or its document's."""
    variant = report["model"]["variant"]
    for record in (report.get("evaluation"), evaluation):
        found = accuracy_for(record, variant)
        if found is not None:
            return found
    return None


class Store:
    """An open report store. Use `open_store`; close it (or use `with`)."""

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self.connection = connection
        self.path = path

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.connection.close()

    # -- writing -----------------------------------------------------------------

    def add_report(self, report: dict, target: str, report_file: Path, *,
                   model_name: Optional[str] = None) -> int:
        """Validate one qrun-bench report and store it for `target`; return its row id.

        A compare document (`kind: qrun-bench-compare`) is accepted too: every report
        in it is stored and the id of the last row is returned (`add_reports` returns
        them all). Nothing is stored if any report in it is invalid.
        """
        return self.add_reports(report, target, report_file, model_name=model_name)[-1]

    def add_reports(self, document: dict, target: str, report_file: Path, *,
                    model_name: Optional[str] = None) -> list[int]:
        """Store every report of a `qrun bench --json` document; return the row ids."""
        if not target:
            raise UserError("a report needs a target name")
        reports = reports_in(document, str(report_file))
        evaluation = document.get("evaluation")  # a compare run may carry the manifest's
        ids = []
        with self.connection:  # one transaction: all rows or none
            for report in reports:
                ids.append(self._insert(report, target, str(report_file), model_name,
                                        evaluation))
        return ids

    def _insert(self, r: dict, target: str, report_file: str, model_name: Optional[str],
                evaluation=None) -> int:
        model = r["model"]
        name = model_name or self._known_name(model["sha256"].lower(), model["path"])
        row = {"target": target, "model_name": name, **schema.insert_row(r),
               "hostname": str(r["host"].get("hostname") or ""), "report_file": report_file,
               "added": _now()}
        columns = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        cursor = self.connection.execute(f"INSERT INTO reports ({columns}) VALUES ({marks})", row)
        accuracy = _accuracy_of(r, evaluation)
        self._upsert_facts(row["model_sha256"], row["variant"], row["model_size"], accuracy,
                           "report")
        return cursor.lastrowid

    def add_model_facts(self, sha256: str, variant: Optional[str] = None,
                        size: Optional[int] = None, accuracy: Optional[float] = None,
                        source: str = "manifest") -> None:
        """Record size and/or accuracy (a fraction in [0, 1]) of the model file `sha256`.

        Figures given as None keep what the store already knows.
        """
        if accuracy is not None and not (0.0 <= float(accuracy) <= 1.0):
            raise UserError(f"accuracy {accuracy} of model {sha256[:12]} is not a fraction "
                            "between 0 and 1")
        with self.connection:
            self._upsert_facts(sha256.lower(), variant, size, accuracy, source)

    def add_manifest_facts(self, manifest, variants: Iterable[str] = VARIANTS) -> int:
        """Record size and accuracy of each model artifact of a qrun `Manifest`.

        Accuracy is read from `manifest.evaluation` (see `accuracy_for`): what
        `qdeploy evaluate` wrote. Returns how many artifacts were recorded.
        """
        recorded = 0
        shas = []
        for variant in variants:
            art = manifest.artifacts.get(variant)
            if art is None:
                continue
            self.add_model_facts(art.sha256, variant, art.size,
                                 accuracy_for(manifest.evaluation, variant), source="manifest")
            shas.append(art.sha256.lower())
            recorded += 1
        name = deployment_name(manifest)
        if name is not None and shas:
            self.name_series(shas, name)
        return recorded

    def name_series(self, sha256s: Iterable[str], name: str) -> int:
        """Give the reports of these model files the model name `name`; how many changed.

        Only rows still named after their file (`model_int8.tflite` -> `model`) change: a
        name a caller passed to `add_report(model_name=...)` is kept. Later reports of the
        same files get `name` too (see `_known_name`).
        """
        shas = [s.lower() for s in sha256s]
        marks = ", ".join("?" for _ in shas)
        rows = self.connection.execute(
            f"SELECT id, model_name, model_path FROM reports WHERE model_sha256 IN ({marks})",
            shas).fetchall()
        ids = [i for i, current, path in rows if current == model_name_of(path) != name]
        with self.connection:
            self.connection.executemany("UPDATE reports SET model_name = ? WHERE id = ?",
                                        [(name, i) for i in ids])
        return len(ids)

    def _known_name(self, sha256: str, path: str) -> str:
        """The name earlier reports of this model file were given, else the file's name."""
        default = model_name_of(path)
        row = self.connection.execute(
            "SELECT model_name FROM reports WHERE model_sha256 = ? AND model_name != ? "
            "ORDER BY id DESC LIMIT 1", (sha256, default)).fetchone()
        return row[0] if row else default

    def add_verification(self, v: Verification) -> int:
        """Store one variant's verify figures; return the row id."""
        row = asdict(v)
        row["model_sha256"] = row["model_sha256"].lower()
        row["ok"] = int(bool(row["ok"]))
        row["scored"] = None if row["scored"] is None else int(bool(row["scored"]))
        row["timestamp"] = normalize_timestamp(row["timestamp"] or _now())
        row["added"] = _now()
        columns = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self.connection:
            cursor = self.connection.execute(
                f"INSERT INTO verifications ({columns}) VALUES ({marks})", row)
        return cursor.lastrowid

    def verifications(self, target: Optional[str] = None) -> list[Verification]:
        """Stored verify figures, oldest first; only `target`'s when given."""
        names = list(Verification.__dataclass_fields__)
        sql = f"SELECT {', '.join(names)} FROM verifications"
        params: list = []
        if target is not None:
            sql += " WHERE target = ?"
            params.append(target)
        rows = self.connection.execute(sql + " ORDER BY timestamp, id", params)
        return [Verification(**{**dict(zip(names, r)), "ok": bool(r[names.index("ok")]),
                                "scored": r[names.index("scored")] != 0})
                for r in rows]

    def _upsert_facts(self, sha256, variant, size, accuracy, source) -> None:
        self.connection.execute(
            "INSERT INTO model_facts (sha256, variant, size, accuracy, source, updated) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(sha256) DO UPDATE SET "
            "variant = COALESCE(excluded.variant, variant), "
            "size = COALESCE(excluded.size, size), "
            "accuracy = COALESCE(excluded.accuracy, accuracy), "
            "source = CASE WHEN excluded.accuracy IS NOT NULL THEN excluded.source "
            "ELSE source END, updated = excluded.updated",
            (sha256, variant, size, None if accuracy is None else float(accuracy), source,
             _now()))

    # -- reading -----------------------------------------------------------------

    def count(self) -> int:
        """How many reports the store holds."""
        return self.connection.execute("SELECT COUNT(*) FROM reports").fetchone()[0]

    def targets(self) -> list[str]:
        """Every target with a report, sorted."""
        rows = self.connection.execute("SELECT DISTINCT target FROM reports ORDER BY target")
        return [r[0] for r in rows]

    def models(self) -> list[str]:
        """Every model name with a report, sorted."""
        rows = self.connection.execute(
            "SELECT DISTINCT model_name FROM reports ORDER BY model_name")
        return [r[0] for r in rows]

    def model_facts(self, sha256: str) -> Optional[ModelFacts]:
        """What the store knows about the model file `sha256`, or None."""
        row = self.connection.execute(
            "SELECT sha256, variant, size, accuracy, source FROM model_facts WHERE sha256 = ?",
            (sha256.lower(),)).fetchone()
        return ModelFacts(*row) if row else None

    def history(self, target: Optional[str] = None, model: Optional[str] = None,
                since: Optional[str] = None) -> list[ReportRow]:
        """Reports matching the filters, oldest first (by report timestamp, then id).

        `target` is a target name; `model` a model name, a model file name or path, or a
        sha256 prefix of at least 6 hex digits; `since` an ISO-8601 date or time (UTC when
        no zone is given). An unknown target or model is a UserError listing known ones.
        """
        where, params = self._filters(target, model, since)
        return self._select(where, params, latest_only=False)

    def latest(self, target: Optional[str] = None, model: Optional[str] = None,
               since: Optional[str] = None) -> list[ReportRow]:
        """The newest report per (target, model, variant) matching the filters."""
        where, params = self._filters(target, model, since)
        return self._select(where, params, latest_only=True)

    def _filters(self, target, model, since) -> tuple[list[str], list]:
        where, params = [], []
        if target is not None:
            known = self.targets()
            if target not in known:
                raise UserError(f"no reports for target {target!r}; known targets: "
                                f"{', '.join(known) or 'none'}")
            where.append("r.target = ?")
            params.append(target)
        if model is not None:
            clause, values = self._model_clause(model)
            where.append(clause)
            params.extend(values)
        if since is not None:
            where.append("r.timestamp >= ?")
            params.append(normalize_timestamp(since, what="--since"))
        return where, params

    def _model_clause(self, model: str) -> tuple[str, list]:
        text = model.strip()
        candidates = [
            ("r.model_name = ?", [text]),
            ("r.model_path = ? OR r.model_path LIKE ? ESCAPE '\\'",
             [text, "%/" + _like_escape(Path(text).name)]),
        ]
        if len(text) >= 6 and all(c in "0123456789abcdefABCDEF" for c in text):
            candidates.append(("r.model_sha256 LIKE ? ESCAPE '\\'",
                               [_like_escape(text.lower()) + "%"]))
        for clause, values in candidates:
            hit = self.connection.execute(
                f"SELECT 1 FROM reports r WHERE {clause} LIMIT 1", values).fetchone()
            if hit:
                return f"({clause})", values
        raise UserError(f"no reports for model {model!r}; known models: "
                        f"{', '.join(self.models()) or 'none'}")

    def _select(self, where: list[str], params: list, latest_only: bool) -> list[ReportRow]:
        condition = " AND ".join(where) if where else "1"
        names, lists = schema.row_columns(), schema.list_columns()
        verified = ("(SELECT {} FROM verifications v WHERE v.target = r.target AND "
                    "v.model_sha256 = r.model_sha256 AND v.variant = r.variant "
                    "ORDER BY v.timestamp DESC, v.id DESC LIMIT 1)")
        agreement = "CASE WHEN v.scored = 0 THEN NULL ELSE v.agreement END"  # no top-1: "—"
        columns = [f"r.{n}" for n in names] + ["f.accuracy", verified.format(agreement),
                                                verified.format("v.max_abs_diff")]
        sql = (f"SELECT {', '.join(columns + [f'r.{n}' for n in lists])} FROM reports r "
               f"LEFT JOIN model_facts f ON f.sha256 = r.model_sha256 "
               f"WHERE {condition} ORDER BY r.timestamp, r.id")
        rows = []
        for values in self.connection.execute(sql, params):
            plain = dict(zip([*names, *schema.JOINED], values))
            decoded = {n: json.loads(v) if v is not None else []
                       for n, v in zip(lists, values[len(plain):])}
            rows.append(ReportRow(**plain, **decoded))
        if not latest_only:
            return rows
        newest = {}
        for row in rows:  # oldest first, so the last one seen per series wins
            newest[(row.target, row.model_name, row.variant)] = row
        return [newest[key] for key in sorted(newest, key=series_order)]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def open_store(reports_dir: Path, create: bool = True) -> Store:
    """Open (creating it and its schema if missing) `<reports_dir>/qdeploy.sqlite`.

    With `create=False` a missing store is a UserError ("no reports yet") and nothing
    is created: readers use that. A store written by a newer qdeploy (higher
    `user_version`) is refused with a UserError; so is a file that is not SQLite.
    An older store is migrated (see `schema.migrate`).
    """
    reports_dir = Path(reports_dir)
    if not create and not (reports_dir / STORE_NAME).is_file():
        raise UserError(f"no reports yet: run qdeploy push (no report store in {reports_dir})")
    try:
        reports_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the reports directory {reports_dir}: "
                        f"{exc.strerror or exc}") from None
    path = reports_dir / STORE_NAME
    try:
        connection = sqlite3.connect(str(path), timeout=30.0)
        version = connection.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path} is not a qdeploy report store ({exc}); move it away") from None
    if version > schema.SCHEMA_VERSION:
        connection.close()
        raise UserError(f"{path} has store schema version {version}, newer than this qdeploy "
                        f"understands ({schema.SCHEMA_VERSION}); upgrade qdeploy")
    if version < schema.SCHEMA_VERSION:
        _check_tables(connection, path, schema.tables_at(version))  # foreign or damaged?
        _migrate(connection, path, version)
    _check_tables(connection, path)
    if schema.missing_columns(connection):  # a report field newer than the store
        _migrate(connection, path, version)
    return Store(connection, path)


def _migrate(connection: sqlite3.Connection, path: Path, version: int) -> None:
    try:
        schema.migrate(connection)
    except sqlite3.DatabaseError as exc:
        connection.close()
        what = "create" if version == 0 else f"upgrade (version {version})"
        raise UserError(f"cannot {what} the report store {path}: {exc}") from None


def _check_tables(connection: sqlite3.Connection, path: Path,
                  expected: tuple = schema.TABLES) -> None:
    """Refuse a damaged store, or a foreign SQLite file without the store's tables."""
    try:
        tables = {r[0] for r in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        connection.close()
        raise unreadable(path, exc) from None
    missing = sorted(set(expected) - tables)
    if missing:
        connection.close()
        raise unreadable(path, f"no table {missing[0]}")


def unreadable(path: Path, why) -> UserError:
    """The one line for a damaged store or a foreign SQLite file in its place."""
    return UserError(f"{path} is not a readable qdeploy report store ({why}); move it away "
                     "(the JSON reports beside it are kept) and push again")
