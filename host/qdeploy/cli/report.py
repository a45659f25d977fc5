"""`qdeploy report`: print the latest benchmarks and their history; write a plot or a page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from qdeploy.reports import history as reporting
from qdeploy.reports.store import open_store


HELP = ("Show the latest benchmark per target and variant, and the history of each.\n\n"
        "The table gives the model's task (from its deployment manifest; empty for a bare "
        "model file or a report from an older qrun), the device used, runtime, median/p90/p99 "
        "latency, init and first "
        "inference time, peak RSS, model size, accuracy (measured on the device by qdeploy push "
        "--eval: mAP50-95, mIoU or OKS AP; else a classifier's top-1 from qdeploy evaluate), "
        "top-1 agreement and max |Δ| of outputs with the host (when qdeploy push --verify "
        "measured them), the speed-up over the float variant (ratio of medians) and, when the "
        "benchmark timed whole frames (qrun bench --image), a frame's median and p99 and frames "
        "per second (1e6 / the frame median in µs; — otherwise), and stream fps: a video's "
        "frames through the pipeline (qrun bench --video; push --bench-video). The history "
        "flags a "
        "median more than 10% worse than the previous report of the same model, target and "
        "variant, and a release whose accuracy on the device fell more than 0.01 below the "
        "previous one on the same data (ACCURACY DROP).")


commands = typer.Typer()  # added to the qdeploy app by qdeploy.cli


@commands.command(help=HELP)
def report(
    reports: Path = typer.Option(Path("reports"), "--reports", metavar="DIR",
                                 help="Directory holding the report store (qdeploy.sqlite), "
                                      "as written by qdeploy push."),
    target: Optional[str] = typer.Option(None, "--target",
                                         help="Only this target (as named at push time)."),
    model: Optional[str] = typer.Option(None, "--model",
                                        help="Only this model: its name (file name without "
                                             "_int8/_edgetpu/_float), file name, or a sha256 "
                                             "prefix."),
    since: Optional[str] = typer.Option(None, "--since",
                                        help="Only reports from this time on: an ISO-8601 date "
                                             "or time (UTC unless a zone is given), or an age "
                                             "such as 30m, 12h, 7d, 2w."),
    as_json: bool = typer.Option(False, "--json",
                                 help="Print the table and history as JSON instead of tables."),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE.png",
                                        help="Write a PNG: latency CDF per variant and median/"
                                             "p99 bars per variant and target."),
    html: Optional[Path] = typer.Option(None, "--html", metavar="FILE.html",
                                        help="Write one self-contained HTML page with the "
                                             "tables and the plot embedded."),
):
    """`qdeploy report`: read the store, print tables or JSON, write the plot and page."""
    for path, what in ((plot, "plot"), (html, "HTML page")):
        if path is not None:
            reporting.check_output_path(path, what)
    from qdeploy.reports import layers as layer_store

    with open_store(reports, create=False) as store:
        result = reporting.build(store, target=target, model=model, since=since)
        layer_reports = layer_store.latest_layer_reports(store, {r.model for r in result.table})
    if plot is not None or html is not None:
        from qdeploy.reports import plot as plotting

        png = plotting.render_png(result.latest)
        if plot is not None:
            reporting.write_output(plot, png, "plot")
        if html is not None:
            from qdeploy.reports.html import render_html

            section = layer_store.html_section(layer_reports, [layer_store.render_png(r) for r
                                                               in layer_reports])
            reporting.write_output(html, render_html(result, png, section).encode("utf-8"),
                                   "HTML page")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    _print_tables(result)
    for path in (plot, html):
        if path is not None:
            typer.echo(f"wrote {path}")


def _print_tables(result: reporting.Report) -> None:
    from rich.console import Console
    from rich.table import Table

    from qdeploy.reports import accuracy

    console = Console()
    if not console.is_terminal:  # piped or captured: don't squeeze 20 columns into 80
        console = Console(width=max(console.width, 230))
    latest = Table(title="Latest report per target and variant (latencies in ms)")
    for name in ("target", "model", "variant", "task", "device", "runtime", "median", "p90",
                 "p99", "init", "first", "peak RSS", "size", "accuracy", "agreement",
                 "max |Δ|", "vs float", "stream fps", "frame", "frame p99", "fps"):
        latest.add_column(name, justify="left" if name in ("target", "model", "variant", "task",
                                                            "device", "runtime") else "right")
    for r in result.table:
        device = f"{r.device_used}\n[dim]{r.device_reason}[/dim]" if r.device_reason else \
            r.device_used
        latest.add_row(r.target, r.model, r.variant, reporting.task_text(r.task), device,
                       r.runtime,
                       reporting.ms(r.median_us), reporting.ms(r.p90_us),
                       reporting.ms(r.p99_us), f"{r.init_ms:.1f}",
                       f"{r.first_inference_ms:.2f}", reporting.rss_text(r.peak_rss_kb),
                       reporting.size_text(r.model_size), accuracy.text(r),
                       reporting.agreement_text(r.agreement), reporting.diff_text(r.max_abs_diff),
                       reporting.speedup_text(r.speedup), reporting.fps_text(r.stream_fps),
                       reporting.frame_text(r.frame_median_us),
                       reporting.frame_text(r.frame_p99_us), reporting.fps_text(r.fps))
    console.print(latest)

    history = Table(title="History (median change over the previous report of the series)")
    for name in ("time (UTC)", "target", "model", "variant", "sha256", "median", "p99",
                 "change", ""):
        history.add_column(name, justify="right" if name in ("median", "p99", "change")
                           else "left")
    for h in result.history:
        history.add_row(h.timestamp[:19].replace("T", " "), h.target, h.model, h.variant,
                        h.model_sha256[:12], reporting.ms(h.median_us), reporting.ms(h.p99_us),
                        reporting.change_text(h.change),
                        "[bold red]REGRESSION[/bold red]" if h.regression else "")
    console.print(history)
    if result.regressions:
        console.print(f"[bold red]{len(result.regressions)} regression(s)[/bold red]: median "
                      f"more than {reporting.REGRESSION_THRESHOLD:.0%} worse than the "
                      "previous report")
    for d in result.accuracy_drops:
        console.print(f"[bold red]ACCURACY DROP[/bold red] {accuracy.drop_line(d)}")
