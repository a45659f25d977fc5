"""The preflight on graphs built with TensorFlow like the models of real compiler logs.

Each expectation comes from a real log in tests/data/compiler-logs (copied there with
its source header): the op tables of logs 34 (YOLOv8n at 320), 35 (YOLOv5n at 640) and
36 (BlazeFace, float I/O, compiler 15) row for row, log 37 (YOLOv8n at 640) but for one
requantizing QUANTIZE, the size limits crossed on grids below and above them, the
channel PADs under compilers 14, 15 and 16, and an op that ends one Edge TPU segment and,
with -a, starts the next. The replicas are built once per module
(tests/fixtures/replicas.py).
"""

from collections import Counter

import pytest

from qdeploy.edgetpu import compiler_log, preflight
from qdeploy.edgetpu import ops as t

from tests.fixtures import replicas
from tests.paths import COMPILER_LOGS as LOGS

pytestmark = pytest.mark.slow

YOLOV8N = "34-logfile-v16-yolov8n-320-transpose-partly-mapped.txt"
YOLOV5N = "35-logfile-v16-yolov5n-640-reshape-limitation.txt"
BLAZEFACE = "36-logfile-v15-blazeface-float-io-channel-pad.txt"
YOLOV8N_640 = "37-logfile-v16-yolov8n-640-logistic-quantize-limitation.txt"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tf = pytest.importorskip("tensorflow", reason="TensorFlow builds the replicas")
    return replicas.build(tf, tmp_path_factory.mktemp("replicas"))


def log_table(name: str) -> Counter:
    """(op, status) -> count, from a real compiler log."""
    log = compiler_log.parse((LOGS / name).read_text())
    table = Counter()
    for row in log.op_table:
        table[(row.op, row.status)] += row.count
    return table


def table(prediction) -> Counter:
    return Counter((r.op, r.status) for r in prediction.ops)


def rows(prediction, op: str) -> list:
    return [r for r in prediction.ops if r.op == op]


def test_blazeface_op_table_is_log_36s(built):
    """Log 36, compiler 15, float I/O: all 11 channel PADs mapped, the input QUANTIZE
    'unspecified limitation', the two output DEQUANTIZE 'unsupported data type', the two
    requantizing QUANTIZEs and everything else between them mapped: one Edge TPU segment,
    every (op, status) row of the log, count for count."""
    p = preflight.preflight(built["blazeface"], compiler="15")
    real = log_table(BLAZEFACE)
    assert table(p) == real
    assert (p.on_edgetpu, len(p.ops)) == (75, 78) == (real_mapped(real), sum(real.values()))
    requantizing = [r for r in rows(p, "QUANTIZE") if r.mapped]
    assert len(requantizing) == 2
    pads = rows(p, "PAD")
    assert len(pads) == 11 and all(r.mapped for r in pads)
    assert [s.kind for s in p.segments] == ["cpu", "edgetpu", "cpu"] and p.subgraphs == 1
    assert p.first_blocker.op == "DEQUANTIZE" and p.first_blocker.rule == "float io"


def real_mapped(real: Counter) -> int:
    return sum(n for (_, status), n in real.items() if status == t.MAPPED)


def test_blazeface_channel_pads_under_compilers_14_15_16(built):
    """Compilers 15 (log 36) and 16 map PAD along channels; the 2019 table (compiler 14
    and older) pads only x and y, so there the first channel PAD leaves the Edge TPU
    and the verdict names its rule and the fix."""
    p15 = preflight.preflight(built["blazeface"], compiler="15")
    p16 = preflight.preflight(built["blazeface"], compiler="16")
    assert table(p16) == table(p15)
    p14 = preflight.preflight(built["blazeface"], compiler="14")
    first = p14.first_blocker
    assert (first.op, first.status, first.rule) == ("PAD", t.LIMITATION, "pad before 15")
    assert "pads along axes [3]" in first.reason
    assert "compile with edgetpu_compiler 15 or 16" in p14.verdict
    assert p14.on_edgetpu < p15.on_edgetpu


