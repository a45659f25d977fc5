"""What `qdeploy report` shows: the latest benchmark per target and variant, and history.

Pure functions over rows read from the store (`qdeploy.reports.store`). The speed-up of a
variant is the float variant's median divided by its own median, for the same model
on the same target (so 2.0 means twice as fast as float). A report is a regression
when its median is more than `REGRESSION_THRESHOLD` worse than the previous report
of the same model, target and variant. Agreement and max |Δ| come from the latest
`qdeploy push --verify` of the same model file, target and variant (see qdeploy.push.crosscheck).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import asdict, dataclass, field, make_dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

from qdeploy.reports import accuracy, schema
from qdeploy.reports.schema import ReportRow
from qdeploy.reports.store import Store, unreadable
from qrun import atomic
from qrun.errors import UserError
from qrun.model.layout import FLOAT
from qrun.measure.report_contract import normalize_timestamp

REGRESSION_THRESHOLD = 0.10  # a median more than 10% slower than the previous one
BASELINE_VARIANT = FLOAT
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # an age beyond the calendar means "all"


def measured_columns() -> list:
    """The report store's columns a TableRow holds as they are: every field of the report
    contract with a column, but objects and lists (the host facts, the raw timings)."""
    return [f.column for f in schema.stored_fields() if not schema.is_json(f)]


def table_row_type() -> type:
    """The TableRow dataclass: the series (target, model name), the runtime in one string,
    then every measured column (`measured_columns`, in the contract's order, typed as
    the store's row types them: latencies in microseconds, as stored), then what the other
    tables and the other reports add. A field added to the report contract with a column
    becomes an attribute (and a key of `qdeploy report --json`) without an edit here."""
    types = {f.column: schema.python_type(f) for f in schema.stored_fields()}
    fields = [("target", str), ("model", str), ("runtime", str),  # runtime: "name version"
              *((name, types[name]) for name in measured_columns()),
              ("accuracy", Optional[float]),  # model_facts, when known
              ("speedup", Optional[float]),  # float median / this median; None without float
              ("report_id", int),
              ("agreement", Optional[float], field(default=None)),  # latest verify: top-1
              ("max_abs_diff", Optional[float], field(default=None)),  # its largest difference
              # qrun bench --image: a whole frame's median and p99 (the store's
              # frame_total_* columns), and frames per second (1e6 / median); None: no frames
              ("frame_median_us", Optional[float], field(default=None)),
              ("frame_p99_us", Optional[float], field(default=None)),
              ("fps", Optional[float], field(default=None))]
    row = make_dataclass("TableRow", fields)
    row.__module__ = __name__
    row.__doc__ = "One line of the latest-reports table (see table_row_type)."
    return row


TableRow = table_row_type()


@dataclass
class HistoryRow:
    """One report in the history of a (target, model, variant) series."""

    target: str
    model: str
    variant: str
    model_sha256: str
    timestamp: str
    median_us: float
    p99_us: float
    change: Optional[float]  # median / previous median - 1; None for the first report
    regression: bool
    report_id: int


@dataclass
class Report:
    """Everything `qdeploy report` prints, plots or writes."""

    table: list = field(default_factory=list)  # TableRow
    history: list = field(default_factory=list)  # HistoryRow
    latest: list = field(default_factory=list, repr=False)  # ReportRow, with raw timings
    accuracy_drops: list = field(default_factory=list)  # accuracy.AccuracyDrop (push --eval)

    @property
    def regressions(self) -> list:
        return [h for h in self.history if h.regression]

    def to_dict(self) -> dict:
        return {"latest": [asdict(r) for r in self.table],
                "history": [asdict(h) for h in self.history],
                "regression_threshold": REGRESSION_THRESHOLD,
                "accuracy_drops": [asdict(d) for d in self.accuracy_drops],
                "accuracy_drop_threshold": accuracy.ACCURACY_DROP}


def parse_since(text: str, now: Optional[datetime] = None) -> str:
    """`--since` as a UTC timestamp: an ISO-8601 date/time, or an age like 30m, 12h, 7d, 2w."""
    match = _RELATIVE.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        now = now or datetime.now(timezone.utc)
        try:
            start = now - timedelta(**{_UNITS[unit]: amount})
        except (OverflowError, ValueError):  # before year 1: every report is newer
            start = EPOCH
        return normalize_timestamp(start.isoformat())
    return normalize_timestamp(text, what="--since")


def speedups(rows: list[ReportRow]) -> dict:
    """Report id -> float median / its median, per (target, model); None without float."""
    baseline = {(r.target, r.model_name): r.median_us for r in rows
                if r.variant == BASELINE_VARIANT and r.median_us > 0}
    result = {}
    for r in rows:
        base = baseline.get((r.target, r.model_name))
        result[r.id] = base / r.median_us if base is not None and r.median_us > 0 else None
    return result


def table(latest: list[ReportRow]) -> list[TableRow]:
    """The latest-reports table, in the store's order (target, model, variant)."""
    ratio = speedups(latest)
    return [TableRow(
        target=r.target, model=r.model_name,
        runtime=f"{r.runtime_name} {r.runtime_version}".strip(),
        **{name: getattr(r, name) for name in measured_columns()},
        accuracy=r.accuracy, speedup=ratio[r.id], report_id=r.id, agreement=r.agreement,
        max_abs_diff=r.max_abs_diff, frame_median_us=r.frame_total_median_us,
        frame_p99_us=r.frame_total_p99_us,
        fps=frames_per_second(r.frame_total_median_us)) for r in latest]


def frames_per_second(frame_median_us: Optional[float]) -> Optional[float]:
    """1e6 / the median frame time (µs) of `qrun bench --image`; None without one."""
    return 1e6 / frame_median_us if frame_median_us else None


def flag_regressions(history: list[ReportRow],
                     threshold: float = REGRESSION_THRESHOLD) -> list[HistoryRow]:
    """Each report with its median's change over the previous one of its series.

    `history` must be oldest first. A series is one (target, model, variant).
    """
    previous: dict = {}
    rows = []
    for r in history:
        key = (r.target, r.model_name, r.variant)
        before = previous.get(key)
        change = r.median_us / before - 1.0 if before else None
        rows.append(HistoryRow(
            target=r.target, model=r.model_name, variant=r.variant,
            model_sha256=r.model_sha256, timestamp=r.timestamp, median_us=r.median_us,
            p99_us=r.p99_us, change=change,
            regression=change is not None and change > threshold, report_id=r.id))
        previous[key] = r.median_us
    return rows


def build(store: Store, target: Optional[str] = None, model: Optional[str] = None,
          since: Optional[str] = None) -> Report:
    """The report for the filters. An empty store, or filters matching nothing, is a UserError.

    Regressions are judged over the whole history of a series, so a `since` window
    still flags a report that is slower than the one just before the window.
    """
    since_ts = parse_since(since) if since else None
    try:
        if store.count() == 0:
            raise UserError("no reports yet: run qdeploy push")
        latest = store.latest(target=target, model=model, since=since_ts)
        if not latest:
            raise UserError(f"no reports since {since}; the newest is older (try a longer "
                            "--since)")
        rows = store.history(target=target, model=model)
        history, drops = flag_regressions(rows), accuracy.drops(rows)
    except sqlite3.DatabaseError as exc:  # damaged pages show only when read
        raise unreadable(store.path, exc) from None
    if since_ts:
        history = [h for h in history if h.timestamp >= since_ts]
        drops = [d for d in drops if d.timestamp >= since_ts]
    return Report(table=table(latest), history=history, latest=latest, accuracy_drops=drops)


# -- display formats shared by the terminal table and the HTML page --------------

def ms(us: float) -> str:
    """Microseconds as milliseconds with three decimals."""
    return f"{us / 1e3:.3f}"


def task_text(task: Optional[str]) -> str:
    return "—" if task is None else task


def frame_text(frame_us: Optional[float]) -> str:
    """A frame time in ms, "—" for a report without frames (no --image, or an older qrun)."""
    return "—" if frame_us is None else ms(frame_us)


def fps_text(fps: Optional[float]) -> str:
    return "—" if fps is None else f"{fps:.1f}"


def size_text(size: Optional[int]) -> str:
    if size is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def rss_text(peak_rss_kb: Optional[int]) -> str:
    return "—" if peak_rss_kb is None else f"{peak_rss_kb / 1024:.1f} MiB"


def accuracy_text(accuracy: Optional[float]) -> str:
    return "—" if accuracy is None else f"{accuracy * 100:.2f}%"


def agreement_text(agreement: Optional[float]) -> str:
    return "—" if agreement is None else f"{agreement * 100:.0f}%"


def diff_text(max_abs_diff: Optional[float]) -> str:
    return "—" if max_abs_diff is None else f"{max_abs_diff:.3g}"


def speedup_text(speedup: Optional[float]) -> str:
    return "—" if speedup is None else f"{speedup:.2f}x"


def change_text(change: Optional[float]) -> str:
    return "—" if change is None else f"{change * 100:+.1f}%"


def check_output_path(path: Path, what: str) -> Path:
    """Refuse, before any work, an output file whose directory is missing or not writable.

    Writability is tried with a real file (qrun.atomic.check_writable): os.access says
    yes to root in directories where no file can be made, such as /proc and /sys.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a directory")
    if not parent.is_dir():
        raise UserError(f"cannot write {what} {path}: directory {parent} does not exist")
    atomic.check_writable(parent, f"write the {what} {path.name} elsewhere")
    return path


def write_output(path: Path, data: bytes, what: str) -> None:
    """Atomically write an output file; an OS error becomes one UserError line."""
    try:
        atomic.write_bytes(Path(path), data)
    except OSError as exc:
        raise UserError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
