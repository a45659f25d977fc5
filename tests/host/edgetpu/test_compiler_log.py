"""The compiler-output parser on every real edgetpu_compiler output in tests/data/compiler-logs.

Each file gets its own expectations, read off the file by hand: version, paths, memory,
counts, op table, and the failure classification.
"""


import pytest

from qdeploy.edgetpu import compiler_log
from qdeploy.edgetpu import ops as t

from tests.paths import COMPILER_LOGS as LOGS

V15, V16, V14 = "15.0.340273435", "16.0.384591198", "14.1.317412892"
MIB, KIB = 1 << 20, 1 << 10

# file -> (fields to compare, number of op-table rows, failure kind or None)
EXPECTED = {
    "01-logfile-v15-all-mapped-mnist7.txt": (
        dict(compiler_version=V15, input_model="mnist7.tflite",
             output_model="mnist7_edgetpu.tflite", ops_on_edgetpu=8, ops_on_cpu=0,
             total_ops=None, compiled=False), 5, None),
    "02-logfile-v15-quantize-mapped-mnist9.txt": (
        dict(compiler_version=V15, input_model="mnist9.tflite", ops_on_edgetpu=10,
             ops_on_cpu=0), 6, None),
    "03-logfile-v15-dequantize-unsupported-dtype-mnist4.txt": (
        dict(compiler_version=V15, ops_on_edgetpu=8, ops_on_cpu=2), 7, None),
    "04-logfile-v16-efficientdet-dequantize.txt": (
        dict(compiler_version=V16, input_model="model.tflite", ops_on_edgetpu=510,
             ops_on_cpu=3), 16, None),
    "05-logfile-v15-ssd-custom-op-unsupported-dtype.txt": (
        dict(compiler_version=V15, output_model="output_tflite_graph_edgetpu.tflite",
             ops_on_edgetpu=63, ops_on_cpu=1), 6, None),
    "06-logfile-v16-yolov5s-more-than-one-subgraph.txt": (
        dict(compiler_version=V16, output_model="./yolov5s-int8_edgetpu.tflite",
             ops_on_edgetpu=242, ops_on_cpu=20), 20, None),
    "08-console-v16-s-d-a-success-1-subgraph.txt": (
        dict(compiler_version=V16, input_model="model_input/model.tflite",
             output_model="model_output/model_edgetpu.tflite",
             operation_log="model_output/model_edgetpu.log", input_size=round(2.88 * MIB),
             output_size=round(3.31 * MIB), on_chip_used=round(3.86 * MIB),
             on_chip_remaining=round(3.83 * MIB), off_chip_streaming=0, edgetpu_subgraphs=1,
             total_ops=134, ops_on_edgetpu=134, ops_on_cpu=0, compile_ms=986,
             timeout_timer_s=180, search_step=1, segment_ops=[134], compiled=True,
             partial=False, succeeded=True, errors=[]), 9, None),
    "09-console-v16-large-activation-tensors-failure.txt": (
        dict(compiler_version=V16, timeout_timer_s=180, compiled=False, succeeded=False,
             ops_on_edgetpu=None), 0, "large_activations"),
    "11-console-v15-model-not-quantized.txt": (
        dict(compiler_version=V15, succeeded=None,
             errors=["Invalid model: mobilenet_v2_1.0_224_quant.tflite",
                     "Model not quantized"]), 0, "not_quantized"),
    "12-console-v14-model-not-quantized.txt": (
        dict(compiler_version=V14, errors=["Invalid model: my_mnist_quant.tflite",
                                           "Model not quantized"]), 0, "not_quantized"),
    "14-console-v16-op-version-TRANSPOSE_CONV-v4.txt": (
        dict(compiler_version=V16, compiled=False), 0, "op_version"),
    "15-console-v16-op-version-QUANTIZE-v3.txt": (
        dict(compiler_version=V16), 0, "op_version"),
    "16-console-v2.0-op-version-RELU-v2.txt": (
        dict(compiler_version="2.0.267685300"), 0, "op_version"),
    "18-console-v14-intermittent-internal-compiler-error.txt": (
        dict(compiler_version=V14, input_size=round(28.19 * KIB),
             output_size=round(116.78 * KIB), on_chip_used=60 * KIB,
             on_chip_remaining=round(7.96 * MIB), edgetpu_subgraphs=1, total_ops=24,
             ops_on_edgetpu=6, ops_on_cpu=18, compile_ms=113, compiled=True, partial=True,
             timeout_timer_s=None, errors=["Internal compiler error. Aborting!"]),
        0, "internal_error"),
    "19-console-v16-dynamic-sized-tensors.txt": (
        dict(compiler_version=V16, succeeded=False), 0, "dynamic_shape"),
    "21-console-v2.1-s-more-than-one-subgraph.txt": (
        dict(compiler_version="2.1.302470888", input_size=round(8.11 * MIB),
             on_chip_remaining=round(7.75 * KIB), off_chip_streaming=round(1.22 * MIB),
             edgetpu_subgraphs=1, total_ops=93, ops_on_edgetpu=83, ops_on_cpu=10,
             compile_ms=12264, partial=True, compiled=True, succeeded=None), 4, None),
    "23-table-v2.0-filter-bias-not-constant.txt": (
        dict(compiler_version="2.0.267685300", ops_on_edgetpu=0, ops_on_cpu=1), 1,
        "nothing_mapped"),
    "24-table-fc-2d-output-status.txt": (
        dict(compiler_version=None, reported_on_edgetpu=0, reported_on_cpu=1,
             ops_on_edgetpu=0), 1, "nothing_mapped"),
    "26-table-unsupported-rank-batch.txt": (
        dict(compiler_version=None, ops_on_edgetpu=0, ops_on_cpu=6), 1, "nothing_mapped"),
    "27-logfile-v15-operation-not-supported-transpose.txt": (
        dict(compiler_version=V15,
             input_model="erf_converted_graphs/model_full_integer_quant.tflite",
             ops_on_edgetpu=192, ops_on_cpu=2), 13, None),
    "28-logfile-v15-operation-version-not-supported.txt": (
        dict(compiler_version=V15, ops_on_edgetpu=0, ops_on_cpu=4), 1, "nothing_mapped"),
    "30-console-v16-d-k10-search-step.txt": (
        dict(compiler_version=V16, search_step=10, segment_ops=[246], total_ops=246,
             ops_on_edgetpu=246, ops_on_cpu=0, off_chip_streaming=round(41.75 * KIB),
             on_chip_used=round(5.90 * MIB), compile_ms=3133, compiled=True), 8, None),
    "31b-console-v16-intermediate-tensors-count-mismatch.txt": (
        dict(compiler_version=None, errors=["The number of lists given to intermediate_tensors"
                                            " doesn't match the number of input models."]),
        0, "bad_arguments"),
    "32-console-v16-one-of-191-ops-mapped.txt": (
        dict(compiler_version=V16, edgetpu_subgraphs=1, total_ops=191, ops_on_edgetpu=1,
             ops_on_cpu=190, on_chip_used=80 * KIB, compiled=True, partial=True,
             operation_log="inference_proxy_mobilenet_quantized_v2_edgetpu.log"), 0, None),
    "33-console-v16-i-intermediate-tensors-tflite-model-maker.txt": (
        dict(compiler_version=None, operation_log="detector_edgetpu.log", total_ops=267,
             ops_on_edgetpu=261, ops_on_cpu=6, partial=True), 5, None),
    "34-logfile-v16-yolov8n-320-transpose-partly-mapped.txt": (
        dict(compiler_version=V16, input_model="yolov8n_saved_model/yolov8n_full_integer_quant"
             ".tflite", ops_on_edgetpu=233, ops_on_cpu=23), 26, None),
    "35-logfile-v16-yolov5n-640-reshape-limitation.txt": (
        dict(compiler_version=V16, input_model="yolov5n-int8.tflite", ops_on_edgetpu=240,
             ops_on_cpu=16), 18, None),
    "36-logfile-v15-blazeface-float-io-channel-pad.txt": (
        dict(compiler_version=V15, ops_on_edgetpu=75, ops_on_cpu=3), 10, None),
    "37-logfile-v16-yolov8n-640-logistic-quantize-limitation.txt": (
        dict(compiler_version=V16, input_model="yolov8n_saved_model/yolov8n_full_integer_quant"
             ".tflite", ops_on_edgetpu=230, ops_on_cpu=25), 25, None),
}


