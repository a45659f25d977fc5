"""Runtime, delegate probe and device choice, against this machine's real state: no libedgetpu.

The fallback from a real `_edgetpu` model to its CPU twin is exercised for real;
the probe's failure classification is exercised by loading a library that does
not exist and a real shared library that is not a delegate (libc).
"""

from __future__ import annotations

import ctypes.util
import json
import shutil
import signal

import pytest
from qrun.model import deployment, runtime
from qrun.model import manifest as mf
from qrun.model.delegate_probe import probe_delegate, read_outcome
from qrun.errors import UserError

from tests.fixtures.deployments import V1_025
from tests.fixtures.runner import libedgetpu_loads as _libedgetpu_loads
from tests.paths import CORAL

EDGETPU = CORAL / f"{V1_025}_edgetpu.tflite"
TWIN = CORAL / f"{V1_025}.tflite"


@pytest.fixture(scope="module")
def no_libedgetpu():
    if _libedgetpu_loads():
        pytest.skip("libedgetpu loads on this machine; the no-delegate fallback cannot be seen")


def test_platform_table_and_override(monkeypatch):
    monkeypatch.delenv("QRUN_EDGETPU_LIBRARY", raising=False)
    assert runtime.edgetpu_library("Linux") == "libedgetpu.so.1"
    assert runtime.edgetpu_library("Darwin") == "libedgetpu.1.dylib"
    assert runtime.edgetpu_library("Windows") == "edgetpu.dll"
    with pytest.raises(UserError, match="no build for Plan9"):
        runtime.edgetpu_library("Plan9")
    monkeypatch.setenv("QRUN_EDGETPU_LIBRARY", "/opt/lib/libedgetpu.so.1")
    assert runtime.edgetpu_library("Linux") == "/opt/lib/libedgetpu.so.1"


@pytest.mark.parametrize("good", ["", "usb", "usb:0", "pci", "pci:1", ":0"])
def test_device_option_accepted(good):
    assert runtime.check_device(good) == good
    assert runtime.delegate_options(good) == ({"device": good} if good else {})


@pytest.mark.parametrize("bad", ["usb0", "tpu", "usb:", "pci:x", "cpu"])
def test_device_option_rejected(bad):
    with pytest.raises(UserError, match="usb, usb:N, pci"):
        runtime.check_device(bad)


def test_edgetpu_model_detected():
    assert runtime.is_edgetpu_model(EDGETPU)
    assert not runtime.is_edgetpu_model(TWIN)


def test_runtime_info_names_the_installed_runtime():
    info = runtime.runtime_info()
    assert info.name in ("ai_edge_litert", "tflite_runtime")
    assert info.version and info.version != "unknown"


def test_make_interpreter_keeps_its_contract():
    interpreter = runtime.make_interpreter(TWIN)
    assert interpreter.get_input_details()[0]["shape"].tolist() == [1, 128, 128, 3]
    interpreter.invoke()  # tensors are allocated
    with pytest.raises(UserError, match="compiled for the Edge TPU"):
        runtime.make_interpreter(EDGETPU, num_threads=1)


def test_probe_missing_library(tmp_path):
    result = probe_delegate(str(tmp_path / "libedgetpu.so.1"))
    assert not result.ok and result.kind == "missing"
    assert "libedgetpu.so.1 not found" in result.reason


def test_probe_library_that_is_not_a_delegate():
    libc = ctypes.util.find_library("c")
    if libc is None:
        pytest.skip("no libc found by ctypes.util.find_library; need a real non-delegate library")
    result = probe_delegate(libc)
    assert not result.ok and result.kind == "not-delegate"
    assert "tflite_plugin_create_delegate" in result.reason


def test_probe_default_library_here(no_libedgetpu):
    result = probe_delegate(runtime.edgetpu_library(), "usb", EDGETPU)
    assert not result.ok and result.kind in ("missing", "load-failed")
    assert runtime.edgetpu_library() in result.reason


