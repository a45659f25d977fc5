"""Placement by the graph against the real compiler: every shared compiled twin, the
first op off the Edge TPU, multiple subgraphs, the scoring script and compile's
comparison with the prediction (through the test double)."""

import subprocess
import sys
from pathlib import Path

import pytest

from qdeploy.edgetpu import compiler, placement, preflight, twins
from qdeploy.edgetpu import ops as t
from qdeploy.modelfile.tflite_graph import Graph, Op, Tensor

from tests.fixtures.compile import MOBILENET, SUCCESS
from tests.host.edgetpu.test_compile import make_dir
from tests.paths import COMPILER_LOGS as LOGS, CORAL, FAKE_COMPILER as DOUBLE, ROOT

PAIRS = twins.pairs(CORAL)
MOVENET = "movenet_single_pose_lightning_ptq"
DEEPLAB = "deeplabv3_mnv2_dm05_pascal_quant"


def test_all_seven_shared_twins_are_here():
    assert len(PAIRS) == 7


@pytest.mark.parametrize("model,twin", PAIRS, ids=[m.stem for m, _ in PAIRS])
def test_every_shared_twin_is_scored_exactly(model, twin):
    s = twins.score(model, twin)
    assert s.exact, s.differences
    assert s.predicted == s.mapped
    assert s.predicted_first_cpu_op == s.compiled_first_cpu_op


def test_movenet_keeps_mapping_the_heads_whose_inputs_stay_on_the_edgetpu():
    """The twin: ARG_MAX (op 89) is the first op off the Edge TPU, yet ops 100-111 (the
    other heads, fed by op 82's tensor) are mapped; ops fed by CPU results are not."""
    p = preflight.preflight(CORAL / f"{MOVENET}.tflite")
    assert (p.on_edgetpu, len(p.ops), p.subgraphs) == (98, 157, 1)
    assert [r.index for r in p.ops if r.mapped] == \
        list(range(2, 89)) + [100, 101, 102, 103, 104, 106, 107, 108, 109, 110, 111]
    assert (p.first_blocker.index, p.first_blocker.op) == (89, "ARG_MAX")
    assert (p.leaves_from.tensor, p.leaves_from.producer) == ("Reshape_2", 88)
    assert p.verdict.startswith("preflight: 98 of 157 ops predicted on the Edge TPU, 1 "
                                "subgraph; first on CPU: op 89 ARG_MAX v2")
    assert "it reads 'Reshape_2' from op 88 RESHAPE on the Edge TPU" in p.verdict
    assert p.verdict.endswith("assumed compiler 16 (--compiler-version)")
    # the CAST and float QUANTIZE ahead of the Edge TPU part stay on the CPU, end nothing
    assert [r.status for r in p.ops[:2]] == [t.UNSUPPORTED_DTYPE, t.LIMITATION]
    assert p.ops[113].status == t.MORE_THAN_ONE_SUBGRAPH  # RESHAPE of a GATHER_ND result


def test_lstm_maps_with_its_int16_state():
    p = preflight.preflight(CORAL / "keras_lstm_mnist_ptq.tflite")
    assert [r.op for r in p.ops][1] == "UNIDIRECTIONAL_SEQUENCE_LSTM"
    assert p.on_edgetpu == len(p.ops) == 6 and p.first_blocker is None


# Hand-built graphs: int8 tensors, ops wired by tensor index.

def graph(ops, n_tensors):
    tensors = tuple(Tensor(index=i, name=f"t{i}", dtype="INT8", shape=(1, 4, 4, 2),
                           shape_signature=(1, 4, 4, 2)) for i in range(n_tensors))
    return Graph(path=Path("g.tflite"),
                 ops=tuple(Op(index=i, name=n, version=1, inputs=ins, outputs=outs)
                           for i, (n, ins, outs) in enumerate(ops)),
                 tensors=tensors, inputs=(0,), outputs=(n_tensors - 1,))


# ADD(0) -> TRANSPOSE (CPU) -> ADD ; ADD(0) -> RELU (other branch) ; CONCATENATION of both.
# TRANSPOSE is outside compiler 15's table (log 27); compiler 16 maps a small one (log 34).
V15 = (15, 0)
MIDDLE = [("ADD", (0, 0), (1,)), ("TRANSPOSE", (1,), (2,)), ("ADD", (2, 2), (3,)),
          ("RELU", (1,), (4,)), ("CONCATENATION", (3, 4), (5,))]


