"""How `qdeploy evaluate` prints a detect, segment or pose evaluation: one table of the
task's figures per variant with the change from float, and the per-class table."""

from __future__ import annotations

from qdeploy.cli.ui import out

ORDER = ("float", "int8", "edgetpu")


def variant_names(document: dict) -> list:
    return sorted(document["variants"], key=lambda n: ORDER.index(n) if n in ORDER else 9)


def print_task_evaluation(document: dict) -> None:
    from rich.table import Table

    from qrun.measure.evaluate import FIGURES, LABELS

    data, variants = document["data"], document["variants"]
    names = variant_names(document)
    truth = "the float model's outputs" if data["against"] == "float" else "labels"
    table = Table(title=f"{document['task']} on {data['images']} images ({data['layout']} "
                        f"layout, truth: {truth})", title_justify="left")
    table.add_column("")
    base = variants.get("float")
    for name in names:
        table.add_column(name, justify="right")
        if base is not None and name != "float":
            table.add_column("change", justify="right")
    for key in FIGURES[document["task"]]:
        cells = []
        for name in names:
            cells.append(f"{variants[name][key]:.4f}")
            if base is not None and name != "float":
                cells.append(f"{variants[name][key] - base[key]:+.4f}")
        table.add_row(LABELS[key], *cells)
    speeds = [variants[n].get("images_per_s") for n in names]
    table.add_row("images/s (host)", *[c for n, s in zip(names, speeds)
                                      for c in ((f"{s:.1f}" if s else "—"),)
                                      + (("",) if base is not None and n != "float" else ())])
    out.print(table)
    print_per_class(document, names)
    if document.get("fidelity"):
        from qdeploy.cli.convert import fidelity_line
        from qrun.model.manifest import Fidelity

        out.print("convert's fidelity gate: "
                  f"{fidelity_line(Fidelity.from_dict(document['fidelity']))}", markup=False)
    for s in document["skipped"]:
        out.print(f"skipped {s['variant']}: {s['reason']}")
    for note in document["notes"]:
        out.print(f"note: {note}")


def print_per_class(document: dict, names: list) -> None:
    from rich.table import Table

    key = "iou" if document["task"] == "segment" else "ap50_95"
    rows = {}
    for name in names:
        for c in document["variants"][name].get("per_class", []):
            rows.setdefault(c["name"] or str(c["id"]), {})[name] = c[key]
    if not rows:
        return
    table = Table(title="IoU per class" if key == "iou" else "AP50-95 per class",
                  title_justify="left")
    table.add_column("class")
    for name in names:
        table.add_column(name, justify="right")
    for label, values in rows.items():
        table.add_row(label, *[("—" if values.get(n) is None else f"{values[n]:.4f}")
                               for n in names])
    out.print(table)
