"""`qdeploy report --html`: one self-contained page (table, history, embedded PNG) to share."""

from __future__ import annotations

import base64
import html
from qdeploy import __version__
from qdeploy.reports import accuracy
from qdeploy.reports.history import (REGRESSION_THRESHOLD, Report, agreement_text,
                             change_text, diff_text, fps_text, frame_text, ms, rss_text,
                             size_text, speedup_text, task_text)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f0f0f0; }
td.text { text-align: left; }
tr.regression td { background: #fde2e2; }
img { max-width: 100%; }
.note { color: #666; font-size: 0.85em; }
"""

LATEST_COLUMNS = ("target", "model", "variant", "task", "device", "runtime", "median (ms)",
                  "p90 (ms)", "p99 (ms)", "init (ms)", "first inference (ms)", "peak RSS",
                  "model size", "accuracy", "agreement", "max |Δ|", "speed-up vs float",
                  "stream frames/s", "frame (ms)", "frame p99 (ms)", "frames/s")
HISTORY_COLUMNS = ("time (UTC)", "target", "model", "variant", "model sha256", "median (ms)",
                   "p99 (ms)", "change", "regression")


def _cells(values, text_columns: int) -> str:
    return "".join(f'<td class="text">{html.escape(str(v))}</td>' if i < text_columns
                   else f"<td>{html.escape(str(v))}</td>" for i, v in enumerate(values))


def drops_html(report: Report) -> str:
    """The releases whose accuracy on the device dropped, as a list (empty: nothing)."""
    if not report.accuracy_drops:
        return ""
    items = "".join(f"<li>{html.escape(accuracy.drop_line(d))}</li>"
                    for d in report.accuracy_drops)
    return f'<h2>Accuracy drops</h2>\n<ul id="accuracy-drops">{items}</ul>'


def render_html(report: Report, png: bytes, layers: str = "") -> str:
    """The page for `report` with the PNG `png` embedded as base64; `layers` is the
    section of `qdeploy evaluate --layers` results (reports.layers.html_section)."""
    latest = "\n".join(
        "<tr>" + _cells((r.target, r.model, r.variant, task_text(r.task),
                         f"{r.device_used} ({r.device_reason})" if r.device_reason
                         else r.device_used, r.runtime,
                         ms(r.median_us), ms(r.p90_us), ms(r.p99_us), f"{r.init_ms:.1f}",
                         f"{r.first_inference_ms:.2f}", rss_text(r.peak_rss_kb),
                         size_text(r.model_size), accuracy.text(r),
                         agreement_text(r.agreement), diff_text(r.max_abs_diff),
                         speedup_text(r.speedup), fps_text(r.stream_fps),
                         frame_text(r.frame_median_us), frame_text(r.frame_p99_us),
                         fps_text(r.fps)), 6) + "</tr>"
        for r in report.table)
    history = "\n".join(
        ('<tr class="regression">' if h.regression else "<tr>")
        + _cells((h.timestamp, h.target, h.model, h.variant, h.model_sha256[:12],
                  ms(h.median_us), ms(h.p99_us), change_text(h.change),
                  "REGRESSION" if h.regression else ""), 5) + "</tr>"
        for h in report.history)
    image = base64.b64encode(png).decode("ascii")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in LATEST_COLUMNS)
    history_head = "".join(f"<th>{html.escape(c)}</th>" for c in HISTORY_COLUMNS)
    models = ", ".join(sorted({r.model for r in report.table}))
    targets = ", ".join(sorted({r.target for r in report.table}))
    title = html.escape(f"qdeploy report: {models} on {targets}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{title}</h1>
<h2>Latest report per target and variant</h2>
<table id="latest">
<thead><tr>{head}</tr></thead>
<tbody>
{latest}
</tbody>
</table>
<p class="note">Speed-up: the float variant's median divided by this variant's median, same
model and target. Frame: a whole frame of the model's task (preprocess, invoke, postprocess)
as <code>qrun bench --image</code> timed it; frames/s is 1e6 / its median in µs (— without
--image). Stream frames/s: a video's frames through the pipeline, stages overlapping
(<code>qrun bench --video</code>).</p>
<h2>Latency</h2>
<img id="plot" alt="latency distribution and median/p99 per variant"
 src="data:image/png;base64,{image}">
<h2>History</h2>
<table id="history">
<thead><tr>{history_head}</tr></thead>
<tbody>
{history}
</tbody>
</table>
{drops_html(report)}
<p class="note">Regression: a median more than {REGRESSION_THRESHOLD:.0%} worse than the
previous report of the same model, target and variant. Written by qdeploy {__version__}.</p>
{layers}</body>
</html>
"""
