"""The local report store: one SQLite file holding every benchmark brought home.

`qdeploy push` adds the `qrun bench --json` report of each target here (one row per
report, a compare run gives one row per variant); `qdeploy report` reads it back.
The file is `<reports_dir>/qdeploy.sqlite`, created with its schema when missing;
the schema version is kept in `PRAGMA user_version`.

Rows are grouped by a *model name*: the model file's stem with its variant suffix
removed (`mnist_int8.tflite`, `mnist_edgetpu.tflite` and `mnist_float.tflite` are
all model `mnist`), so the variants of one deployment can be compared and the
history of one model followed across pushes whose sha256 changed. A caller that
knows better (e.g. the deployment's directory name) passes `model_name=`.
`qdeploy convert` names every model `model_*.tflite`, so `add_manifest_facts`
renames the reports of a deployment's files after the manifest's source model
(`converter.source_model`: `mnist.keras` -> `mnist`; see `deployment_name`), and a
later report of a file already named that way gets the same name.

Size and accuracy per model file are kept by sha256 in a second table
(`Store.add_model_facts`, or `Store.add_manifest_facts` for a whole deployment);
the size also comes with each report. A report may carry its accuracy itself
(`model.accuracy`, or an `evaluation` record in `qdeploy evaluate`'s form on the
report or on the compare document: see `accuracy_for`); it is recorded as a model
fact.

`qdeploy push --verify` adds, per target, model file and variant, the top-1 agreement
and largest output difference it measured (`Store.add_verification`, store schema 2);
report rows carry the latest of these for their model file.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

from qrun.errors import UserError

STORE_NAME = "qdeploy.sqlite"
SCHEMA_VERSION = 2  # of the SQLite file, in PRAGMA user_version (2 added verifications)
REPORT_SCHEMA_VERSION = 1  # newest qrun-bench report this qdeploy reads
BENCH_KIND = "qrun-bench"
COMPARE_KIND = "qrun-bench-compare"
VARIANTS = ("float", "int8", "edgetpu")
# File-name endings that name a variant rather than the model, longest first.
VARIANT_SUFFIXES = ("_quant_edgetpu", "_int8_edgetpu", "_edgetpu", "_quant", "_int8",
                    "_float32", "_float16", "_float")

_SCHEMA = """
CREATE TABLE reports (
    id                 INTEGER PRIMARY KEY,
    target             TEXT NOT NULL,
    model_name         TEXT NOT NULL,
    model_sha256       TEXT NOT NULL,
    model_path         TEXT NOT NULL,
    model_size         INTEGER NOT NULL,
    variant            TEXT NOT NULL,
    device_requested   TEXT NOT NULL,
    device_used        TEXT NOT NULL,
    device_reason      TEXT NOT NULL,
    runtime_name       TEXT NOT NULL,
    runtime_version    TEXT NOT NULL,
    qrun_version       TEXT NOT NULL,
    runs               INTEGER,
    warmup             INTEGER,
    threads            INTEGER,
    init_ms            REAL NOT NULL,
    first_inference_ms REAL NOT NULL,
    warmup_mean_ms     REAL NOT NULL,
    count              INTEGER NOT NULL,
    min_us             REAL NOT NULL,
    median_us          REAL NOT NULL,
    mean_us            REAL NOT NULL,
    std_us             REAL NOT NULL,
    p90_us             REAL NOT NULL,
    p99_us             REAL NOT NULL,
    max_us             REAL NOT NULL,
    peak_rss_kb        INTEGER,
    timestamp          TEXT NOT NULL,
    hostname           TEXT NOT NULL,
    host_json          TEXT NOT NULL,
    report_file        TEXT NOT NULL,
    timings_us         TEXT NOT NULL,
    added              TEXT NOT NULL
);
CREATE INDEX reports_by_series ON reports (target, model_name, variant, timestamp);
CREATE INDEX reports_by_sha ON reports (model_sha256);
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
_SCHEMA_V2 = """
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
# Statements that take a store from version N-1 to N.
_MIGRATIONS = {1: _SCHEMA, 2: _SCHEMA_V2}
TABLES = ("reports", "model_facts", "verifications")

_NUMBER = (int, float)
# (dotted field, accepted types, may be null) of a qrun-bench report, in schema order.
_FIELDS = (
    ("timestamp", (str,), False),
    ("qrun_version", (str,), False),
    ("model", (dict,), False),
    ("model.path", (str,), False),
    ("model.sha256", (str,), False),
    ("model.size", (int,), False),
    ("model.variant", (str,), False),
    ("runtime", (dict,), False),
    ("runtime.name", (str,), False),
    ("runtime.version", (str,), False),
    ("device", (dict,), False),
    ("device.requested", (str,), False),
    ("device.used", (str,), False),
    ("device.reason", (str,), False),
    ("settings", (dict,), False),
    ("settings.runs", (int,), False),
    ("settings.warmup", (int,), False),
    ("settings.threads", (int,), True),
    ("init_ms", _NUMBER, False),
    ("first_inference_ms", _NUMBER, False),
    ("warmup_mean_ms", _NUMBER, False),
    ("latency_us", (dict,), False),
    ("latency_us.count", (int,), False),
    ("latency_us.min", _NUMBER, False),
    ("latency_us.median", _NUMBER, False),
    ("latency_us.mean", _NUMBER, False),
    ("latency_us.std", _NUMBER, False),
    ("latency_us.p90", _NUMBER, False),
    ("latency_us.p99", _NUMBER, False),
    ("latency_us.max", _NUMBER, False),
    ("timings_us", (list,), False),
    ("peak_rss_kb", (int,), True),  # None where the device cannot measure it
    ("host", (dict,), False),
)


@dataclass
class ReportRow:
    """One stored benchmark report, as `qdeploy report` shows it."""

    id: int
    target: str
    model_name: str
    model_sha256: str
    model_path: str
    model_size: int
    variant: str
    device_requested: str
    device_used: str
    device_reason: str
    runtime_name: str
    runtime_version: str
    qrun_version: str
    runs: Optional[int]
    warmup: Optional[int]
    threads: Optional[int]
    init_ms: float
    first_inference_ms: float
    warmup_mean_ms: float
    count: int
    min_us: float
    median_us: float
    mean_us: float
    std_us: float
    p90_us: float
    p99_us: float
    max_us: float
    peak_rss_kb: Optional[int]
    timestamp: str
    hostname: str
    report_file: str
    accuracy: Optional[float] = None  # from model_facts, when known
    agreement: Optional[float] = None  # latest verify of this target, model file and variant
    max_abs_diff: Optional[float] = None
    timings_us: list = field(default_factory=list, repr=False)


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


@dataclass
class ModelFacts:
    """Size and accuracy of one model file, by sha256."""

    sha256: str
    variant: Optional[str]
    size: Optional[int]
    accuracy: Optional[float]
    source: str


def model_name_of(path: str) -> str:
    """The model's name from a model file path: its stem without a variant suffix."""
    stem = Path(str(path).replace("\\", "/")).name
    if stem.endswith(".tflite"):
        stem = stem[: -len(".tflite")]
    for suffix in VARIANT_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


