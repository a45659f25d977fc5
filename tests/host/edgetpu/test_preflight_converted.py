"""The preflight (and compile's input check) on models TensorFlow converts in this session.

The only module that uses the TensorFlow fixture, so the models are converted once.
"""

import struct

import pytest

from qdeploy.edgetpu import compiler
from qdeploy.edgetpu import preflight
from qdeploy.modelfile import tflite_graph
from qdeploy.edgetpu import ops as t
from qdeploy.errors import UserError
from qrun.model import manifest

pytestmark = pytest.mark.slow

OPERATOR_CODE_VERSION_SLOT = 8  # vtable offset of OperatorCode.version in schema.fbs


def test_seed_mnist_batch_1_maps_every_op(converted_models):
    p = preflight.preflight(converted_models["mnist_int8"])
    assert p.ok and not p.refusal
    assert (p.on_edgetpu, p.on_cpu, p.subgraphs) == (len(p.ops), 0, 1)
    versions = {(r.op, r.version) for r in p.ops}
    # what TF emits for the seed model; none of these versions is rejected by compiler 16
    assert {"QUANTIZE", "RESHAPE", "CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED"} == \
        {op for op, _ in versions}
    assert all(v < t.REJECTED_VERSIONS.get(op, 99) for op, v in versions)


def test_dynamic_batch_is_refused(converted_models):
    p = preflight.preflight(converted_models["mnist_dynamic_batch"])
    assert not p.ok and p.on_edgetpu == 0
    assert "dynamic shape [-1, 28, 28]" in p.refusal
    assert "batch 1" in p.fix
    assert any(r.status == t.DYNAMIC_SHAPE for r in p.ops)


def test_float_model_is_not_quantized(converted_models):
    p = preflight.preflight(converted_models["mnist_float"])
    assert not p.ok and p.refusal.startswith("Model not quantized")
    assert all(r.status == t.UNSUPPORTED_DTYPE for r in p.ops)


def test_float_io_keeps_quantize_and_dequantize_on_cpu_like_the_real_compiler(
        converted_models):
    """Real log 03 (compiler 15, a float-I/O MNIST model): QUANTIZE 'otherwise supported,
    but not mapped', DEQUANTIZE 'unsupported data type', everything between mapped."""
    from qdeploy.edgetpu import compiler_log
    from tests.paths import COMPILER_LOGS as LOGS
    real = compiler_log.parse((LOGS / "03-logfile-v15-dequantize-unsupported-dtype-mnist4.txt")
                              .read_text())
    real_unmapped = {(r.op, r.status) for r in real.op_table if not r.mapped}
    p = preflight.preflight(converted_models["mnist_float_io"])
    assert {(r.op, r.status) for r in p.ops if not r.mapped} == real_unmapped
    assert [r.op for r in p.ops if not r.mapped] == ["QUANTIZE", "DEQUANTIZE"]
    assert p.ops[0].op == "QUANTIZE" and p.ops[-1].op == "DEQUANTIZE"
    assert p.on_edgetpu == len(p.ops) - 2 and p.subgraphs == 1 and p.ok


def test_op_outside_the_table_sends_the_rest_to_the_cpu(converted_models):
    # compiler 15 has no TRANSPOSE (log 27); compiler 16 maps this 1x26x26x12 one (8,112
    # elements, within the 57,600 mapped in log 34)
    assert preflight.preflight(converted_models["mnist_transpose"]).cpu_ops == []
    p = preflight.preflight(converted_models["mnist_transpose"], compiler="15")
    names = [r.op for r in p.ops]
    blocker = names.index("TRANSPOSE")
    assert p.first_blocker.op == "TRANSPOSE" and p.first_blocker.status == t.NOT_SUPPORTED
    assert p.on_edgetpu == blocker  # everything before it maps
    assert all(r.status == t.MORE_THAN_ONE_SUBGRAPH for r in p.ops[blocker + 1:])
    again = preflight.preflight(converted_models["mnist_transpose"], multiple_subgraphs=True,
                                compiler="15")
    assert again.cpu_ops == ["TRANSPOSE"] and again.subgraphs == 2