def test_transpose_mapped_at_10_and_20_refused_at_40_as_in_log_34(built):
    """Log 34 (compiler 16, YOLOv8n at 320): of the head's per-level transposes of the
    144-channel maps, the 10x10 and 20x20 ones map and the 40x40 one is refused and is the
    first op left on the CPU."""
    p = preflight.preflight(built["transpose_10_20_40"])
    shapes = [r.reason for r in rows(p, "TRANSPOSE")]
    assert [r.status for r in rows(p, "TRANSPOSE")] == [t.LIMITATION, t.MAPPED, t.MAPPED]
    assert "TRANSPOSE of 1x40x40x144 (230,400 elements) refused" in shapes[0]
    assert (p.first_blocker.op, p.first_blocker.rule) == ("TRANSPOSE", "transpose size")
    assert "log 34" in p.first_blocker.evidence
    assert "export at a smaller input" in p.fix  # a feature-map input: no image side
    # the 40x40 level's RESHAPE reads the refused TRANSPOSE: cut off, as log 34's
    # 'More than one subgraph' RESHAPEs
    assert [r.status for r in rows(p, "RESHAPE")] == [t.MORE_THAN_ONE_SUBGRAPH, t.MAPPED,
                                                      t.MAPPED]
    real = log_table(YOLOV8N)
    assert real[("TRANSPOSE", t.MAPPED)] == 2 and table(p)[("TRANSPOSE", t.MAPPED)] == 2
    # compiler 15 has no TRANSPOSE at all (log 27)
    p15 = preflight.preflight(built["transpose_10_20_40"], compiler="15")
    assert {r.status for r in rows(p15, "TRANSPOSE")} == {t.NOT_SUPPORTED}


def test_transpose_inside_the_bracket_says_likely(built):
    """1x30x30x144 lies between the mapped 1x20x20x144 and the refused 1x4x16x2100 of
    log 34: the verdict says so rather than guessing silently."""
    p = preflight.preflight(built["transpose_30"])
    assert p.first_blocker.op == "TRANSPOSE"
    assert ("TRANSPOSE of 1x30x30x144 (129,600 elements) likely refused: mapped at "
            "1x20x20x144" in p.verdict)
    assert "refused at 1x4x16x2100 (134,400)" in p.verdict


def test_reshape_limits_on_20_40_80_grids_as_in_log_35(built):
    """Log 35 (compiler 16, YOLOv5n at 640): RESHAPE 3 mapped, 3 'unspecified limitation';
    [1,1600,3,85] -> [1,4800,85] is refused, [1,40,40,255] -> [1,1600,3,85] is not."""
    p = preflight.preflight(built["reshape_20_40_80"])
    statuses = {tuple(r.reason.split(" (a dimension")[0].split("RESHAPE ")[-1:]): r.status
                for r in rows(p, "RESHAPE")}
    real = log_table(YOLOV5N)
    assert table(p)[("RESHAPE", t.LIMITATION)] == real[("RESHAPE", t.LIMITATION)] == 3
    assert table(p)[("RESHAPE", t.MAPPED)] == real[("RESHAPE", t.MAPPED)] == 3
    assert statuses[("[1, 1600, 3, 85] -> [1, 4800, 85]",)] == t.LIMITATION
    assert statuses[("[1, 6400, 3, 85] -> [1, 19200, 85]",)] == t.LIMITATION
    assert statuses[("[1, 80, 80, 255] -> [1, 6400, 3, 85]",)] == t.LIMITATION
    assert table(p)[("LOGISTIC", t.MAPPED)] == 3  # as log 35: every LOGISTIC mapped
    assert p.first_blocker.rule == "reshape size" and "move the reshape after the head" \
        in p.fix
    assert "log 35" in p.verdict


def test_an_op_that_ends_one_segment_and_starts_another(built):
    """The refused 1x40x40x64 TRANSPOSE (log 34) between two convolution stacks: without
    -a the stack behind it is cut off ('More than one subgraph', as in logs 34-35); with
    -a the compiler restarts an Edge TPU subgraph after it."""
    single = preflight.preflight(built["split_by_cpu_op"])
    assert [s.kind for s in single.segments] == ["edgetpu", "cpu"]
    assert {r.status for r in rows(single, "CONV_2D")} == {t.MAPPED,
                                                           t.MORE_THAN_ONE_SUBGRAPH}
    split = preflight.preflight(built["split_by_cpu_op"], multiple_subgraphs=True)
    assert [s.kind for s in split.segments] == ["edgetpu", "cpu", "edgetpu"]
    assert split.segments[1].cpu_ops == ["TRANSPOSE"] and split.subgraphs == 2
    assert preflight.layout(split) == [t.EDGETPU_CUSTOM_OP, "TRANSPOSE", t.EDGETPU_CUSTOM_OP]
    lines = preflight.report_lines(split)
    assert "segment 1: CPU: TRANSPOSE" in lines
    # pipelined in 2 segments (-n 2): each segment model has its own Edge TPU part
    piped = preflight.preflight(built["split_by_cpu_op"], num_segments=2)
    assert [s.kind for s in piped.segments] == ["pipeline", "pipeline"]
    assert sum(s.count for s in piped.segments) == len(piped.ops)