SOURCE_SUFFIXES = (".keras", ".h5", ".hdf5", ".tflite")


def deployment_name(manifest) -> Optional[str]:
    """The series name of a `qdeploy convert` deployment: its source model's name.

    Convert names its files `model_float.tflite`/`model_int8.tflite` whatever the model,
    so the file name cannot tell two deployments apart; the manifest's
    `converter.source_model` (`mnist.keras`, or a SavedModel directory's name) can.
    None when the manifest does not record it.
    """
    converter = getattr(manifest, "converter", None)
    source = converter.get("source_model") if isinstance(converter, dict) else None
    if not isinstance(source, str) or not source.strip():
        return None
    name = Path(source.replace("\\", "/").rstrip("/")).name
    for suffix in SOURCE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return model_name_of(name) or None


def normalize_timestamp(value: str, what: str = "timestamp") -> str:
    """An ISO-8601 time as UTC `YYYY-MM-DDTHH:MM:SS.ffffffZ` (sorts as text).

    A time without a zone is taken as UTC. Raises UserError naming `what` if unreadable.
    """
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"{what} {value!r} is not an ISO-8601 date or time "
                        "(e.g. 2026-05-01 or 2026-05-01T12:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _get(report: dict, dotted: str):
    value = report
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def validate_report(report, source: str = "report") -> dict:
    """Check a qrun-bench report against the schema; return it unchanged.

    Raises UserError with one line naming `source` and the first missing or
    malformed field, or the schema version when it is newer than this qdeploy reads.
    """
    if not isinstance(report, dict):
        raise UserError(f"{source} is not a qrun-bench report (expected a JSON object)")
    version = report.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(f"{source} has no schema_version: it was not written by qrun bench")
    if version > REPORT_SCHEMA_VERSION:
        raise UserError(f"{source} has report schema version {version}, newer than this qdeploy "
                        f"understands ({REPORT_SCHEMA_VERSION}); upgrade qdeploy")
    kind = report.get("kind")
    if kind != BENCH_KIND:
        raise UserError(f"{source} is of kind {kind!r}, not a {BENCH_KIND!r} report")
    for dotted, types, nullable in _FIELDS:
        try:
            value = _get(report, dotted)
        except KeyError:
            raise UserError(f"{source} is missing field '{dotted}'; re-run qrun bench") from None
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join("number" if t is float else t.__name__ for t in types)
            raise UserError(f"{source} has a malformed field '{dotted}' "
                            f"(expected {names}, got {value!r:.40})")
    for dotted in ("init_ms", "first_inference_ms", "warmup_mean_ms", "latency_us.median"):
        if not math.isfinite(_get(report, dotted)):
            raise UserError(f"{source} has a malformed field '{dotted}' (not a finite number)")
    timings = report["timings_us"]
    if not all(isinstance(t, _NUMBER) and not isinstance(t, bool) for t in timings):
        raise UserError(f"{source} has a malformed field 'timings_us' (expected numbers)")
    normalize_timestamp(report["timestamp"], what=f"{source} field 'timestamp'")
    return report


