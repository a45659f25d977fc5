"""The push table's latency cell: one formatter, readable from microseconds to seconds."""

from __future__ import annotations

import pytest
from rich.console import Console

from qdeploy.cli.push_view import latency_text, render_table
from qdeploy.push.options import PushResult


@pytest.mark.parametrize("latencies, text", [
    ((1270.4, 1290.0), "1.27/1.29 ms"),
    ((12345.6, 20000.0), "12.35/20.00 ms"),
    ((312.4, 340.6), "312/341 µs"),  # the demo model's invoke: was 0.00/0.00
    ((950.0, 1100.2), "950/1100 µs"),  # one unit per cell, picked by the median
    ((41.31, 52.24), "41.3/52.2 µs"),
    ((0.523, 0.8), "0.523/0.8 µs"),
    ((312.4,), "312 µs"),
    ((None, 3.0), "-"), ((1.0, "x"), "-"), ((True, 1.0), "-"), ((), "-"),
])
def test_latency_text(latencies, text):
    assert latency_text(*latencies) == text


def test_the_table_prints_sub_millisecond_latencies_in_microseconds():
    result = PushResult("local", ok=True, release_id="r1", reports=[
        {"device": {"used": "cpu"}, "model": {"variant": "int8"},
         "latency_us": {"median": 31.25, "p99": 48.0}}])
    console = Console(record=True, width=120)
    console.print(render_table([result]))
    text = console.export_text()
    assert "31.2/48 µs" in text and "0.00/" not in text
