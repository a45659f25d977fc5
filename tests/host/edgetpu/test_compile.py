"""`qdeploy compile`'s plumbing, driven through tests/doubles/fake_edgetpu_compiler.

The double is a TEST DOUBLE: it replays real compiler transcripts (tests/data/
compiler-logs) and copies real compiled twins (tests/data/coral). What is tested here
is qdeploy's side: flags, version check, staging, publish-only-on-success, manifest,
failure classification, timeouts, crashes and the missing-compiler fallback.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qdeploy.edgetpu import compiler
from qdeploy.errors import UserError
from qrun.model import manifest
from qrun.model.manifest import Manifest, TensorSpec
from qrun.model.preprocess import Preprocess

from tests.fixtures.compile import MOBILENET, SUCCESS
from tests.paths import COMPILER_LOGS as LOGS, CORAL, FAKE_COMPILER as DOUBLE

DEEPLAB = "deeplabv3_mnv2_dm05_pascal_quant"
QDEPLOY = Path(sys.executable).parent / "qdeploy"


def make_dir(root: Path, model: str = MOBILENET) -> Path:
    """A deployment directory as `qdeploy convert` leaves it: int8 model + manifest."""
    d = root / "deploy"
    d.mkdir()
    (d / "model_int8.tflite").write_bytes((CORAL / f"{model}.tflite").read_bytes())
    m = Manifest(inputs=[TensorSpec([1, 128, 128, 3], "uint8", 0.0078125, 128)],
                 outputs=[TensorSpec([1, 1001], "uint8", 0.00390625, 0)],
                 preprocess=Preprocess(128.0, 128.0, "RGB"),
                 artifacts={"int8": manifest.artifact_for(d / "model_int8.tflite")})
    manifest.save(m, d)
    return d


def snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Configure the double: fake(transcript, twin=...) -> file with its argv lines."""
    argv_log = tmp_path / "argv.jsonl"

    def configure(transcript=SUCCESS, twin=MOBILENET, **env):
        monkeypatch.setenv("FAKE_EDGETPU_TRANSCRIPT", str(LOGS / transcript))
        monkeypatch.setenv("FAKE_EDGETPU_ARGV_LOG", str(argv_log))
        if twin:
            monkeypatch.setenv("FAKE_EDGETPU_TWIN", str(CORAL / f"{twin}_edgetpu.tflite"))
        for key, value in env.items():
            monkeypatch.setenv(f"FAKE_EDGETPU_{key}", str(value))
        return argv_log
    return configure


def invocations(argv_log: Path) -> list:
    return [json.loads(line) for line in argv_log.read_text().splitlines()]


def test_success_publishes_outputs_and_updates_the_manifest(tmp_path, fake):
    d = make_dir(tmp_path)
    argv_log = fake()
    options = compiler.CompileOptions(min_runtime=13, multiple_subgraphs=True,
                                      search_delegate=True, search_step=5, timeout=60)
    result = compiler.compile_model(d, options, DOUBLE)

    assert result.ok and result.failure is None
    assert result.verdict == "134 of 134 ops on the Edge TPU, 1 subgraph, 3.86 MiB cached on chip"
    version_call, compile_call = invocations(argv_log)
    assert version_call == ["--version"]
    out_dir = compile_call[compile_call.index("-o") + 1]
    assert Path(out_dir).parent == d and Path(out_dir).name.startswith(".qdeploy-stage-")
    for flag in (["-s"], ["-t", "60"], ["-m", "13"], ["-a"], ["-d"], ["-k", "5"]):
        i = compile_call.index(flag[0])
        assert compile_call[i:i + len(flag)] == flag
    assert compile_call[-1] == str(d / "model_int8.tflite")

    assert sorted(p.name for p in d.iterdir()) == [
        "manifest.json", "model_int8.tflite", "model_int8_edgetpu.log",
        "model_int8_edgetpu.tflite"]  # no staging directory left behind
    compiled = (d / "model_int8_edgetpu.tflite").read_bytes()
    assert compiled == (CORAL / f"{MOBILENET}_edgetpu.tflite").read_bytes()
    m = manifest.load(d)
    assert m.artifacts["edgetpu"].sha256 == manifest.sha256_file(d / "model_int8_edgetpu.tflite")
    assert m.artifacts["int8"].file == "model_int8.tflite"
    assert m.compiled.to_dict() == {"compiler_version": "16.0.384591198", "min_runtime": 13,
                                    "edgetpu_subgraphs": 1, "ops_on_edgetpu": 134,
                                    "ops_on_cpu": 0, "log": "model_int8_edgetpu.log"}
    assert manifest.mismatches(m, d) == []
    assert "Operator" in (d / "model_int8_edgetpu.log").read_text()


