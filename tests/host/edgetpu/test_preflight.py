"""The preflight against the real compiler's verdicts: Coral's models and compiled twins.

Each twin was produced by the real edgetpu_compiler: mapped ops became one
`edgetpu-custom-op`, ops left for the CPU stayed builtin ops. The preflight must
predict exactly those CPU ops, in order, from the uncompiled model.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qdeploy.edgetpu import ops as t
from qdeploy.edgetpu import preflight
from qdeploy.modelfile import tflite_graph
from qdeploy.errors import UserError
from qdeploy.modelfile.tflite_graph import Graph, Op, Tensor

from tests.paths import CORAL

PAIRS = ["mobilenet_v1_0.25_128_quant", "mobilenet_v1_0.5_160_quant",
         "deeplabv3_mnv2_dm05_pascal_quant"]
QDEPLOY = Path(sys.executable).parent / "qdeploy"


def twin_ops(name):
    return [op.name for op in tflite_graph.load(CORAL / f"{name}_edgetpu.tflite").ops]


@pytest.mark.parametrize("name", PAIRS)
def test_prediction_matches_the_compiled_twin(name):
    prediction = preflight.preflight(CORAL / f"{name}.tflite")
    compiled = twin_ops(name)
    cpu = [n for n in compiled if n != t.EDGETPU_CUSTOM_OP]
    assert prediction.on_edgetpu == len(prediction.ops) - len(cpu)
    assert prediction.cpu_ops == cpu
    assert prediction.subgraphs == compiled.count(t.EDGETPU_CUSTOM_OP)
    assert prediction.ok and not prediction.refusal


def test_deeplab_64_of_72_and_the_first_blocker():
    p = preflight.preflight(CORAL / "deeplabv3_mnv2_dm05_pascal_quant.tflite")
    assert (p.on_edgetpu, len(p.ops), p.on_cpu) == (64, 72, 8)
    assert preflight.summarize(p.cpu_ops) == ("RESIZE_BILINEAR x3, QUANTIZE, CONCATENATION, "
                                              "CONV_2D x2, ARG_MAX")
    assert (p.first_blocker.index, p.first_blocker.op) == (64, "RESIZE_BILINEAR")
    assert p.first_blocker.status == t.LIMITATION
    # later ops that could map alone are cut off; ARG_MAX (int64 output) fails on its own
    assert [r.status for r in p.ops[65:]] == [t.MORE_THAN_ONE_SUBGRAPH] * 6 + \
        [t.UNSUPPORTED_DTYPE]
    assert p.verdict.startswith("preflight: 64 of 72 ops predicted on the Edge TPU, 1 subgraph;"
                                " first on CPU: op 64 RESIZE_BILINEAR v1")


def test_multiple_subgraphs_map_ops_after_the_blocker():
    p = preflight.preflight(CORAL / "deeplabv3_mnv2_dm05_pascal_quant.tflite",
                            multiple_subgraphs=True)
    # QUANTIZE, CONCATENATION, 2 CONV_2D and the 33->33 / 33->513 resizes now map on their own
    assert p.cpu_ops == ["RESIZE_BILINEAR", "ARG_MAX"]
    assert p.subgraphs == 2


@pytest.mark.parametrize("name", PAIRS)
def test_compiled_twin_is_reported_as_compiled(name):
    p = preflight.preflight(CORAL / f"{name}_edgetpu.tflite")
    assert p.compiled and p.ok
    assert p.edgetpu_custom_ops == 1
    assert p.cpu_ops == [n for n in twin_ops(name) if n != t.EDGETPU_CUSTOM_OP]
    assert "already compiled for the Edge TPU: 1 edgetpu-custom-op" in p.verdict


def test_report_has_one_line_per_op_and_the_total():
    p = preflight.preflight(CORAL / "mobilenet_v1_0.25_128_quant.tflite")
    lines = preflight.report_lines(p)
    assert len(lines) == len(p.ops) + 1
    assert lines[0].split()[:4] == ["0", "CONV_2D", "v1", "Mapped"]
    assert lines[-1] == "predicted on the Edge TPU: 31 of 31 ops"


def test_not_a_tflite(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_text("not a model")
    with pytest.raises(UserError, match="not a TFLite model"):
        preflight.preflight(bad)
    with pytest.raises(UserError, match="does not exist"):
        preflight.preflight(tmp_path / "missing.tflite")


@pytest.mark.parametrize("keep", [12, 3000, 200_000, 500_000])
def test_truncated_flatbuffer(tmp_path, keep):
    data = (CORAL / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[:keep])
    with pytest.raises(UserError, match="truncated or corrupt"):
        preflight.preflight(cut)


def test_cli_json_is_one_object():
    run = subprocess.run([str(QDEPLOY), "preflight", "--json",
                          str(CORAL / "deeplabv3_mnv2_dm05_pascal_quant.tflite")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    d = json.loads(run.stdout)
    assert (d["on_edgetpu"], d["on_cpu"], d["ok"]) == (64, 8, True)
    assert d["first_blocker"]["op"] == "RESIZE_BILINEAR"


def test_a_convert_directory_means_its_int8_model(tmp_path):
    """`qdeploy preflight DIR`, as `qdeploy compile DIR`: DIR/model_int8.tflite."""
    d = tmp_path / "qdeploy-out"
    d.mkdir()
    (d / "model_int8.tflite").write_bytes((CORAL / "deeplabv3_mnv2_dm05_pascal_quant.tflite")
                                          .read_bytes())
    run = subprocess.run([str(QDEPLOY), "preflight", "--json", str(d)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert (report["on_edgetpu"], report["on_cpu"]) == (64, 8)
    assert report["model"] == str(d / "model_int8.tflite")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is a directory without model_int8.tflite"):
        preflight.preflight(tmp_path / "empty")
    with pytest.raises(UserError, match="is a directory; pass a .tflite model file"):
        tflite_graph.load(d)


def test_cli_bad_file_is_one_error_line(tmp_path):
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"\0" * 64)
    run = subprocess.run([str(QDEPLOY), "preflight", str(bad)], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1
    assert "Traceback" not in run.stderr


# Rules on small hand-built graphs: one tensor list, one op, as the flatbuffer reader makes.

def tensor(i, shape, dtype="INT8", data=None, signature=None):
    return Tensor(index=i, name=f"t{i}", dtype=dtype, shape=tuple(shape),
                  shape_signature=tuple(signature or shape),
                  data=None if data is None else np.asarray(data, dtype=np.int32).view(np.uint8))


def one_op(name, tensors, inputs, outputs, version=1, options=None):
    op = Op(index=0, name=name, version=version, inputs=tuple(inputs), outputs=tuple(outputs),
            options=options or {})
    return Graph(path=Path("g.tflite"), ops=(op,), tensors=tuple(tensors), inputs=(0,),
                 outputs=tuple(outputs))


def status(graph, compiler=(16,)):
    return preflight.op_status(graph, graph.ops[0], compiler)[0]


def test_batch_above_one_is_unsupported_rank():
    g = one_op("ADD", [tensor(0, [30, 8, 8, 3]), tensor(1, [30, 8, 8, 3]),
                       tensor(2, [30, 8, 8, 3])], [0, 1], [2])
    assert status(g) == t.UNSUPPORTED_RANK
    g1 = one_op("ADD", [tensor(0, [1, 8, 8, 3]), tensor(1, [1, 8, 8, 3]),
                        tensor(2, [1, 8, 8, 3])], [0, 1], [2])
    assert status(g1) == t.MAPPED


def test_fully_connected_with_batch_has_2d_output():
    g = one_op("FULLY_CONNECTED", [tensor(0, [4, 16]), tensor(1, [10, 16], data=np.ones(40)),
                                   tensor(2, [10], "INT32", data=np.zeros(10)),
                                   tensor(3, [4, 10])], [0, 1, 2], [3])
    assert status(g) == t.TWO_D_OUTPUT


def test_weights_computed_at_run_time_are_not_constant():
    g = one_op("FULLY_CONNECTED", [tensor(0, [1, 16]), tensor(1, [10, 16]),
                                   tensor(2, [10], "INT32", data=np.zeros(10)),
                                   tensor(3, [1, 10])], [0, 1, 2], [3])
    assert status(g) == t.NOT_CONSTANT


def test_rejected_op_version_refuses_the_model():
    g = one_op("CONV_2D", [tensor(0, [1, 8, 8, 3]), tensor(1, [4, 3, 3, 3], data=np.ones(27)),
                           tensor(2, [4], "INT32", data=np.zeros(4)), tensor(3, [1, 6, 6, 4])],
               [0, 1, 2], [3], version=6)
    p = preflight.predict(g)
    assert p.ops[0].status == t.VERSION_NOT_SUPPORTED
    assert "CONV_2D version 6" in p.refusal and p.on_edgetpu == 0 and not p.ok


def test_dynamic_shape_refuses_the_model():
    # compilers before 16 refuse a batch of -1 (log 12's note); compiler 16 maps it over a
    # static shape (the Keras classifiers) and refuses only sizes unknown before
    # run time (log 19)
    g = one_op("RELU", [tensor(0, [1, 8], signature=[-1, 8]), tensor(1, [1, 8], signature=[-1, 8])],
               [0], [1])
    p = preflight.predict(g, compiler=(15, 0))
    assert "dynamic shape" in p.refusal and "batch 1" in p.fix and not p.ok
    p16 = preflight.predict(g)
    assert p16.ok and p16.on_edgetpu == 1 and "batch of -1" in p16.notes[0]
    sized = one_op("RELU", [tensor(0, [1, 8], signature=[1, -1]),
                            tensor(1, [1, 8], signature=[1, -1])], [0], [1])
    p = preflight.predict(sized)
    assert "dynamic-sized tensors" in p.refusal and "batch 1" in p.fix and not p.ok


# The channel PAD and the channel MEAN keep their old answer for the compilers the 2019
# table describes; compilers 15/16 pad channels (log 36) and 16 reduces a z of 4 (docs).
@pytest.mark.parametrize("name,options,extra,expected,compiler", [
    ("MAX_POOL_2D", {"fused_activation": 1}, [], t.LIMITATION, (16,)),
    ("MAX_POOL_2D", {"fused_activation": 0}, [], t.MAPPED, (16,)),
    ("PAD", {}, [[0, 0], [1, 1], [1, 1], [0, 0]], t.MAPPED, (16,)),
    ("PAD", {}, [[0, 0], [0, 0], [0, 0], [2, 2]], t.LIMITATION, (14,)),
    ("PAD", {}, [[0, 0], [0, 0], [0, 0], [2, 2]], t.MAPPED, (15,)),
    ("PAD", {}, [[0, 0], [0, 0], [0, 0], [2, 2]], t.MAPPED, (16,)),
    ("PAD", {}, [[1, 0], [0, 0], [0, 0], [0, 0]], t.LIMITATION, (16,)),
    ("MEAN", {}, [1, 2], t.MAPPED, (16,)),
    ("MEAN", {}, [3], t.LIMITATION, (15,)),
    ("MEAN", {}, [3], t.MAPPED, (16,)),
    ("MEAN", {}, [0], t.LIMITATION, (16,)),
])
def test_documented_limits(name, options, extra, expected, compiler):
    tensors = [tensor(0, [1, 8, 8, 4]), tensor(1, [1, 8, 8, 4])]
    inputs = [0]
    if extra:
        tensors.append(tensor(2, [len(extra)], "INT32", data=np.array(extra).ravel()))
        inputs.append(2)
    g = one_op(name, tensors, inputs, [1], options=options)
    assert status(g, compiler) == expected


def test_softmax_limits():
    small = one_op("SOFTMAX", [tensor(0, [1, 1001]), tensor(1, [1, 1001])], [0], [1])
    big = one_op("SOFTMAX", [tensor(0, [1, 20000]), tensor(1, [1, 20000])], [0], [1])
    assert (status(small), status(big)) == (t.MAPPED, t.LIMITATION)
    # compiler 16 cuts off (finds mappable) the DFL's softmax of 1x4x2100x16 (log 34);
    # the docs' 1-D rule stays for older compilers
    dfl = one_op("SOFTMAX", [tensor(0, [1, 4, 2100, 16]), tensor(1, [1, 4, 2100, 16])],
                 [0], [1])
    assert (status(dfl, (16,)), status(dfl, (15,))) == (t.MAPPED, t.LIMITATION)


def test_concatenation_constant_input_must_be_zeros_with_two_inputs():
    def concat(values):
        return one_op("CONCATENATION", [tensor(0, [1, 4, 4, 2]),
                                        tensor(1, [1, 4, 4, 2], data=values),
                                        tensor(2, [1, 4, 4, 4])], [0, 1], [2])
    assert status(concat(np.zeros(32))) == t.MAPPED
    assert status(concat(np.ones(32))) == t.LIMITATION


def test_leading_cpu_ops_do_not_end_the_edgetpu_segment():
    # A float model's input QUANTIZE stays on the CPU and the rest maps (real log 03).
    own = [(t.LIMITATION, "float input"), (t.MAPPED, ""), (t.MAPPED, ""),
           (t.UNSUPPORTED_DTYPE, "float output")]
    assert [s for s, _ in preflight.sequence(own, False)] == [
        t.LIMITATION, t.MAPPED, t.MAPPED, t.UNSUPPORTED_DTYPE]
    own = [(t.MAPPED, ""), (t.NOT_SUPPORTED, ""), (t.MAPPED, "")]
    assert [s for s, _ in preflight.sequence(own, False)][2] == t.MORE_THAN_ONE_SUBGRAPH
    assert [s for s, _ in preflight.sequence(own, True)][2] == t.MAPPED


def test_op_table_is_coral_table_row_by_row():
    """Every op the preflight maps is a row of Coral's table (ops.CORAL_TABLE, with its
    caveat) and every row is an op the preflight knows; the ops the current table added
    for compiler 16 are refused by compiler 15."""
    assert set(t.CORAL_TABLE) == set(t.SUPPORTED_OPS)
    assert t.ADDED_IN_16 <= t.SUPPORTED_OPS
    g = one_op("RSQRT", [tensor(0, [1, 8]), tensor(1, [1, 8])], [0], [1])
    assert (status(g, (16,)), status(g, (15, 0))) == (t.MAPPED, t.NOT_SUPPORTED)


def test_prelu_needs_a_per_channel_alpha():
    def prelu(alpha_shape):
        return one_op("PRELU", [tensor(0, [1, 8, 8, 4]),
                                tensor(1, alpha_shape, data=np.ones(int(np.prod(alpha_shape)))),
                                tensor(2, [1, 8, 8, 4])], [0, 1], [2])
    assert status(prelu([1, 1, 4])) == t.MAPPED
    p = preflight.predict(prelu([8, 8, 4]))
    assert p.ops[0].status == t.LIMITATION and p.ops[0].rule == "prelu alpha"
    assert "replace PRELU's per-element alpha with shared axes" in p.fix


def test_convolution_dilation_must_match_and_split_not_along_batch():
    conv = one_op("CONV_2D", [tensor(0, [1, 8, 8, 3]), tensor(1, [4, 3, 3, 3], data=np.ones(27)),
                              tensor(2, [4], "INT32", data=np.zeros(4)), tensor(3, [1, 8, 8, 4])],
                  [0, 1, 2], [3], options={"dilation_h": 2, "dilation_w": 1})
    assert status(conv) == t.LIMITATION
    split = one_op("SPLIT", [tensor(0, [1], "INT32", data=[0]), tensor(1, [2, 8, 8, 4]),
                             tensor(2, [1, 8, 8, 4])], [0, 1], [2])
    assert preflight.op_status(split, split.ops[0])[1].startswith("tensor 't1' has shape")
    split1 = one_op("SPLIT", [tensor(0, [1], "INT32", data=[3]), tensor(1, [1, 8, 8, 4]),
                              tensor(2, [1, 8, 8, 2])], [0, 1], [2])
    assert status(split1) == t.MAPPED


def test_sizes_between_the_bracketed_limits_say_likely():
    """RESHAPE: mapped with 8,400 elements at a dimension of 2100 (log 34), refused with
    33,600 at 8400 (log 37); 24,000 elements at a dimension of 3000 lie between: predicted
    refused, and the reason says 'likely' and the bracket. 8,000 elements map; leading 1s
    added to a long tensor move no data and map (log 37)."""
    def reshape(src, dst):
        return one_op("RESHAPE", [tensor(0, src), tensor(1, [len(dst)], "INT32", data=dst),
                                  tensor(2, dst)], [0, 1], [2])
    status_, reason = preflight.op_status(reshape([1, 30, 100, 8], [1, 3000, 8]),
                                          reshape([1, 30, 100, 8], [1, 3000, 8]).ops[0])
    assert status_ == t.LIMITATION and "likely refused" in reason
    assert "8,400 elements" in reason and "33,600 elements" in reason and "log 37" in reason
    assert status(reshape([1, 10, 100, 8], [1, 1000, 8])) == t.MAPPED  # no dimension > 1600
    assert status(reshape([1, 4, 2000, 1], [1, 1, 4, 2000])) == t.MAPPED  # 8,000 elements
    assert status(reshape([1, 4, 8400, 1], [1, 1, 4, 8400])) == t.LIMITATION  # log 37
    assert status(reshape([1, 1, 4, 8400], [1, 4, 8400])) == t.MAPPED  # leading 1 dropped


def test_row_limits_of_slices_joins_and_scores():
    """Measured on the row (the two innermost dimensions): a STRIDED_SLICE of [1,4,8400]
    maps and one of [1,144,2100] does not (logs 37, 34); a LOGISTIC of 1x320x320x16 (1.6M
    elements, rows of 5,120) maps, one of [1,80,8400] does not (log 37)."""
    def sliced(shape, size):
        return one_op("STRIDED_SLICE", [tensor(0, shape),
                                        tensor(1, [3], "INT32", data=[0, 0, 0]),
                                        tensor(2, [3], "INT32", data=[1, size, shape[2]]),
                                        tensor(3, [3], "INT32", data=[1, 1, 1]),
                                        tensor(4, [1, size, shape[2]])], [0, 1, 2, 3], [4])

    def logistic(shape):
        return one_op("LOGISTIC", [tensor(0, shape), tensor(1, shape)], [0], [1])
    assert status(sliced([1, 4, 8400], 2)) == t.MAPPED
    assert status(sliced([1, 144, 2100], 64)) == t.LIMITATION
    assert status(logistic([1, 320, 320, 16])) == t.MAPPED
    assert status(logistic([1, 80, 2100])) == t.MAPPED
    assert status(logistic([1, 80, 8400])) == t.LIMITATION
    g = logistic([1, 80, 4200])
    assert "likely refused" in preflight.op_status(g, g.ops[0])[1]