def reports_in(document, source: str = "report") -> list[dict]:
    """The qrun-bench reports of a `qrun bench --json` document: itself, or a compare run's."""
    if isinstance(document, dict) and document.get("kind") == COMPARE_KIND:
        version = document.get("schema_version")
        if isinstance(version, int) and version > REPORT_SCHEMA_VERSION:
            raise UserError(f"{source} has report schema version {version}, newer than this "
                            f"qdeploy understands ({REPORT_SCHEMA_VERSION}); upgrade qdeploy")
        reports = document.get("reports")
        if not isinstance(reports, list) or not reports:
            raise UserError(f"{source} is missing field 'reports' (a non-empty list of "
                            f"{BENCH_KIND} reports); re-run qrun bench --compare")
        return [validate_report(r, f"{source} (reports[{i}])") for i, r in enumerate(reports)]
    return [validate_report(document, source)]


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
    """The accuracy (a fraction) of `variant` in an evaluation record, or None.

    Understood forms: `qdeploy evaluate`'s (`float_accuracy`, `int8_accuracy`), per
    variant (`{"int8": 0.98}` or `{"int8": {"accuracy": 0.98}}`, also under an
    `accuracy` key), or one `accuracy` for the model the record comes with. The
    compiled Edge TPU model computes what its int8 model computes, so `edgetpu`
    falls back to the int8 figure.
    """
    if not isinstance(evaluation, dict):
        return None
    nested = evaluation.get("accuracy")
    per_variant = nested if isinstance(nested, dict) else evaluation
    for name in ((variant, "int8") if variant == "edgetpu" else (variant,)):
        for value in (evaluation.get(f"{name}_accuracy"), per_variant.get(name)):
            found = _fraction(value)
            if found is not None:
                return found
    return _fraction(nested)