def test_default_min_runtime_comes_from_the_compiler_version(tmp_path, fake):
    d = make_dir(tmp_path)
    argv_log = fake()
    result = compiler.compile_model(d, compiler.CompileOptions(), DOUBLE)
    assert "-m" not in invocations(argv_log)[1]
    assert result.min_runtime == 14
    assert any("--min-runtime 13 for runtime 13" in n for n in result.notes)
    assert [compiler.default_min_runtime(v) for v in
            ("16.0.384591198", "15.0.340273435", "2.0.291256449", "2.0.267685300")] == \
        [14, 13, 13, 12]


def test_partial_mapping_names_the_first_op_left_on_cpu(tmp_path, fake):
    d = make_dir(tmp_path, DEEPLAB)
    fake("21-console-v2.1-s-more-than-one-subgraph.txt", twin=DEEPLAB)
    result = compiler.compile_model(d, compiler.CompileOptions(), DOUBLE)
    assert result.ok
    assert result.verdict.startswith("83 of 93 ops on the Edge TPU, 1 subgraph, 6.86 MiB "
                                     "cached on chip, 1.22 MiB streamed from the host")
    # the first builtin op after the edgetpu-custom-op in the compiled model
    assert result.verdict.endswith("first on CPU: RESIZE_BILINEAR")


@pytest.mark.parametrize("transcript,kind", [
    ("11-console-v15-model-not-quantized.txt", "not_quantized"),
    ("14-console-v16-op-version-TRANSPOSE_CONV-v4.txt", "op_version"),
    ("09-console-v16-large-activation-tensors-failure.txt", "large_activations"),
    ("19-console-v16-dynamic-sized-tensors.txt", "dynamic_shape"),
    ("18-console-v14-intermittent-internal-compiler-error.txt", "internal_error"),
    ("24-table-fc-2d-output-status.txt", "nothing_mapped"),
])
def test_failures_are_classified_and_leave_the_directory_alone(tmp_path, fake, transcript,
                                                               kind):
    d = make_dir(tmp_path)
    before = snapshot(d)
    fake(transcript)
    result = compiler.compile_model(d, compiler.CompileOptions(), DOUBLE)
    assert not result.ok
    assert result.failure.kind == kind
    assert result.verdict.startswith(f"compile failed ({kind}): ")
    assert result.failure.fix
    assert snapshot(d) == before


def test_internal_error_says_retry(tmp_path, fake):
    d = make_dir(tmp_path)
    fake("18-console-v14-intermittent-internal-compiler-error.txt")
    result = compiler.compile_model(d, compiler.CompileOptions(), DOUBLE)
    assert result.failure.fix.startswith("retry: this error is sometimes intermittent")
    # the same transcript's first run succeeded: 6 of 24 ops, a partial mapping
    fake("18-console-v14-intermittent-internal-compiler-error.txt", RUN=0)
    again = compiler.compile_model(d, compiler.CompileOptions(), DOUBLE)
    assert again.ok and again.verdict.startswith("6 of 24 ops on the Edge TPU")


def test_crash_is_reported(tmp_path, fake):
    d = make_dir(tmp_path)
    before = snapshot(d)
    fake(SIGNAL="SEGV")
    result = compiler.compile_model(d, compiler.CompileOptions(), DOUBLE)
    assert result.failure.kind == "crash" and "SIGSEGV" in result.failure.cause
    assert snapshot(d) == before


