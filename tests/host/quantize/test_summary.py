"""The one-line op summary `qdeploy convert` prints instead of every op name."""

from qdeploy.quantize.summary import op_summary


def test_counts_per_op_busiest_first_and_the_cpu_ones_named():
    ops = ["QUANTIZE", "CONV_2D", "LOGISTIC", "CONV_2D", "TRANSPOSE", "RESHAPE", "CONV_2D",
           "QUANTIZE"]
    line = op_summary(ops, ["TRANSPOSE", "RESHAPE", "QUANTIZE"])
    assert line == ("8 ops: 3 CONV_2D, 2 QUANTIZE, 1 LOGISTIC, 1 RESHAPE, 1 TRANSPOSE; "
                    "on the CPU (3): 1 QUANTIZE, 1 RESHAPE, 1 TRANSPOSE")
    assert "\n" not in line


def test_no_cpu_part_when_everything_maps():
    assert op_summary(["CONV_2D"]) == "1 op: 1 CONV_2D"