def test_yolov5n_640_op_table_is_log_35s(built):
    """A YOLOv5n built as yolov5's TF export writes it (60 CONV_2D, 7 stride-2 PADs, C3
    and SPPF blocks, one LOGISTIC per level in the head), at 640: every (op, status) row
    of log 35, count for count. The 80x80 level's first RESHAPE ([1,80,80,255] ->
    [1,6400,3,85]) leaves the Edge TPU and cuts that level's decode off; the 40x40
    level's second RESHAPE, the last CONCATENATION and the output QUANTIZE are refused
    for their size."""
    p = preflight.preflight(built["yolov5n_640"])
    assert table(p) == log_table(YOLOV5N)
    assert (p.on_edgetpu, len(p.ops)) == (240, 256)
    first = p.first_blocker
    assert (first.op, first.rule) == ("RESHAPE", "reshape size")
    assert "RESHAPE [1, 80, 80, 255] -> [1, 6400, 3, 85]" in first.reason
    refused = [r.reason.split(" (")[0] for r in p.ops if r.status == t.LIMITATION]
    assert "RESHAPE [1, 1600, 3, 85] -> [1, 4800, 85]" in refused
    assert "CONCATENATION of 1x25200x85" in refused and "QUANTIZE of 1x25200x85" in refused
    # the fix names the input side that brings the 80x80 grid's 6400 down to 1600
    assert "export at 320 instead of 640 so no dimension passes 1600" in p.fix


def test_yolov8n_320_op_table_is_log_34s(built):
    """A YOLOv8n built as Ultralytics 8.1.11 exports it through onnx2tf, at 320: every
    (op, status) row of log 34, count for count (256 ops, 233 on the Edge TPU). Cut at
    the 40x40 level's TRANSPOSE; refused for their own size: the DFL's two TRANSPOSEs, the
    levels' CONCATENATION [1,144,2100], its two slices into boxes and classes and the DFL's
    RESHAPE; the SOFTMAX, the DFL convolution and the box decoding are cut off."""
    p = preflight.preflight(built["yolov8n_320"])
    assert table(p) == log_table(YOLOV8N)
    assert (p.on_edgetpu, len(p.ops)) == (233, 256)
    first = p.first_blocker
    assert (first.op, first.rule) == ("TRANSPOSE", "transpose size")
    assert "TRANSPOSE of 1x40x40x144 (230,400 elements) refused" in first.reason
    refused = {r.reason.split(" refused")[0] for r in p.ops if r.status == t.LIMITATION}
    assert {"CONCATENATION of 1x144x2100 (302,400 in a row)",
            "STRIDED_SLICE of 1x144x2100 (302,400 in a row)",
            "TRANSPOSE of 1x64x2100 (134,400 elements)"} <= refused
    assert any(r.startswith("RESHAPE [1, 2100, 64] -> [1, 2100, 4, 16]") for r in refused)
    softmax, = rows(p, "SOFTMAX")
    assert softmax.status == t.MORE_THAN_ONE_SUBGRAPH  # [1,4,2100,16]: mappable under 16
    assert "export at 160 instead of 320 so the transposed map stays within 57,600" in p.fix
    # compiler 15 maps no TRANSPOSE at all (log 27): the first one ends the Edge TPU part
    p15 = preflight.preflight(built["yolov8n_320"], compiler="15")
    assert {r.status for r in rows(p15, "TRANSPOSE")} == {t.NOT_SUPPORTED}
    assert p15.on_edgetpu < p.on_edgetpu


def test_yolov8n_640_op_table_is_log_37s_but_one_requantize(built):
    """The same export at 640 (log 37): the class scores' LOGISTIC and their requantizing
    QUANTIZE of [1,80,8400] are refused for their size (mappable at [1,80,2100] in log
    34), and so are both concatenations. Every row of log 37 but one: the real model
    requantized one of the neck's two inputs shared by two concatenations, TF 2.21
    requantizes both (calibration ranges decide it; the real 320 export has both)."""
    p = preflight.preflight(built["yolov8n_640"])
    real = log_table(YOLOV8N_640)
    assert table(p) - real == Counter({("QUANTIZE", t.MAPPED): 1})
    assert real - table(p) == Counter()
    assert (p.on_edgetpu, len(p.ops)) == (231, 256)
    refused = {r.op: r.rule for r in p.ops if r.status == t.LIMITATION}
    assert refused["LOGISTIC"] == "logistic size" and refused["QUANTIZE"] == "quantize size"
    assert p.first_blocker.op == "TRANSPOSE"