def test_timeout_stops_the_compiler(tmp_path, fake, monkeypatch):
    d = make_dir(tmp_path)
    before = snapshot(d)
    fake(SLEEP=60)
    monkeypatch.setattr(compiler, "TIMEOUT_MARGIN_S", 0)
    result = compiler.compile_model(d, compiler.CompileOptions(timeout=1), DOUBLE)
    assert result.failure.kind == "timeout"
    assert "--timeout" in result.failure.fix
    assert snapshot(d) == before


def test_segments_are_published_with_their_own_roles(tmp_path, fake):
    d = make_dir(tmp_path)
    argv_log = fake()
    result = compiler.compile_model(d, compiler.CompileOptions(segments=2), DOUBLE)
    assert result.ok
    assert invocations(argv_log)[1][-3:-1] == ["-n", "2"]
    m = manifest.load(d)
    assert [m.artifacts[f"edgetpu_segment_{i}"].file for i in range(2)] == [
        "model_int8_segment_0_of_2_edgetpu.tflite", "model_int8_segment_1_of_2_edgetpu.tflite"]
    assert manifest.mismatches(m, d) == []
    compiler.compile_model(d, compiler.CompileOptions(), DOUBLE)  # again, without segments
    assert sorted(r for r in manifest.load(d).artifacts if r.startswith("edgetpu")) == ["edgetpu"]


def test_a_model_file_in_a_directory_without_manifest(tmp_path, fake):
    model = tmp_path / "net.tflite"
    model.write_bytes((CORAL / f"{MOBILENET}.tflite").read_bytes())
    fake()
    result = compiler.compile_model(model, compiler.CompileOptions(), DOUBLE)
    assert result.ok and not result.manifest_updated
    assert (tmp_path / "net_edgetpu.tflite").is_file() and (tmp_path / "net_edgetpu.log").is_file()
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize("name", ["other.tflite", "model_int8.tflite"])
def test_a_model_that_is_not_the_manifests_int8_leaves_the_manifest_alone(tmp_path, fake,
                                                                           name):
    """Another .tflite in a convert directory, or its int8 model changed since convert."""
    d = make_dir(tmp_path)
    before = (d / "manifest.json").read_bytes()
    model = d / name
    model.write_bytes((CORAL / f"{DEEPLAB}.tflite").read_bytes())
    fake()
    result = compiler.compile_model(model, compiler.CompileOptions(), DOUBLE)
    assert result.ok and not result.manifest_updated
    stem = Path(name).stem
    assert (d / f"{stem}_edgetpu.tflite").is_file() and (d / f"{stem}_edgetpu.log").is_file()
    assert (d / "manifest.json").read_bytes() == before
    assert any(line.startswith(f"manifest.json not updated: {name} is not the int8 model")
               for line in result.notes), result.notes


def test_relative_compiler_path_is_run_from_the_current_directory(tmp_path, fake,
                                                                  monkeypatch):
    import shutil

    d = make_dir(tmp_path)
    (tmp_path / "bin").mkdir()
    shutil.copy2(DOUBLE, tmp_path / "bin" / "mycomp")
    monkeypatch.chdir(tmp_path / "bin")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # "mycomp" is nowhere on PATH
    fake()
    result = compiler.compile_model(d, compiler.CompileOptions(), Path("./mycomp"))
    assert result.ok and result.manifest_updated
    assert result.compiler == str(tmp_path / "bin" / "mycomp")


def test_unrecognised_failure_output_is_shown(tmp_path):
    d = make_dir(tmp_path)
    odd = tmp_path / "oddcomp"
    odd.write_text("#!/bin/sh\n"
                   'if [ "$1" = --version ]; then echo "Edge TPU Compiler version 16.0.1"; '
                   "exit 0; fi\n"
                   'echo "Loading model"; echo "license check failed: no seat free" >&2; exit 3\n')
    odd.chmod(0o755)
    result = compiler.compile_model(d, compiler.CompileOptions(), odd)
    assert not result.ok and result.failure.kind == "failed"
    assert result.failure.cause == ("the compiler failed: exit status 3 (it said: license "
                                    "check failed: no seat free)")


def test_search_delegate_needs_compiler_16(tmp_path, fake):
    d = make_dir(tmp_path)
    fake(VERSION="15.0.340273435")
    with pytest.raises(UserError, match="needs compiler 16"):
        compiler.compile_model(d, compiler.CompileOptions(search_delegate=True), DOUBLE)