def test_probe_outcome_reading():
    crashed = read_outcome(-signal.SIGSEGV, "", "", "libedgetpu.so.1")
    assert crashed.kind == "crashed" and "SIGSEGV" in crashed.reason
    ok = read_outcome(0, 'noise\n{"kind": "ok", "reason": "loaded"}\n', "", "lib")
    assert ok.ok and ok.reason == "loaded"
    broken = read_outcome(1, "", "Traceback...\nImportError: boom\n", "lib")
    assert broken.kind == "error" and "ImportError: boom" in broken.reason


def test_auto_falls_back_to_sibling_twin(no_libedgetpu):
    choice = deployment.choose(deployment.resolve(EDGETPU), "auto")
    assert choice.path == TWIN and choice.used == "cpu" and choice.fell_back
    assert "libedgetpu.so.1 not found" in choice.reason
    assert f"fell back to int8 twin {TWIN.name}" in choice.reason


def test_auto_falls_back_to_manifest_twin(no_libedgetpu, deployment_dir):
    choice = deployment.choose(deployment.resolve(deployment_dir), "auto")
    assert choice.path == deployment_dir / TWIN.name and choice.variant == "int8"
    assert choice.fell_back


def test_manifest_twin_wins_over_sibling_name(no_libedgetpu, tmp_path):
    from tests.fixtures.deployments import make_deployment

    dep_dir = make_deployment(tmp_path / "d", {"int8": "mobilenet_v1_0.5_160_quant.tflite",
                                               "edgetpu": EDGETPU.name})
    shutil.copy(TWIN, dep_dir / TWIN.name)  # a same-named sibling the manifest does not list
    choice = deployment.choose(deployment.resolve(dep_dir / EDGETPU.name), "auto")
    assert choice.path.name == "mobilenet_v1_0.5_160_quant.tflite"


def test_int8_model_is_the_manifests_else_the_convert_name(tmp_path):
    """One rule for compile, preflight, evaluate, push's cross-check and qrun's CPU twin."""
    from tests.fixtures.deployments import make_deployment

    listed = make_deployment(tmp_path / "listed", {mf.INT8: TWIN.name}, labels="")
    shutil.copy(TWIN, listed / "model_int8.tflite")  # a convert-named file it does not list
    assert deployment.int8_model(listed, mf.load(listed)) == listed / TWIN.name
    (listed / TWIN.name).unlink()
    assert deployment.int8_model(listed, mf.load(listed)) is None  # listed, missing: none
    float_only = make_deployment(tmp_path / "float", {mf.FLOAT: TWIN.name}, labels="")
    assert deployment.int8_model(float_only, mf.load(float_only)) is None
    shutil.copy(TWIN, float_only / "model_int8.tflite")
    assert deployment.int8_model(float_only, mf.load(float_only)) == float_only / \
        "model_int8.tflite"
    bare = tmp_path / "bare"
    bare.mkdir()
    assert deployment.int8_model(bare, None) is None
    shutil.copy(TWIN, bare / "model_int8.tflite")
    assert deployment.int8_model(bare, None) == bare / "model_int8.tflite"


def test_cli_fallback_says_why_in_one_line(run_qrun, no_libedgetpu):
    out = run_qrun("classify", CORAL / "cat.bmp", "--model", EDGETPU,
                   "--labels", CORAL / "imagenet_labels.txt", "--json")
    assert out.code == 0, out.err
    notes = [ln for ln in out.err_lines if ln.startswith("note:")]
    assert len(notes) == 1 and "fell back to int8 twin" in notes[0]
    data = json.loads(out.out)
    assert data["device"]["used"] == "cpu" and data["device"]["fell_back"] is True
    assert data["model"]["path"] == str(TWIN)
    assert set(data["ids"][:2]) == {283, 286}


def test_device_edgetpu_without_delegate_is_an_error(run_qrun, no_libedgetpu):
    out = run_qrun("classify", CORAL / "cat.bmp", "--model", EDGETPU, "--device", "edgetpu")
    assert out.code == 1
    assert out.err_lines == [out.err_lines[0]] and out.err_lines[0].startswith(
        "error: --device edgetpu: libedgetpu.so.1 not found")


