"""The `qrun bench` report contract, defined once: its kinds, its version and its fields.

The device writes reports in this form (qrun.measure.bench) and the host reads them
(qdeploy.reports). `FIELDS` is every field a report must hold: its dotted path,
the Python types its value may have, whether it may be null, and the column of
the host's report store that keeps it. `validate` checks a report against it;
the store derives its `reports` table, its row type and what it inserts from it
(qdeploy.reports.schema), `qdeploy report` its table rows (qdeploy.reports.history),
and qrun bench the attributes of its report (qrun.measure.bench.BenchReport, one per
top-level field). Adding a field takes a line here and the code in qrun.measure.bench
that measures it.

A report may hold more than `FIELDS` lists (`settings.input`, the host facts
under `host`): readers ignore what they do not know, so a newer device's report
stays readable by an older host, and a new field needs no new `SCHEMA_VERSION`.
A field added after reports were first written is `optional`: a report of an older
qrun lacks it and is read as holding null there (its store column takes NULL),
so a newer host still reads an older device's reports. `frame` (`qrun bench --image`:
what a whole frame of the model's task costs, stage by stage) is such an object: absent
without --image; when present, its fields (`part_of` it) must be there. `stream` (`qrun
bench --video`: a video's frames through the pipeline, frames per second and each stage's
times) is another.

Standard library only: the device imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from qrun.errors import UserError

SCHEMA_VERSION = 1  # of the report JSON: what qrun bench writes, the newest a reader takes
BENCH_KIND = "qrun-bench"  # one model benchmarked on one device
COMPARE_KIND = "qrun-bench-compare"  # `qrun bench --compare`: one report per variant
NUMBER = (int, float)  # a bool is never taken for a number
FRAME_STAGES = ("preprocess", "invoke", "postprocess", "total")  # of a `frame`
FRAME_STATS = ("median", "p99")  # the figures of each frame stage the store keeps
STREAM_STAGES = ("capture", "preprocess", "invoke", "postprocess", "sink")  # of a `stream`


@dataclass(frozen=True)
class Field:
    """One field of a qrun-bench report."""

    path: str  # dotted: "latency_us.median" is report["latency_us"]["median"]
    types: tuple  # the Python types its value may have
    nullable: bool = False  # the report may hold null (a device that cannot measure it)
    column: Optional[str] = None  # the report store's column; None: kept in no column
    items: tuple = ()  # a list's element types
    finite: bool = False  # a number that must be finite (no NaN or infinity)
    null_in_store: bool = False  # the column takes NULL though the report may not
    optional: bool = False  # added later: an older qrun's report lacks it (read as null)
    part_of: Optional[str] = None  # an optional object it belongs to: needed when that is there


# In the order a report holds them; the first bad field is the one an error names.
FIELDS = (
    Field("timestamp", (str,), column="timestamp"),  # UTC ISO-8601
    Field("qrun_version", (str,), column="qrun_version"),
    Field("model", (dict,)),
    Field("model.path", (str,), column="model_path"),
    Field("model.sha256", (str,), column="model_sha256"),
    Field("model.size", (int,), column="model_size"),  # bytes
    Field("model.variant", (str,), column="variant"),  # float, int8, edgetpu
    # Added with manifest schema 2, so optional: the manifest's task kind (null: a bare
    # model file) and how many inputs and outputs the model has.
    Field("model.task", (str,), nullable=True, column="task", optional=True),
    Field("model.input_count", (int,), column="input_count", optional=True),
    Field("model.output_count", (int,), column="output_count", optional=True),
    Field("runtime", (dict,)),
    Field("runtime.name", (str,), column="runtime_name"),
    Field("runtime.version", (str,), column="runtime_version"),
    Field("device", (dict,)),
    Field("device.requested", (str,), column="device_requested"),
    Field("device.used", (str,), column="device_used"),
    Field("device.reason", (str,), column="device_reason"),
    Field("settings", (dict,)),
    # Store version 1 declared these two columns without NOT NULL; every store keeps that.
    Field("settings.runs", (int,), column="runs", null_in_store=True),
    Field("settings.warmup", (int,), column="warmup", null_in_store=True),
    Field("settings.threads", (int,), nullable=True, column="threads"),  # None: the default
    Field("init_ms", NUMBER, column="init_ms", finite=True),
    Field("first_inference_ms", NUMBER, column="first_inference_ms", finite=True),
    Field("warmup_mean_ms", NUMBER, column="warmup_mean_ms", finite=True),
    Field("latency_us", (dict,)),
    Field("latency_us.count", (int,), column="count"),
    Field("latency_us.min", NUMBER, column="min_us"),
    Field("latency_us.median", NUMBER, column="median_us", finite=True),
    Field("latency_us.mean", NUMBER, column="mean_us"),
    Field("latency_us.std", NUMBER, column="std_us"),
    Field("latency_us.p90", NUMBER, column="p90_us"),
    Field("latency_us.p99", NUMBER, column="p99_us"),
    Field("latency_us.max", NUMBER, column="max_us"),
    Field("timings_us", (list,), column="timings_us", items=NUMBER),  # every timed run
    Field("peak_rss_kb", (int,), nullable=True, column="peak_rss_kb"),  # None: not measurable
    Field("host", (dict,), column="host_json"),  # qrun.measure.hostinfo.host_facts
    # `qdeploy push --eval DIR`: the variant's accuracy on DIR measured on the device (qrun
    # evaluate, added to the report by the host): the task's main figure (map50_95, miou,
    # oks_ap), how many images, the data's digest. Optional: absent without --eval.
    Field("accuracy", (dict,), optional=True),
    Field("accuracy.metric", (str,), column="accuracy_metric", optional=True,
          part_of="accuracy"),
    Field("accuracy.value", NUMBER, column="accuracy_value", finite=True, optional=True,
          part_of="accuracy"),
    Field("accuracy.images", (int,), column="accuracy_images", optional=True,
          part_of="accuracy"),
    Field("accuracy.data", (str,), column="accuracy_data", optional=True, part_of="accuracy"),
    # `qrun bench --image`: whole frames of the model's task (the image decoded once, then
    # per run preprocess, invoke, postprocess; total is their sum per frame). Optional: a
    # report without --image, or of an older qrun, has no `frame`.
    Field("frame", (dict,), optional=True),
    Field("frame.image", (str,), column="frame_image", optional=True, part_of="frame"),
    Field("frame.runs", (int,), column="frame_runs", optional=True, part_of="frame"),
    *(Field(f"frame.{stage}_us.{stat}", NUMBER, column=f"frame_{stage}_{stat}_us",
            finite=True, optional=True, part_of="frame")
      for stage in FRAME_STAGES for stat in FRAME_STATS),
    # `qrun bench --video`: the file's frames through the pipeline (qrun.stream), its frames
    # per second and each stage's median and p99 in ms. Optional like `frame`.
    Field("stream", (dict,), optional=True),
    Field("stream.video", (str,), column="stream_video", optional=True, part_of="stream"),
    Field("stream.frames", (int,), column="stream_frames", optional=True, part_of="stream"),
    Field("stream.fps", NUMBER, column="stream_fps", finite=True, optional=True,
          part_of="stream"),
    Field("stream.dropped", (int,), column="stream_dropped", optional=True, part_of="stream"),
    *(Field(f"stream.{stage}_ms.{stat}", NUMBER, column=f"stream_{stage}_{stat}_ms",
            finite=True, optional=True, part_of="stream")
      for stage in STREAM_STAGES for stat in FRAME_STATS),
)
HEAD = ("schema_version", "kind")  # what a report starts with, checked before FIELDS


def keys(optional: bool = False) -> tuple:
    """The top-level keys of every report, in the order qrun bench writes them; with
    `optional`, those it writes only when measured (`frame`) too, in their place."""
    return HEAD + tuple(f.path for f in FIELDS
                        if "." not in f.path and (optional or not f.optional))


def top_fields() -> tuple:
    """The fields at the top of a report (no dot in their path), optional ones included,
    in the order a report holds them (`keys(optional=True)` without HEAD)."""
    return tuple(f for f in FIELDS if "." not in f.path)


def value_type(field: Field):
    """The Python type a field's value has, for a type annotation: `float` for a number,
    Optional when the report may hold null there or lack the field."""
    kind = float if float in field.types else field.types[0]
    return Optional[kind] if field.nullable or field.optional else kind


def value_at(report: dict, path: str):
    """The value at a dotted path; KeyError(path) when any part is missing."""
    value = report
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


def has(report: dict, path: str) -> bool:
    """True when the report holds a value at the dotted `path`."""
    try:
        value_at(report, path)
    except KeyError:
        return False
    return True


def field_value(report: dict, field: Field):
    """The value of `field` in a report; None for an optional field the report lacks."""
    try:
        return value_at(report, field.path)
    except KeyError:
        if field.optional:
            return None
        raise


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


def type_names(types: tuple) -> str:
    """`int or number` for an error line."""
    return " or ".join("number" if t is float else t.__name__ for t in types)


def check_version(document: dict, source: str) -> None:
    """Refuse a document written to a newer report schema than this one."""
    version = document.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise UserError(f"{source} has report schema version {version}, newer than this qdeploy "
                        f"understands ({SCHEMA_VERSION}); upgrade qdeploy")


def check_field(report: dict, field: Field, source: str) -> None:
    """The field is present and of one of its types (or null where it may be)."""
    try:
        value = value_at(report, field.path)
    except KeyError:
        if field.optional and not (field.part_of and has(report, field.part_of)):
            return  # a report of a qrun older than the field, or one that did not measure it
        raise UserError(f"{source} is missing field '{field.path}'; re-run qrun bench") from None
    if value is None and field.nullable:
        return
    if isinstance(value, bool) or not isinstance(value, field.types):
        raise UserError(f"{source} has a malformed field '{field.path}' "
                        f"(expected {type_names(field.types)}, got {value!r:.40})")


def validate(report, source: str = "report") -> dict:
    """Check one qrun-bench report against the contract; return it unchanged.

    Raises UserError with one line naming `source` and the first missing or
    malformed field, or the schema version when it is newer than this one.
    """
    if not isinstance(report, dict):
        raise UserError(f"{source} is not a qrun-bench report (expected a JSON object)")
    version = report.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(f"{source} has no schema_version: it was not written by qrun bench")
    check_version(report, source)
    kind = report.get("kind")
    if kind != BENCH_KIND:
        raise UserError(f"{source} is of kind {kind!r}, not a {BENCH_KIND!r} report")
    for field in FIELDS:
        check_field(report, field, source)
    for field in FIELDS:
        value = field_value(report, field)
        if field.finite and value is not None and not math.isfinite(value):
            raise UserError(f"{source} has a malformed field '{field.path}' "
                            "(not a finite number)")
    for field in FIELDS:
        value = field_value(report, field)
        if field.items and value is not None and not all(
                isinstance(v, field.items) and not isinstance(v, bool) for v in value):
            raise UserError(f"{source} has a malformed field '{field.path}' "
                            f"(expected {type_names(field.items)}s)")
    normalize_timestamp(report["timestamp"], what=f"{source} field 'timestamp'")
    return report


def reports_in(document, source: str = "report") -> list[dict]:
    """The validated reports of a `qrun bench --json` document: itself, or a compare run's."""
    if isinstance(document, dict) and document.get("kind") == COMPARE_KIND:
        check_version(document, source)
        reports = document.get("reports")
        if not isinstance(reports, list) or not reports:
            raise UserError(f"{source} is missing field 'reports' (a non-empty list of "
                            f"{BENCH_KIND} reports); re-run qrun bench --compare")
        return [validate(r, f"{source} (reports[{i}])") for i, r in enumerate(reports)]
    return [validate(document, source)]