@pytest.mark.parametrize("content,match", [
    (b"hello, not a model", "not a TFLite model"),
    (None, "truncated or corrupt"),
    ("twin", "already compiled"),
])
def test_bad_models_are_refused_before_compiling(tmp_path, fake, content, match):
    d = make_dir(tmp_path)
    if content is None:
        content = (CORAL / f"{MOBILENET}.tflite").read_bytes()[:4000]
    elif content == "twin":
        content = (CORAL / f"{MOBILENET}_edgetpu.tflite").read_bytes()
    (d / "model_int8.tflite").write_bytes(content)
    argv_log = fake()
    with pytest.raises(UserError, match=match):
        compiler.compile_model(d / "model_int8.tflite", compiler.CompileOptions(), DOUBLE)
    assert not argv_log.exists()  # the compiler was never run


def test_missing_inputs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        compiler.compile_model(tmp_path / "nothing")
    with pytest.raises(UserError, match="has no model_int8.tflite"):
        compiler.compile_model(tmp_path)
    d = make_dir(tmp_path)
    with pytest.raises(UserError, match="no such executable"):
        compiler.compile_model(d, compiler.CompileOptions(), tmp_path / "edgetpu_compiler")


def test_compiler_found_on_path(tmp_path, fake, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "edgetpu_compiler").symlink_to(DOUBLE)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    d = make_dir(tmp_path)
    fake()
    outcome = compiler.compile_or_preflight(d)
    assert outcome.ok and outcome.compiled
    assert outcome.verdict.startswith("134 of 134 ops on the Edge TPU")


def test_missing_compiler_falls_back_to_the_preflight(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no edgetpu_compiler anywhere
    d = make_dir(tmp_path, DEEPLAB)
    with pytest.raises(compiler.CompilerMissing, match="edgetpu-compiler from Coral's apt repo"):
        compiler.compile_model(d)
    before = snapshot(d)
    outcome = compiler.compile_or_preflight(d)
    assert not outcome.compiled and outcome.ok
    assert outcome.verdict.startswith("edgetpu_compiler not found (x86-64 Debian: Coral's apt "
                                      "repo, package edgetpu-compiler); preflight: 64 of 72")
    assert outcome.result.on_edgetpu == 64
    assert snapshot(d) == before


def run_cli(*args, env=None):
    return subprocess.run([str(QDEPLOY), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_cli_success_prints_verdict_first(tmp_path, fake):
    d = make_dir(tmp_path)
    fake()
    run = run_cli("compile", d, "--compiler", DOUBLE)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "134 of 134 ops on the Edge TPU, 1 subgraph, 3.86 MiB cached on chip"
    assert any("manifest.json updated" in line for line in lines)


def test_cli_failure_is_one_error_line_and_nonzero(tmp_path, fake):
    d = make_dir(tmp_path)
    fake("15-console-v16-op-version-QUANTIZE-v3.txt")
    run = run_cli("compile", d, "--compiler", DOUBLE, "--json")
    assert run.returncode == 1
    d_json = json.loads(run.stdout)
    assert d_json["ok"] is False and d_json["result"]["failure"]["kind"] == "op_version"
    assert run.stderr.startswith("error: compiler 16.0.384591198 cannot parse QUANTIZE version 3")
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


def test_cli_without_compiler_runs_the_preflight_and_fails(tmp_path):
    d = make_dir(tmp_path)
    run = run_cli("compile", d, env={"PATH": str(tmp_path)})
    assert run.returncode == 1
    assert "edgetpu-compiler from Coral's apt repo" in run.stdout
    assert "preflight: 31 of 31 ops predicted on the Edge TPU" in run.stdout
    assert run.stderr == ("error: edgetpu_compiler not found, nothing compiled; the preflight "
                          "above predicts its verdict\n")
    run = run_cli("compile", d, "--json", env={"PATH": str(tmp_path)})
    assert run.returncode == 1
    document = json.loads(run.stdout)
    assert (document["ok"], document["compiled"], document["predicted_ok"]) == (False, False,
                                                                                True)