def test_single_subgraph_cuts_only_what_the_cpu_op_feeds():
    p = preflight.predict(graph(MIDDLE, 6), compiler=V15)
    assert [r.status for r in p.ops] == [t.MAPPED, t.NOT_SUPPORTED, t.MORE_THAN_ONE_SUBGRAPH,
                                         t.MAPPED, t.MORE_THAN_ONE_SUBGRAPH]
    assert p.subgraphs == 1 and p.cpu_ops == ["TRANSPOSE", "ADD", "CONCATENATION"]
    assert (p.first_blocker.op, p.leaves_from.tensor, p.leaves_from.producer) == \
        ("TRANSPOSE", "t1", 0)


def test_multiple_subgraphs_with_an_unmappable_op_in_the_middle():
    p = preflight.predict(graph(MIDDLE, 6), multiple_subgraphs=True, compiler=V15)
    assert p.cpu_ops == ["TRANSPOSE"] and p.subgraphs == 2
    where = placement.place(graph(MIDDLE, 6), [r.status == t.MAPPED for r in p.ops], True)
    # the RELU joins the first subgraph; the ADD and CONCATENATION behind the CPU op the 2nd
    assert where.stage == (0, None, 1, 0, 1)
    assert "2 subgraphs" in p.verdict


def test_an_unknown_compiler_version_is_one_error():
    from qdeploy.errors import UserError
    with pytest.raises(UserError, match="--compiler-version 'sixteen' is not a version"):
        preflight.preflight(CORAL / f"{MOBILENET}.tflite", compiler="sixteen")


def test_older_compilers_do_not_know_the_ops_added_in_2_0_291256449():
    g = graph([("ADD", (0, 0), (1,)), ("PACK", (1, 1), (2,))], 3)
    assert preflight.predict(g, compiler=(2, 0, 267685300)).ops[1].status == t.NOT_SUPPORTED
    assert preflight.predict(g, compiler=(16,)).ops[1].status == t.MAPPED


def test_every_rule_cites_evidence_that_is_in_tests_data():
    """Each rule names a log in tests/data/compiler-logs or a twin in tests/data/coral
    (or says it is a guess); the cited files exist."""
    import re
    logs = {f.name[:2] for f in LOGS.glob("*.txt")}
    for rule, text in t.EVIDENCE.items():
        cited_logs = re.findall(r"logs? (\d\d)(?:, (\d\d))*", text)
        cited_twins = re.findall(r"twins? ([a-z0-9.]+_[a-z0-9_.*]+)", text)
        assert cited_logs or cited_twins or "guess" in text or text.startswith("docs"), rule
        for number in re.findall(r"\b(\d\d)\b", " ".join(m[0] for m in cited_logs)):
            assert number in logs, (rule, number)
        for name in cited_twins:
            name = name.rstrip("_*")
            assert list(CORAL.glob(f"{name}*_edgetpu.tflite")), (rule, name)


def test_score_script_on_a_folder_of_twins(tmp_path):
    for model, twin in PAIRS[:2]:
        (tmp_path / model.name).write_bytes(model.read_bytes())
        (tmp_path / twin.name).write_bytes(twin.read_bytes())
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "score_preflight.py"),
                          str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "exact on 2 of 2 twins (assumed compiler 16)"
    assert f"{PAIRS[0][0].name}: exact" in run.stdout
    # a twin that does not belong to its model is scored off, with where it differs
    (tmp_path / PAIRS[0][1].name).write_bytes((CORAL / f"{MOVENET}_edgetpu.tflite")
                                              .read_bytes())
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "score_preflight.py"),
                          str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 1 and "off by" in run.stdout and "on the CPU: predicted" in run.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "score_preflight.py"),
                          str(empty)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error: no X.tflite beside")


@pytest.fixture
def double(monkeypatch):
    def configure(twin):
        monkeypatch.setenv("FAKE_EDGETPU_TRANSCRIPT", str(LOGS / SUCCESS))
        monkeypatch.setenv("FAKE_EDGETPU_TWIN", str(CORAL / f"{twin}_edgetpu.tflite"))
    return configure


def test_compile_says_the_prediction_matched(tmp_path, double):
    d = make_dir(tmp_path, DEEPLAB)
    double(DEEPLAB)
    result = compiler.compile_model(d, compiler.CompileOptions(), DOUBLE)
    assert result.ok and result.differences == []
    assert "the preflight predicted this compile exactly" in result.notes
    assert result.predicted.startswith("preflight: 64 of 72 ops predicted")


def test_compile_reports_where_the_prediction_and_the_compiler_differ(tmp_path, double):
    """The double copies a twin where everything was mapped for a model the preflight
    sends 8 ops of to the CPU: each difference is one line after the verdict."""
    d = make_dir(tmp_path, DEEPLAB)
    double(MOBILENET)
    result = compiler.compile_model(d, compiler.CompileOptions(), DOUBLE)
    assert result.ok
    assert result.differences[0] == "ops on the Edge TPU: predicted 64, compiler 72 of 72"
    assert "RESIZE_BILINEAR on the CPU: predicted 3, compiler 0" in result.differences
    assert any(n.startswith("the preflight's prediction differs from the compiler")
               for n in result.notes)
    assert "  ARG_MAX on the CPU: predicted 1, compiler 0" in result.notes
    assert result.to_dict()["differences"] == result.differences


