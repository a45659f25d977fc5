"""qrun's command line as a whole: --version, --help, info, and what it never imports."""

from __future__ import annotations

import json
import subprocess
import sys

import qrun

from tests.fixtures.deployments import V1_025
from tests.paths import CORAL

FORBIDDEN = ("tensorflow", "paramiko", "keras", "pycoral", "rich")


def test_version(run_qrun):
    out = run_qrun("--version")
    assert out.code == 0 and out.out == f"qrun {qrun.__version__}\n"


def test_help_explains_each_command(run_qrun):
    out = run_qrun("--help")
    assert out.code == 0
    for command in ("classify", "bench", "info"):
        assert command in out.out
    assert "QDEPLOY_HOME" in out.out
    bench_help = run_qrun("bench", "--help").out
    assert "--json" in bench_help and "--compare" in bench_help and "--runs" in bench_help


def _modules_after(code: str) -> set:
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                           "print(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_qrun_never_imports_tensorflow_or_paramiko():
    code = ("import qrun.cli, qrun.model.runtime, qrun.model.delegate_probe, "
            "qrun.model.deployment, qrun.tasks.classify, qrun.measure.bench, qrun.info, "
            "qrun.model.labels, qrun.tasks.adapters, qrun.measure.hostinfo, "
            "qrun.model.manifest, qrun.model.layout, qrun.model.tensors, qrun.tasks.roles, "
            "qrun.measure.verify\n"
            "from qrun.tasks.classify import classify\n"
            f"classify(r'{CORAL / 'cat.bmp'}', r'{CORAL / (V1_025 + '.tflite')}')")
    loaded = _modules_after(code)
    bad = {m for m in loaded if m.split(".")[0] in FORBIDDEN}
    assert not bad, bad
    assert any(m.split(".")[0] in ("ai_edge_litert", "tflite_runtime") for m in loaded)


def test_help_path_stays_light():
    loaded = _modules_after("import qrun.cli")
    heavy = {m for m in loaded if m.split(".")[0] in ("numpy", "PIL", "ai_edge_litert",
                                                       "tflite_runtime", *FORBIDDEN)}
    assert not heavy, heavy


def test_info_reports_runtime_library_and_model(run_qrun, deployment_dir):
    out = run_qrun("info", "--model", deployment_dir, "--json")
    assert out.code == 0, out.err
    data = json.loads(out.out)
    assert data["runtime"]["name"] in ("ai_edge_litert", "tflite_runtime")
    lib = data["edgetpu_library"]
    assert lib["name"] == "libedgetpu.so.1"
    assert lib["loads"] == (lib["kind"] == "ok") and lib["reason"]
    roles = {m["role"]: m for m in data["models"]}
    assert set(roles) == {"edgetpu", "int8"}
    assert roles["edgetpu"]["edgetpu"] is True and roles["int8"]["edgetpu"] is False
    tensor = roles["int8"]["inputs"][0]
    assert tensor["shape"] == [1, 128, 128, 3] and tensor["dtype"] == "uint8"
    assert tensor["scale"] > 0 and tensor["zero_point"] == 128
    text = run_qrun("info", "--model", deployment_dir).out
    assert "libedgetpu: libedgetpu.so.1:" in text and "Edge TPUs:" in text
    assert "input input: [1, 128, 128, 3] uint8, scale 0.0078125, zero point 128" in text


def test_info_without_model_or_deployment(run_qrun):
    out = run_qrun("info", "--json")
    assert out.code == 0, out.err
    assert json.loads(out.out)["models"] == []


def test_edgetpu_devices_found_by_usb_id(tmp_path):
    from qrun.info import edgetpu_devices

    dev, usb = tmp_path / "dev", tmp_path / "usb"
    (dev).mkdir()
    (dev / "apex_0").write_text("")
    for name, vid, pid in (("1-1", "1a6e", "089a"), ("1-2", "18d1", "9302"), ("1-3", "1d6b", "0002")):
        (usb / name).mkdir(parents=True)
        (usb / name / "idVendor").write_text(vid + "\n")
        (usb / name / "idProduct").write_text(pid + "\n")
    found = edgetpu_devices(dev, usb)
    assert [(d["kind"], d.get("id")) for d in found] == [
        ("pci", None), ("usb", "1a6e:089a"), ("usb", "18d1:9302")]
    assert "firmware not loaded" in found[1]["state"]


def test_classify_path_skips_pydantic_and_keeps_option_errors(run_qrun):
    """No pydantic on the classify path (typer is pinned below 0.29), and bad values still fail."""
    code = ("import sys\nfrom qrun.cli import main\n"
            f"sys.argv = ['qrun', 'classify', r'{CORAL / 'cat.bmp'}', '--model', "
            f"r'{CORAL / (V1_025 + '.tflite')}', '--top-k', '2', '--threshold', '0.1']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n")
    loaded = _modules_after(code)
    assert not {m for m in loaded if m.split(".")[0] == "pydantic"}
    out = run_qrun("bench", "--model", CORAL / (V1_025 + ".tflite"), "--runs", "many")
    assert out.code == 2 and "'many' is not a valid int" in out.err
    out = run_qrun("classify", CORAL / "cat.bmp", "--threshold", "high")
    assert out.code == 2 and "'high' is not a valid float" in out.err