def test_every_log_file_has_expectations():
    assert sorted(p.name for p in LOGS.glob("*.txt")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parse_log_file(name):
    fields, rows, failure_kind = EXPECTED[name]
    log = compiler_log.parse((LOGS / name).read_text())
    got = log.to_dict()
    assert {k: got[k] for k in fields} == fields
    assert len(log.op_table) == rows
    assert all(r.status in t.STATUSES for r in log.op_table)
    failure = compiler_log.diagnose(log)
    assert (failure.kind if failure else None) == failure_kind
    if failure:
        assert failure.cause and failure.fix


def test_op_table_rows_keep_repeated_ops_with_their_statuses():
    log = compiler_log.parse((LOGS / "06-logfile-v16-yolov5s-more-than-one-subgraph.txt")
                             .read_text())
    concat = [(r.count, r.status) for r in log.op_table if r.op == "CONCATENATION"]
    assert concat == [(1, t.LIMITATION), (15, t.MAPPED), (1, t.MORE_THAN_ONE_SUBGRAPH)]
    # the rows where the user must change the model: not the "after the first" ones
    assert [(r.op, r.count) for r in log.unmapped_rows()] == [
        ("CONCATENATION", 1), ("QUANTIZE", 1), ("RESHAPE", 3)]


def test_statuses_of_partial_tables():
    cases = {
        "03-logfile-v15-dequantize-unsupported-dtype-mnist4.txt":
            [("QUANTIZE", t.LIMITATION), ("DEQUANTIZE", t.UNSUPPORTED_DTYPE)],
        "05-logfile-v15-ssd-custom-op-unsupported-dtype.txt": [("CUSTOM", t.UNSUPPORTED_DTYPE)],
        "23-table-v2.0-filter-bias-not-constant.txt": [("FULLY_CONNECTED", t.NOT_CONSTANT)],
        "24-table-fc-2d-output-status.txt": [("FULLY_CONNECTED", t.TWO_D_OUTPUT)],
        "26-table-unsupported-rank-batch.txt": [("CONV_2D", t.UNSUPPORTED_RANK)],
        "27-logfile-v15-operation-not-supported-transpose.txt": [("TRANSPOSE", t.NOT_SUPPORTED)],
        "28-logfile-v15-operation-version-not-supported.txt":
            [("RESIZE_NEAREST_NEIGHBOR", t.VERSION_NOT_SUPPORTED)],
    }
    for name, expected in cases.items():
        log = compiler_log.parse((LOGS / name).read_text())
        assert [(r.op, r.status) for r in log.unmapped_rows()] == expected, name


def test_nothing_mapped_names_the_first_blocking_row():
    log = compiler_log.parse((LOGS / "26-table-unsupported-rank-batch.txt").read_text())
    assert compiler_log.diagnose(log).cause.endswith(f"(first: CONV_2D, {t.UNSUPPORTED_RANK})")


def test_op_version_failure_names_op_and_version():
    log = compiler_log.parse((LOGS / "15-console-v16-op-version-QUANTIZE-v3.txt").read_text())
    failure = compiler_log.diagnose(log)
    assert "QUANTIZE version 3" in failure.cause and V16 in failure.cause
    assert "older" in failure.fix


def test_nonzero_exit_without_known_message_is_a_failure():
    log = compiler_log.parse("Edge TPU Compiler version 16.0.384591198\nSomething odd\n")
    assert compiler_log.diagnose(log) is None
    failure = compiler_log.diagnose(log, returncode=3)
    assert failure.kind == "failed" and "exit status 3" in failure.cause


def test_merge_takes_the_table_from_the_log_file():
    console = compiler_log.parse((LOGS / "32-console-v16-one-of-191-ops-mapped.txt").read_text())
    logfile = compiler_log.parse((LOGS / "01-logfile-v15-all-mapped-mnist7.txt").read_text())
    merged = compiler_log.merge(console, logfile)
    assert len(merged.op_table) == 5
    assert merged.ops_on_edgetpu == 1  # the console's reported count wins over the table


@pytest.mark.parametrize("text,size", [("0.00B", 0), ("7.75KiB", 7936), ("1.00MiB", 1 << 20),
                                       ("nothing", None)])
def test_parse_size(text, size):
    assert compiler_log.parse_size(text) == size