def test_cli_preflight_takes_a_and_the_compiler_version():
    qdeploy = Path(sys.executable).parent / "qdeploy"
    model = str(CORAL / f"{DEEPLAB}.tflite")
    run = subprocess.run([str(qdeploy), "preflight", "-a", "--compiler-version", "15.0",
                          model], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    first = run.stdout.splitlines()[0]
    assert first.startswith("preflight: 70 of 72 ops predicted on the Edge TPU, 2 subgraphs")
    assert first.endswith("assumed compiler 15.0 (--compiler-version)")
    bad = subprocess.run([str(qdeploy), "preflight", "--compiler-version", "x", model],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("error: --compiler-version 'x'")


@pytest.mark.parametrize("name,replaced", [(DEEPLAB, [64]), (MOVENET, [98])])
def test_each_custom_op_is_traced_back_to_the_ops_it_replaced(name, replaced):
    """The compiler keeps tensor names: walking back from a custom op's outputs to its
    inputs in the uncompiled model finds exactly the ops it mapped."""
    compiled = twins.read_twin(CORAL / f"{name}_edgetpu.tflite", CORAL / f"{name}.tflite")
    assert compiled.parts == replaced
    assert compiled.layout.count(t.EDGETPU_CUSTOM_OP) == 1


def test_compile_with_a_compares_edgetpu_subgraph_by_subgraph(tmp_path, double):
    """-a: the preflight predicts deeplab in 2 Edge TPU subgraphs (64 ops, then 6 behind
    the first RESIZE_BILINEAR); the twin the double copies was compiled without -a (one
    custom op of 64 ops): the differences name the segment layout."""
    d = make_dir(tmp_path, DEEPLAB)
    double(DEEPLAB)
    result = compiler.compile_model(d, compiler.CompileOptions(multiple_subgraphs=True),
                                    DOUBLE)
    assert result.ok
    layout = next(line for line in result.differences if line.startswith("segments:"))
    assert layout.startswith("segments: predicted Edge TPU | RESIZE_BILINEAR | Edge TPU | "
                             "ARG_MAX, compiler Edge TPU | RESIZE_BILINEAR | QUANTIZE")
    p = preflight.preflight(CORAL / f"{DEEPLAB}.tflite", multiple_subgraphs=True)
    assert [s.count for s in p.segments if s.kind == "edgetpu"] == [64, 6]


def test_compile_with_segments_compares_segment_by_segment(tmp_path, double):
    """--segments 2: the double writes the same compiled twin for both segments; the
    comparison is made segment model by segment model."""
    d = make_dir(tmp_path, DEEPLAB)
    double(DEEPLAB)
    result = compiler.compile_model(d, compiler.CompileOptions(segments=2), DOUBLE)
    assert result.ok and result.differences is not None
    p = preflight.preflight(CORAL / f"{DEEPLAB}.tflite", num_segments=2)
    assert [s.kind for s in p.segments] == ["pipeline", "pipeline"]
    # segment 0 (ops 0-56) keeps nothing on the CPU, the copied twin 8 ops: a difference;
    # segment 1 (ops 57-71) keeps the deeplab twin's 8 CPU ops: none
    assert p.segments[1].cpu_ops == twins.read_twin(CORAL / f"{DEEPLAB}_edgetpu.tflite").cpu_ops
    assert result.differences == [
        "segment 0: CPU ops predicted [], compiler [RESIZE_BILINEAR x3, QUANTIZE, "
        "CONCATENATION, CONV_2D x2, ARG_MAX]"]


def test_cli_preflight_predicts_each_segment():
    qdeploy = Path(sys.executable).parent / "qdeploy"
    model = str(CORAL / f"{DEEPLAB}.tflite")
    run = subprocess.run([str(qdeploy), "preflight", "-a", model], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert "segment 0: Edge TPU subgraph of 64 ops (ops 0-63)" in run.stdout
    assert "segment 1: CPU: RESIZE_BILINEAR" in run.stdout
    run = subprocess.run([str(qdeploy), "preflight", "--segments", "2", "--json", model],
                         capture_output=True, text=True)
    import json
    segments = json.loads(run.stdout)["segments"]
    assert [s["kind"] for s in segments] == ["pipeline", "pipeline"]
    assert sum(len(s["ops"]) for s in segments) == 72