def _accuracy_of(report: dict, evaluation=None) -> Optional[float]:
    """Accuracy a report carries: `model.accuracy`, or its (or its document's) `evaluation`."""
    variant = report["model"]["variant"]
    for record in (report["model"], report.get("evaluation"), evaluation):
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
        model, lat, host = r["model"], r["latency_us"], r["host"]
        name = model_name or self._known_name(model["sha256"].lower(), model["path"])
        row = {
            "target": target, "model_name": name, "model_sha256": model["sha256"].lower(),
            "model_path": model["path"], "model_size": model["size"],
            "variant": model["variant"],
            "device_requested": r["device"]["requested"], "device_used": r["device"]["used"],
            "device_reason": r["device"]["reason"],
            "runtime_name": r["runtime"]["name"], "runtime_version": r["runtime"]["version"],
            "qrun_version": r["qrun_version"],
            "runs": r["settings"]["runs"], "warmup": r["settings"]["warmup"],
            "threads": r["settings"]["threads"],
            "init_ms": float(r["init_ms"]), "first_inference_ms": float(r["first_inference_ms"]),
            "warmup_mean_ms": float(r["warmup_mean_ms"]),
            "count": lat["count"], "min_us": float(lat["min"]),
            "median_us": float(lat["median"]), "mean_us": float(lat["mean"]),
            "std_us": float(lat["std"]), "p90_us": float(lat["p90"]),
            "p99_us": float(lat["p99"]), "max_us": float(lat["max"]),
            "peak_rss_kb": r["peak_rss_kb"],
            "timestamp": normalize_timestamp(r["timestamp"]),
            "hostname": str(host.get("hostname") or ""),
            "host_json": json.dumps(host, sort_keys=True),
            "report_file": report_file,
            "timings_us": json.dumps([float(t) for t in r["timings_us"]]),
            "added": _now(),
        }
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
        return [Verification(**{**dict(zip(names, r)), "ok": bool(r[names.index("ok")])})
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
        joined = ("accuracy", "agreement", "max_abs_diff", "timings_us")
        names = [f for f in ReportRow.__dataclass_fields__ if f not in joined]
        columns = ", ".join(f"r.{n}" for n in names)
        verified = ("(SELECT v.{} FROM verifications v WHERE v.target = r.target AND "
                    "v.model_sha256 = r.model_sha256 AND v.variant = r.variant "
                    "ORDER BY v.timestamp DESC, v.id DESC LIMIT 1)")
        sql = (f"SELECT {columns}, f.accuracy, {verified.format('agreement')}, "
               f"{verified.format('max_abs_diff')}, r.timings_us FROM reports r "
               f"LEFT JOIN model_facts f ON f.sha256 = r.model_sha256 "
               f"WHERE {condition} ORDER BY r.timestamp, r.id")
        rows = []
        for values in self.connection.execute(sql, params):
            *fields, accuracy, agreement, max_abs_diff, timings = values
            rows.append(ReportRow(*fields, accuracy=accuracy, agreement=agreement,
                                  max_abs_diff=max_abs_diff, timings_us=json.loads(timings)))
        if not latest_only:
            return rows
        newest = {}
        for row in rows:  # oldest first, so the last one seen per series wins
            newest[(row.target, row.model_name, row.variant)] = row
        return [newest[key] for key in sorted(newest, key=_series_order)]


def _series_order(key: tuple) -> tuple:
    target, model, variant = key
    rank = VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS)
    return (target, model, rank, variant)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _fraction(value) -> Optional[float]:
    if isinstance(value, dict):
        value = value.get("accuracy", value.get("top1"))
    if isinstance(value, _NUMBER) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    return None


def open_store(reports_dir: Path, create: bool = True) -> Store:
    """Open (creating it and its schema if missing) `<reports_dir>/qdeploy.sqlite`.

    With `create=False` a missing store is a UserError ("no reports yet") and nothing
    is created: readers use that. A store written by a newer qdeploy (higher
    `user_version`) is refused with a UserError; so is a file that is not SQLite.
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
    if version > SCHEMA_VERSION:
        connection.close()
        raise UserError(f"{path} has store schema version {version}, newer than this qdeploy "
                        f"understands ({SCHEMA_VERSION}); upgrade qdeploy")
    if version < SCHEMA_VERSION:
        try:
            migrate(connection)
        except sqlite3.DatabaseError as exc:
            connection.close()
            what = "create" if version == 0 else f"upgrade (version {version})"
            raise UserError(f"cannot {what} the report store {path}: {exc}") from None
    try:
        tables = {r[0] for r in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        connection.close()
        raise unreadable(path, exc) from None
    missing = sorted(set(TABLES) - tables)
    if missing:
        connection.close()
        raise unreadable(path, f"no table {missing[0]}")
    return Store(connection, path)


def unreadable(path: Path, why) -> UserError:
    """The one line for a damaged store or a foreign SQLite file in its place."""
    return UserError(f"{path} is not a readable qdeploy report store ({why}); move it away "
                     "(the JSON reports beside it are kept) and push again")


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the store's schema to SCHEMA_VERSION in one transaction; the version reached.

    A new file gets every step from version 0; a version-1 store gains the
    verifications table. Another process may have migrated between our read and
    the lock, so the version is read again under it.
    """
    with connection:
        connection.execute("BEGIN IMMEDIATE")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step].split(";"):
                if statement.strip():
                    connection.execute(statement)
        if version < SCHEMA_VERSION:
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return SCHEMA_VERSION
