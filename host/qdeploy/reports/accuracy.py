"""Accuracy beside latency in `qdeploy report`: what `qdeploy push --eval` measured on the
device (a report's `accuracy_*` columns: the task's main figure, mAP50-95, mIoU or OKS AP,
on the data set whose digest is `accuracy_data`), and the releases whose accuracy dropped.

A drop is a report whose figure is more than `ACCURACY_DROP` (absolute, on the figure's
0..1 scale) below the previous report of the same target, model and variant measured with
the same metric on the same data: comparing figures of other data would mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

ACCURACY_DROP = 0.01  # one point of mAP, mIoU or OKS AP
LABELS = {"map50_95": "mAP50-95", "map50": "mAP50", "miou": "mIoU",
          "pixel_accuracy": "pixel acc.", "oks_ap": "OKS AP"}


@dataclass
class AccuracyDrop:
    """One release whose accuracy on the device fell below the one before it."""

    target: str
    model: str
    variant: str
    model_sha256: str
    timestamp: str
    metric: str
    value: float
    previous: float
    change: float  # value - previous
    report_id: int


def drops(history: list, threshold: float = ACCURACY_DROP) -> list:
    """The AccuracyDrops of `history` (ReportRows, oldest first)."""
    previous: dict = {}
    found = []
    for r in history:
        if r.accuracy_value is None:
            continue
        key = (r.target, r.model_name, r.variant, r.accuracy_metric, r.accuracy_data)
        before = previous.get(key)
        if before is not None and r.accuracy_value < before - threshold:
            found.append(AccuracyDrop(r.target, r.model_name, r.variant, r.model_sha256,
                                      r.timestamp, r.accuracy_metric, r.accuracy_value, before,
                                      r.accuracy_value - before, r.id))
        previous[key] = r.accuracy_value
    return found


def text(row) -> str:
    """The accuracy cell: the device's figure ("mAP50-95 0.512") when push --eval measured
    one, else the classifier's top-1 from qdeploy evaluate ("91.20%"), else "—"."""
    value: Optional[float] = getattr(row, "accuracy_value", None)
    if value is not None:
        return f"{LABELS.get(row.accuracy_metric, row.accuracy_metric)} {value:.3f}"
    return "—" if row.accuracy is None else f"{row.accuracy * 100:.2f}%"


def drop_line(d: AccuracyDrop) -> str:
    return (f"{d.target} {d.model} {d.variant} ({d.model_sha256[:12]}, {d.timestamp[:19]}): "
            f"{LABELS.get(d.metric, d.metric)} {d.value:.3f}, was {d.previous:.3f} "
            f"({d.change:+.3f})")