def test_device_edgetpu_with_non_delegate_library(run_qrun, monkeypatch):
    libc = ctypes.util.find_library("c")
    if libc is None:
        pytest.skip("no libc found by ctypes.util.find_library; need a real non-delegate library")
    monkeypatch.setenv("QRUN_EDGETPU_LIBRARY", libc)
    out = run_qrun("bench", "--model", EDGETPU, "--device", "edgetpu", "--runs", 1)
    assert out.code == 1
    assert len(out.err_lines) == 1 and "is not a TFLite delegate library" in out.err_lines[0]


def test_device_edgetpu_needs_an_edgetpu_model():
    with pytest.raises(UserError, match="needs an Edge TPU model"):
        deployment.choose(deployment.resolve(TWIN), "edgetpu")


def test_device_cpu_runs_the_twin_without_probing(deployment_dir):
    def no_probe(*_):
        raise AssertionError("--device cpu must not probe the delegate")

    choice = deployment.choose(deployment.resolve(EDGETPU), "cpu", probe=no_probe)
    assert choice.path == TWIN and "twin" in choice.reason
    choice = deployment.choose(deployment.resolve(deployment_dir), "cpu", probe=no_probe)
    assert choice.path.name == TWIN.name


def test_cpu_model_in_auto_mode_is_not_probed():
    def no_probe(*_):
        raise AssertionError("a CPU model must not start a probe")

    choice = deployment.choose(deployment.resolve(TWIN), "auto", probe=no_probe)
    assert choice.used == "cpu" and not choice.fell_back


def test_no_twin_says_how_to_get_one(run_qrun, lone_edgetpu_model, no_libedgetpu):
    out = run_qrun("classify", CORAL / "cat.bmp", "--model", lone_edgetpu_model)
    assert out.code == 1 and len(out.err_lines) == 1
    assert "has no CPU twin" in out.err_lines[0]
    assert f"put the uncompiled {TWIN.name} beside it" in out.err_lines[0]


def test_unknown_device_value(run_qrun):
    out = run_qrun("classify", CORAL / "cat.bmp", "--model", TWIN, "--device", "gpu")
    assert out.code == 1
    assert out.err_lines == ["error: --device must be one of auto, edgetpu, cpu, not 'gpu'"]


def test_no_current_deployment(run_qrun, qdeploy_home):
    out = run_qrun("bench")
    assert out.code == 1
    assert out.err_lines == [f"error: no --model given and no current deployment at "
                             f"{qdeploy_home / 'current'}; push one with qdeploy push, set "
                             "QDEPLOY_HOME, or pass --model FILE"]


def test_device_cpu_on_a_deployment_names_no_twin(deployment_dir):
    choice = deployment.choose(deployment.resolve(deployment_dir), "cpu")
    assert choice.reason == "--device cpu" and choice.variant == "int8"


def test_pi_model_from_device_tree(tmp_path):
    from qrun.measure.hostinfo import cpu_model, pi_model

    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    assert pi_model(model) == "Raspberry Pi 5 Model B Rev 1.0"
    assert pi_model(tmp_path / "absent") is None
    pi5 = ("processor\t: 0\nBogoMIPS\t: 108.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n"
           "\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n")
    assert cpu_model(pi5) == "Cortex-A76"
    assert cpu_model("model name\t: Intel(R) Xeon(R)\n") == "Intel(R) Xeon(R)"


def test_no_runtime_installed_names_the_package():
    """With site-packages off the path (python -S) neither runtime imports: one clear line."""
    import subprocess
    import sys
    from pathlib import Path

    import qrun

    device_dir = str(Path(qrun.__file__).resolve().parent.parent)
    code = ("import sys\n"
            f"sys.path.insert(0, {device_dir!r})\n"
            "from qrun.errors import run\n"
            "from qrun.model.runtime import interpreter_module\n"
            "run(interpreter_module)\n")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr == ("error: no TFLite runtime is installed; install one with: "
                           "pip install ai-edge-litert\n")