def test_op_version_newer_than_compiler_16_is_refused(converted_models, tmp_path):
    """Patch the CONV_2D operator code of the real model to version 6 (as TF 2.9.1 emits)."""
    import tflite
    data = bytearray(converted_models["mnist_int8"].read_bytes())
    model = tflite.Model.GetRootAsModel(data, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    conv = next(c for c in codes if max(c.BuiltinCode(), c.DeprecatedBuiltinCode()) ==
                tflite.BuiltinOperator.CONV_2D)
    slot = conv._tab.Offset(OPERATOR_CODE_VERSION_SLOT)
    assert slot, "the converter stored CONV_2D's version explicitly"
    struct.pack_into("<i", data, conv._tab.Pos + slot, 6)
    patched = tmp_path / "conv_v6.tflite"
    patched.write_bytes(bytes(data))
    p = preflight.preflight(patched)
    assert "CONV_2D version 6" in p.refusal and p.on_edgetpu == 0 and not p.ok


def test_compile_refuses_a_float_model_and_says_convert_first(converted_models, tmp_path):
    model = tmp_path / "model_int8.tflite"
    model.write_bytes(converted_models["mnist_float"].read_bytes())
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError, match="float model.*convert first"):
        compiler.compile_model(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_reader_sees_the_shape_signature(converted_models):
    graph = tflite_graph.load(converted_models["mnist_dynamic_batch"])
    first = graph.tensors[graph.inputs[0]]
    assert first.shape == (1, 28, 28) and first.shape_signature == (-1, 28, 28)
    assert first.dtype == "UINT8"


def test_quickstart_entry_on_a_real_convert_output(seed_model_file, calib_npy, tmp_path,
                                                   monkeypatch):
    """`qdeploy.quantize.convert` output -> compile_or_preflight: without a compiler, the preflight
    answers; with the test double, compile updates convert's own manifest."""
    from qdeploy.quantize import convert
    from tests.fixtures.compile import MOBILENET, SUCCESS
    from tests.paths import COMPILER_LOGS as LOGS, CORAL, FAKE_COMPILER as DOUBLE

    out = convert.convert(seed_model_file, calib_npy, tmp_path / "out", num_calib=8).out_dir
    monkeypatch.setenv("PATH", str(tmp_path))  # no edgetpu_compiler
    outcome = compiler.compile_or_preflight(out)
    assert outcome.ok and not outcome.compiled
    assert outcome.result.on_edgetpu == len(outcome.result.ops)  # the seed model maps fully

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "edgetpu_compiler").symlink_to(DOUBLE)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")  # the double needs python3
    monkeypatch.setenv("FAKE_EDGETPU_TRANSCRIPT", str(LOGS / SUCCESS))
    monkeypatch.setenv("FAKE_EDGETPU_TWIN", str(CORAL / f"{MOBILENET}_edgetpu.tflite"))
    outcome = compiler.compile_or_preflight(out)
    assert outcome.ok and outcome.compiled
    m = manifest.load(out)
    assert {"int8", "edgetpu"} <= set(m.artifacts) and m.compiled.log.endswith(".log")
    assert manifest.mismatches(m, out) == []


def test_yolo_tail_is_placed_by_the_graph_as_the_real_logs_show(converted_models):
    """A YOLO-style tail (RESHAPE -> TRANSPOSE -> STRIDED_SLICE / LOGISTIC -> CONCATENATION
    after each level's last CONV_2D), converted by TFLiteConverter. Every (op, status) the
    preflight gives is one the real compiler printed for that op on such models: log 06
    (compiler 16, YOLOv5s: the tail's ops 'More than one subgraph', the backbone mapped)
    and log 27 (TRANSPOSE 'Operation not supported')."""
    from qdeploy.edgetpu import compiler_log
    from tests.paths import COMPILER_LOGS as LOGS

    seen = set()
    for name in ("06-logfile-v16-yolov5s-more-than-one-subgraph.txt",
                 "27-logfile-v15-operation-not-supported-transpose.txt"):
        seen |= {(r.op, r.status) for r in compiler_log.parse((LOGS / name).read_text())
                 .op_table}
    p = preflight.preflight(converted_models["yolo_tail"], compiler="15")
    names = [r.op for r in p.ops]
    assert {(r.op, r.status) for r in p.ops} <= seen
    first = names.index("TRANSPOSE")
    # connectivity, not op order: the other level's CONV_2D and RESHAPE come after the
    # first TRANSPOSE in the model but read only Edge TPU tensors, so they are mapped
    later = [r for r in p.ops[first + 1:] if r.op in ("CONV_2D", "RESHAPE")]
    assert later and all(r.mapped for r in later)
    # every op fed by a TRANSPOSE result is cut off, as in log 06
    assert all(r.status == t.MORE_THAN_ONE_SUBGRAPH for r in p.ops
               if r.op in ("STRIDED_SLICE", "LOGISTIC", "CONCATENATION"))
    assert p.on_edgetpu == names.index("TRANSPOSE") + len(later) and p.subgraphs == 1
    # the verdict names the first op off the Edge TPU and the tensor it reads from there
    assert (p.first_blocker.index, p.first_blocker.op) == (first, "TRANSPOSE")
    assert p.leaves_from.producer == first - 1 and p.leaves_from.producer_op == "RESHAPE"
    assert f"first on CPU: op {first} TRANSPOSE" in p.verdict
    assert f"it reads '{p.leaves_from.tensor}' from op {first - 1} RESHAPE" in p.verdict
    # compiler 16 maps these small transposes (log 34): the whole tail maps
    assert preflight.preflight(converted_models["yolo_tail"]).cpu_ops == []


def test_yolo_tail_with_multiple_subgraphs_maps_the_ops_after_the_transposes(
        converted_models):
    p = preflight.preflight(converted_models["yolo_tail"], multiple_subgraphs=True,
                            compiler="15")
    assert p.cpu_ops == ["TRANSPOSE", "TRANSPOSE"]
    assert p.subgraphs == 2  # the backbone, then the tails behind the CPU's TRANSPOSEs


def test_a_batch_of_none_is_refused_for_its_run_time_reshape(converted_models):
    """Keras writes SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE for a batch of None: the
    RESHAPE's size is computed at run time, so compiler 16 fails ('dynamic-sized
    tensors', log 19); the message names the input with the dynamic batch."""
    p = preflight.preflight(converted_models["mnist_dynamic_batch"])
    reshape = next(r for r in p.ops if r.op == "RESHAPE")
    assert reshape.status == t.DYNAMIC_SHAPE and "computed at run time" in reshape.reason
    assert "dynamic-sized tensors" in p.refusal and "assumed compiler 16" in p.verdict
