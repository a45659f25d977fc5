"""What `qdeploy push` shows: the progress of each target while it runs (`RichProgress` on a
terminal, `LineProgress` in logs), then the result table and a note line per target."""

from __future__ import annotations

import sys
import threading

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qdeploy.reports.history import size_text

DEVICE_NAMES = {"edgetpu": "Edge TPU", "cpu": "CPU"}  # a report's device.used


def print_table(results: list, console=None, errors: bool = True) -> None:
    """Print the result table and the notes under it (`errors`: failed targets' errors too)."""
    console = console or Console()
    console.print(render_table(results))
    for note in result_notes(results, errors):
        console.print(note, markup=False, highlight=False)


def render_table(results: list) -> Table:
    """A rich Table: one row per target (and per variant of a compare run)."""
    table = Table(title="qdeploy push", title_justify="left", pad_edge=False)
    table.add_column("target", min_width=10, overflow="fold")
    for col in ("result", "files", "bytes", "time", "device", "median/p99", "verify"):
        table.add_column(col, justify="left" if col in ("result", "device") else "right",
                         no_wrap=True)
    for r in results:
        if not r.ok:
            table.add_row(r.target, f"[red]{r.outcome or 'failed'}[/red]", "-", "-", "-", "-",
                          "-", "-")
            continue
        base = [r.target, "[green]unchanged[/green]" if r.unchanged else "[green]pushed[/green]",
                f"{r.files_sent}/{r.files_skipped}", size_text(r.bytes_sent), f"{r.transfer_s:.2f} s"]
        by_variant = {c.variant: c for c in r.verify}
        if not r.reports:
            table.add_row(*base, "not run", "-", verify_cell(r.verify[0] if r.verify else None))
        for i, rep in enumerate(r.reports):
            lat = rep.get("latency_us") or {}
            variant = (rep.get("model") or {}).get("variant")
            dev = device_text(rep) + (f" ({variant})" if variant and len(r.reports) > 1 else "")
            table.add_row(*(base if i == 0 else [""] * len(base)), dev,
                          latency_text(lat.get("median"), lat.get("p99")),
                          verify_cell(by_variant.get(variant)))
    return table


def device_text(report: dict) -> str:
    used = (report.get("device") or {}).get("used", "?")
    return DEVICE_NAMES.get(used, str(used))


def latency_text(*latencies_us) -> str:
    """Latencies given in µs, in one unit picked by the first, joined by `/` (the median/p99
    cell, so the table fits 80 columns): `1.27/1.29 ms` from a millisecond up; below it
    `312/340 µs`, and `41.3 µs`, `0.52 µs` with three significant digits under 100 µs
    (the demo model's invoke: `0.00 ms` said nothing). "-" when one is not a number."""
    if not latencies_us or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                   for v in latencies_us):
        return "-"
    if latencies_us[0] >= 1000:
        return "/".join(f"{v / 1000:.2f}" for v in latencies_us) + " ms"
    return "/".join(f"{v:.0f}" if v >= 100 else f"{v:.3g}" for v in latencies_us) + " µs"


def verify_cell(comparison) -> str:
    """`3/3 Δ0`: top-1 agreements (a detector, segmenter or pose model: samples whose task
    outputs agree) / reference inputs and max |Δ| in output steps (`— Δ0` for a model
    with neither, where there is nothing to agree on)."""
    if comparison is None:
        return "-"
    counted = comparison.scored or getattr(comparison, "task", None) is not None
    agreed = f"{comparison.agree}/{comparison.samples}" if counted else "—"
    text = f"{agreed} Δ{comparison.max_steps:g}"
    return text if comparison.ok else f"[red]{text}[/red]"


def result_notes(results: list, errors: bool = True) -> list:
    """One line per target under the table: release, runner, why that device (or the error)."""
    notes = []
    for r in results:
        if not r.ok:
            if errors:
                notes.append(f"error: {r.error}")
            continue
        runner = f"runner {r.runner_version}" + (" (installed)" if r.runner_installed else "")
        line = f"{r.target}: release {r.release_id}; {runner}"
        for rep in r.reports:
            dev = rep.get("device") or {}
            if dev.get("reason"):
                line += f"; {device_text(rep)}: {dev['reason']}"
        for c in r.verify:
            line += f"; verify {c.text()}"
        for s in r.verify_skipped:
            line += f"; verify skipped {s.get('variant')}: {s.get('reason')}"
        if r.verify_note:
            line += f"; {r.verify_note}"
        notes.append(line)
    return notes


class LineProgress:
    """Progress as plain lines on stderr (logs, CI): stage changes and bench progress."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()
        self.last: dict = {}

    def __call__(self, target, stage, detail="", done=None, total=None):
        if stage == "failed":
            return  # the error line follows the table
        if stage == "uploading" and done is not None and self.last.get(target) == stage:
            return
        self.last[target] = stage
        text = f"{target}: {stage}" + (f": {detail}" if detail else "")
        if stage == "uploading" and total:
            text += f" ({size_text(total)})"
        with self.lock:
            print(text, file=self.stream, flush=True)


class RichProgress:
    """One progress bar per target (bytes while uploading), its stage as the description."""

    def __init__(self, names: list, console=None):
        self.progress = Progress(TextColumn("{task.fields[target]:<20}"), BarColumn(),
                                 DownloadColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.description}"), console=console,
                                 transient=False)
        self.tasks = {n: self.progress.add_task("waiting", target=n, total=None)
                      for n in names}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, target, stage, detail="", done=None, total=None):
        task = self.tasks.get(target)
        if task is None:
            return
        desc = stage + (f": {detail}" if detail else "")
        kwargs = {"description": desc[:60]}
        if total is not None:
            kwargs["total"] = total or 1
        if done is not None:
            kwargs["completed"] = done if total != 0 else 1
        if stage == "done":
            t = self.progress.tasks[task]
            kwargs["completed"] = t.total or 1
            kwargs["total"] = t.total or 1
        self.progress.update(task, **kwargs)
