"""The one-line op summary convert prints: counts per op, busiest first, and which ops the
Edge TPU would leave on the CPU (named by the caller: the preflight lives above this
stage)."""

from __future__ import annotations

from collections import Counter


def op_summary(ops: list, cpu_ops: list = ()) -> str:
    """'117 ops: 38 CONV_2D, 30 LOGISTIC, ... ; on the CPU: 3 TRANSPOSE, 2 RESHAPE' for the
    op names of a model in execution order; `cpu_ops` lists the ops (with repeats) the
    Edge TPU compiler would not map."""
    counts = Counter(ops)
    order = sorted(counts, key=lambda name: (-counts[name], name))
    line = f"{len(ops)} op{'s' if len(ops) != 1 else ''}: " + ", ".join(
        f"{counts[name]} {name}" for name in order)
    if cpu_ops:
        cpu = Counter(cpu_ops)
        named = sorted(cpu, key=lambda name: (-cpu[name], name))
        line += f"; on the CPU ({len(cpu_ops)}): " + ", ".join(f"{cpu[n]} {n}" for n in named)
    return line
