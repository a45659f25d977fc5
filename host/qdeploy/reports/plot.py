"""The latency figure of `qdeploy report --plot`: one PNG, two panels.

Left: the distribution of per-run latencies (an empirical CDF from the raw timings)
of each variant on each target. Middle: median and p99 per variant and target as
grouped bars. Right, when `qdeploy push --eval` measured accuracy on the device:
accuracy against latency per variant, the trade-off people choose a variant on. matplotlib (Agg backend) is imported only here and only when a plot
is asked for: the device never needs it.
"""

from __future__ import annotations

import io
from typing import Sequence

from qdeploy.reports.schema import ReportRow
from qrun.errors import UserError
from qrun.model.layout import EDGETPU, FLOAT, INT8

WIDTH_PX = 1400
HEIGHT_PX = 600
DPI = 100
VARIANT_COLOURS = {FLOAT: "#4c72b0", INT8: "#dd8452", EDGETPU: "#55a868"}
OTHER_COLOURS = ("#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot and --html need matplotlib; install it with: "
                        "pip install 'qdeploy[host]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def title_for(rows: Sequence[ReportRow]) -> str:
    """A title naming the model(s) and target(s) of the rows."""
    models = sorted({r.model_name for r in rows})
    targets = sorted({r.target for r in rows})
    return (f"Inference latency of {', '.join(models)} on {', '.join(targets)}")


def series_label(row: ReportRow, rows: Sequence[ReportRow], sep: str = " ") -> str:
    """`variant (device)`, with the model and target added when the plot holds several.

    `sep` joins the parts: a space for the legend, a newline under a bar.
    """
    parts = [f"{row.variant} ({row.device_used})"]
    if len({r.model_name for r in rows}) > 1:
        parts.insert(0, row.model_name)
    if len({r.target for r in rows}) > 1:
        parts.append(f"@ {row.target}")
    return sep.join(parts)


def colours(rows: Sequence[ReportRow]) -> list:
    """One colour per series: by variant when each variant appears once, else by position."""
    variants = [r.variant for r in rows]
    if len(set(variants)) == len(variants) and set(variants) <= set(VARIANT_COLOURS):
        return [VARIANT_COLOURS[v] for v in variants]
    palette = tuple(VARIANT_COLOURS.values()) + OTHER_COLOURS
    return [palette[i % len(palette)] for i in range(len(rows))]


def render_png(rows: Sequence[ReportRow], width_px: int = WIDTH_PX,
               height_px: int = HEIGHT_PX, dpi: int = DPI) -> bytes:
    """The figure for `rows` (latest reports, with raw timings) as PNG bytes of the given size."""
    if not rows:
        raise UserError("nothing to plot: no reports match")
    plt = _pyplot()
    import numpy as np

    scored = any(getattr(r, "accuracy_value", None) is not None for r in rows)
    if scored:  # push --eval: a third panel, as wide as the others
        width_px = width_px * 3 // 2
    fig, axes = plt.subplots(1, 3 if scored else 2, figsize=(width_px / dpi, height_px / dpi),
                             dpi=dpi)
    cdf, bars = axes[0], axes[1]
    try:
        fig.suptitle(title_for(rows), fontsize=13)
        labels = [series_label(r, rows) for r in rows]
        colour = colours(rows)
        for i, (row, label) in enumerate(zip(rows, labels)):
            timings = np.sort(np.asarray(row.timings_us or [row.median_us], dtype=float)) / 1e3
            fraction = np.arange(1, timings.size + 1) / timings.size
            cdf.step(timings, fraction, where="post", color=colour[i], linewidth=1.8,
                     label=f"{label}, n={timings.size}")
            cdf.axvline(row.median_us / 1e3, color=colour[i], linestyle=":", linewidth=1)
        cdf.set_xlabel("latency per inference (ms)")
        cdf.set_ylabel("fraction of runs at or below")
        cdf.set_ylim(0, 1.02)
        cdf.set_title("Latency distribution (CDF of runs; dotted: median)", fontsize=11)
        cdf.grid(True, alpha=0.3)
        cdf.legend(fontsize=9, loc="lower right")

        x = np.arange(len(rows))
        width = 0.38
        medians = [r.median_us / 1e3 for r in rows]
        p99s = [r.p99_us / 1e3 for r in rows]
        b1 = bars.bar(x - width / 2, medians, width, color=colour, label="median")
        b2 = bars.bar(x + width / 2, p99s, width, color=colour, alpha=0.5, hatch="//",
                      edgecolor="black", linewidth=0.5, label="p99")
        bars.bar_label(b1, fmt="%.2f", fontsize=8, padding=2)
        bars.bar_label(b2, fmt="%.2f", fontsize=8, padding=2)
        bars.set_xticks(x)
        bars.set_xlim(-0.9, len(rows) - 0.1)
        bars.set_xticklabels([series_label(r, rows, sep="\n") for r in rows],
                             fontsize=9 if len(rows) <= 4 else 7)
        bars.set_ylabel("latency (ms)")
        bars.set_title("Median and p99 per variant and target", fontsize=11)
        bars.set_ylim(0, max(p99s + medians) * 1.15)
        bars.grid(True, axis="y", alpha=0.3)
        bars.legend(handles=[b1, b2], fontsize=9, loc="upper right")
        if scored:
            tradeoff(axes[2], rows, colour)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        return buffer.getvalue()
    finally:
        plt.close(fig)


def tradeoff(ax, rows: Sequence[ReportRow], colour: list) -> None:
    """Accuracy (push --eval's figure) against median latency, one point per variant and
    target; a frame's median when the benchmark timed whole frames."""
    from qdeploy.reports.accuracy import LABELS

    metrics = set()
    for i, r in enumerate(rows):
        if r.accuracy_value is None:
            continue
        metrics.add(LABELS.get(r.accuracy_metric, r.accuracy_metric))
        latency = (r.frame_total_median_us or r.median_us) / 1e3
        ax.scatter([latency], [r.accuracy_value], s=90, color=colour[i], zorder=3,
                   edgecolor="black", linewidth=0.6)
        ax.annotate(series_label(r, rows), (latency, r.accuracy_value), fontsize=8,
                    textcoords="offset points", xytext=(6, 6))
    ax.set_xlabel("median latency (ms; a whole frame when timed)")
    ax.set_ylabel(" / ".join(sorted(metrics)) + " on the device")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1.05)
    ax.set_title("Accuracy against latency per variant", fontsize=11)
    ax.grid(True, alpha=0.3)
