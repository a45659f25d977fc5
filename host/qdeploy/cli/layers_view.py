"""`qdeploy evaluate --layers`: run the layer report, keep it in the report store, print it
(a table worst first, or JSON), and write the plot and the page when asked."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qdeploy.cli.ui import out, print_json, progress_bar


def wanted(layers: bool, **options) -> bool:
    """--layers; its options without it are refused, naming them."""
    given = [f"--{name}" for name, value in options.items() if value is not None]
    if given and not layers:
        from qdeploy.errors import UserError

        raise UserError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} "
                        "--layers (the layer report); add --layers or leave "
                        f"{'it' if len(given) == 1 else 'them'} out")
    return layers


def run(directory: Path, data: Optional[Path], float_model: Optional[Path],
        limit: Optional[int], compare: Optional[str], json_out: bool, plot: Optional[Path],
        html: Optional[Path], reports: Path) -> None:
    from qdeploy.quantize.layers import analyse
    from qdeploy.reports import history, layers as layer_store
    from qdeploy.reports.store import open_store

    for path, what in ((plot, "plot"), (html, "HTML page")):
        if path is not None:
            history.check_output_path(path, what)
    with progress_bar("Running float and int8 with every tensor kept") as tick:
        report = analyse(directory, data, float_model=float_model, limit=limit,
                         compare=compare, progress=tick)
    with open_store(reports) as store:
        layer_store.add_layer_report(store, report)
    png = layer_store.render_png(report) if plot is not None or html is not None else b""
    if plot is not None:
        history.write_output(plot, png, "plot")
    if html is not None:
        page = page_html(report, png)
        history.write_output(html, page.encode("utf-8"), "HTML page")
    if json_out:
        print_json(report.to_dict())
        return
    print_layers(report)
    for path in (plot, html):
        if path is not None:
            out.print(f"wrote {path}")


def page_html(report, png: bytes) -> str:
    from qdeploy.reports.html import _STYLE
    from qdeploy.reports.layers import html_section

    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>int8 error by layer: {report.model}</title>\n<style>{_STYLE}</style>\n"
            f"</head>\n<body>\n{html_section([report], [png])}</body>\n</html>\n")


def _num(value: Optional[float], fmt: str = ".3g") -> str:
    return "—" if value is None else format(value, fmt)


def print_layers(report) -> None:
    from rich.table import Table

    from qdeploy.reports.layers import short_name

    rows = report.worst_first()
    compare = report.compare is not None
    table = Table(title=f"int8 error by layer, worst first: {report.model} on "
                        f"{report.samples} samples (rounding alone: rmse/scale 0.29)",
                  title_justify="left")
    columns = ["#", "op", "tensor", "scale", "zp", "range", "rmse/scale", "mean err",
               "max |err|", "cumul."] + (["per-tensor"] if compare
                                                     else []) + ["flag"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("op", "tensor", "flag") else "right",
                         no_wrap=col != "tensor", min_width=24 if col == "tensor" else None)
    for r in rows:
        cells = [str(r.position), r.op, short_name(r.tensor), f"{r.scale:.4g}", str(r.zero_point),
                 f"{r.range:.4g}", _num(r.rmse_scale), _num(r.mean_error, ".2g"),
                 _num(r.max_abs_error), _num(r.cumulative_rmse_scale)]
        cells += [_num(r.per_tensor_rmse_scale)] if compare else []
        cells.append(f"[bold red]{r.flag}[/bold red]" if r.flag else "")
        table.add_row(*cells)
    out.print(table)
    out.print(f"rmse/scale, mean err, max |err|: per layer, {report.per_layer}"
              + ("; per-tensor: rmse/scale with per-tensor weights" if compare else "")
              + f"; cumul.: rmse/scale against the float model's tensor "
              f"of the same name ({report.matched} of {report.int8_tensors} int8 tensors "
              f"matched, the float model has {report.float_tensors})")
    for r in rows:
        if r.flag:
            out.print(f"[bold red]{r.flag}[/bold red] #{r.position} {r.op} {r.tensor}: "
                      f"{r.reason}\n  fix: {r.fix}")
    for note in report.notes:
        out.print(f"note: {note}")
