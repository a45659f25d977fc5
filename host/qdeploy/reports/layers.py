"""`qdeploy evaluate --layers` in the report store and as a picture.

`add_layer_report` keeps one run (tables `layer_reports` and `layer_rows`, store schema 4)
under the deployment's model name and int8 sha256; `latest_layer_reports` reads back the
newest run per model for `qdeploy report --html`. `render_png` draws the bar chart: the
error of every layer in graph order (cumulative rmse/scale where the tensor was matched to
the float model, else per layer), flagged layers in red and named, the rounding-noise level
(0.29) as a dashed line.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, fields
from datetime import datetime, timezone
from typing import Iterable, Optional

from qdeploy.quantize.layers import ROUNDING_NOISE, LayerReport, LayerRow
from qdeploy.reports.store import Store

WIDTH_PX, HEIGHT_PX, DPI = 1200, 500, 100
PLAIN_COLOUR = "#4c72b0"
FLAGGED_COLOUR = "#d62728"
REPORT_COLUMNS = ("model_name", "int8_sha256", "deployment", "samples", "data", "per_layer",
                  "matched", "int8_tensors", "float_tensors", "compare", "notes", "added")
ROW_COLUMNS = tuple(f.name for f in fields(LayerRow))


def add_layer_report(store: Store, report: LayerReport) -> int:
    """Keep `report` in the store; returns its id."""
    values = {"model_name": report.model, "int8_sha256": report.int8_sha256.lower(),
              "deployment": report.deployment, "samples": report.samples, "data": report.data,
              "per_layer": report.per_layer, "matched": report.matched,
              "int8_tensors": report.int8_tensors, "float_tensors": report.float_tensors,
              "compare": report.compare, "notes": json.dumps(report.notes),
              "added": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    with store.connection as con:
        cursor = con.execute(f"INSERT INTO layer_reports ({', '.join(REPORT_COLUMNS)}) VALUES "
                             f"({', '.join('?' for _ in REPORT_COLUMNS)})",
                             [values[c] for c in REPORT_COLUMNS])
        report_id = cursor.lastrowid
        con.executemany(f"INSERT INTO layer_rows (report_id, {', '.join(ROW_COLUMNS)}) VALUES "
                        f"(?, {', '.join('?' for _ in ROW_COLUMNS)})",
                        [(report_id, *asdict(r).values()) for r in report.rows])
    return report_id


def latest_layer_reports(store: Store, models: Optional[Iterable[str]] = None) -> list:
    """The newest stored layer report per model name (only `models` when given), by name."""
    rows = store.connection.execute(
        f"SELECT id, {', '.join(REPORT_COLUMNS)} FROM layer_reports ORDER BY added, id")
    newest = {}
    for values in rows:
        newest[values[1]] = values
    wanted = set(models) if models is not None else None
    return [_read(store, newest[name]) for name in sorted(newest)
            if wanted is None or name in wanted]


def _read(store: Store, values: tuple) -> LayerReport:
    record = dict(zip(("id", *REPORT_COLUMNS), values))
    rows = store.connection.execute(
        f"SELECT {', '.join(ROW_COLUMNS)} FROM layer_rows WHERE report_id = ? ORDER BY position",
        (record["id"],))
    return LayerReport(deployment=record["deployment"], model=record["model_name"],
                       int8_sha256=record["int8_sha256"], samples=record["samples"],
                       data=record["data"], per_layer=record["per_layer"],
                       matched=record["matched"], int8_tensors=record["int8_tensors"],
                       float_tensors=record["float_tensors"], compare=record["compare"],
                       notes=json.loads(record["notes"]),
                       rows=[LayerRow(**dict(zip(ROW_COLUMNS, r))) for r in rows])


def short_name(tensor: str, width: int = 28) -> str:
    """A tensor name short enough for an axis label: its last path part, cut."""
    name = tensor.split(";")[0].rstrip("/").split("/")
    tail = "/".join(name[-2:]) if len(name) > 1 else name[0]
    return tail if len(tail) <= width else "…" + tail[-(width - 1):]


def render_png(report: LayerReport, width_px: int = WIDTH_PX, height_px: int = HEIGHT_PX,
               dpi: int = DPI) -> bytes:
    """The bar chart of the error by layer in graph order, flagged layers in red."""
    from qdeploy.reports.plot import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    try:
        rows = report.rows
        heights = [r.error for r in rows]
        colours = [FLAGGED_COLOUR if r.flag else PLAIN_COLOUR for r in rows]
        ax.bar(range(len(rows)), heights, color=colours, width=0.8)
        ax.axhline(ROUNDING_NOISE, color="#555555", linestyle="--", linewidth=1)
        ax.text(len(rows) - 0.5, ROUNDING_NOISE, " rounding noise 0.29", va="bottom",
                ha="right", fontsize=8, color="#555555")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlim(-0.7, len(rows) - 0.3)
        per_layer = [(r.position, r.rmse_scale) for r in rows if r.rmse_scale is not None]
        if per_layer:
            ax.scatter(*zip(*per_layer), marker="_", s=120, color="black", zorder=3,
                       label="per layer (rmse / scale)")
            ax.legend(fontsize=8, loc="upper left")
        ax.set_ylim(0, max(heights + [1.0]) * 40)
        ax.set_ylabel("error (rmse / scale)")
        ax.set_xlabel("quantized tensors in graph order")
        ax.set_title(f"int8 error by layer: {report.model} ({report.samples} samples; "
                     f"cumulative vs float where matched, {report.matched} of "
                     f"{report.int8_tensors} tensors)", fontsize=11)
        step = max(1, len(rows) // 40)
        ticks = [r.position for r in rows if r.flag or r.position % step == 0]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{p} {rows[p].op}" for p in ticks], rotation=90, fontsize=7)
        for r in rows:
            if r.flag:
                ax.annotate(f"{r.flag}: {short_name(r.tensor)}", (r.position, heights[r.position]),
                            xytext=(0, 4), textcoords="offset points", rotation=90,
                            ha="center", va="bottom", fontsize=7, color=FLAGGED_COLOUR)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        return buffer.getvalue()
    finally:
        plt.close(fig)


def html_section(reports: list, pngs: list) -> str:
    """The layer tables and plots of `qdeploy report --html`, one per model, worst first,
    each with an anchor the page's index links to."""
    import base64
    import html

    if not reports:
        return ""
    heads = ("#", "op", "tensor", "scale", "zero point", "range", "rmse/scale", "mean error",
             "max |error|", "cumulative rmse/scale", "flag", "reason", "fix")
    links, parts = [], []
    for report, png in zip(reports, pngs):
        anchor = "layers-" + "".join(c if c.isalnum() else "-" for c in report.model)
        links.append(f'<a href="#{anchor}">{html.escape(report.model)}</a>')
        cells = []
        for r in report.worst_first():
            values = (r.position, r.op, r.tensor, f"{r.scale:.4g}", r.zero_point,
                      f"{r.range:.4g}", _num(r.rmse_scale), _num(r.mean_error),
                      _num(r.max_abs_error), _num(r.cumulative_rmse_scale), r.flag, r.reason,
                      r.fix)
            style = ' class="regression"' if r.flag else ""
            cells.append(f"<tr{style}>" + "".join(
                f'<td class="text">{html.escape(str(v))}</td>' if k in (1, 2, 10, 11, 12)
                else f"<td>{html.escape(str(v))}</td>" for k, v in enumerate(values)) + "</tr>")
        image = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<h3 id="{anchor}">{html.escape(report.model)} ({report.int8_sha256[:12]})</h3>\n'
            f'<p class="note">{report.samples} samples from {html.escape(report.data)}; per '
            f"layer: {html.escape(report.per_layer)}; {report.matched} of "
            f"{report.int8_tensors} int8 tensors matched to the float model by name.</p>\n"
            f'<img class="layers-plot" alt="int8 error by layer, {html.escape(report.model)}" '
            f'src="data:image/png;base64,{image}">\n<table class="layers">\n<thead><tr>'
            + "".join(f"<th>{html.escape(h)}</th>" for h in heads)
            + "</tr></thead>\n<tbody>\n" + "\n".join(cells) + "\n</tbody>\n</table>")
    return ("<h2 id=\"layers\">int8 error by layer</h2>\n<p>" + ", ".join(links)
            + " (qdeploy evaluate --layers; worst first, flagged rows shaded)</p>\n"
            + "\n".join(parts) + "\n")


def _num(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.3g}"
