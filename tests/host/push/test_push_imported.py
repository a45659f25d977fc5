"""Imported models pushed to a real sshd on 127.0.0.1, then run through the device's `current`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from qdeploy.modelimport.importer import import_model
from qdeploy.push.fleet import push_many
from qdeploy.remote import targets
from qrun.model import manifest as mf

from tests.fixtures.runner import qrun_env
from tests.fixtures.sshd import push_options as options, sha
from tests.paths import CORAL

pytestmark = pytest.mark.slow

V1 = "mobilenet_v1_0.25_128_quant"


@pytest.fixture(autouse=True)
def _isolated_home(isolated_home):
    """No real ~/.ssh, agent or cache: every key and known_hosts file is the test's own."""


def zoo(tmp_path: Path) -> Path:
    """Coral's classifier and its compiled twin side by side, as the model zoo ships them."""
    directory = tmp_path / "zoo"
    directory.mkdir()
    for name in (f"{V1}.tflite", f"{V1}_edgetpu.tflite"):
        shutil.copyfile(CORAL / name, directory / name)
    return directory


def device_classes(device: Path) -> list:
    """`qrun classify` on the device, through its `current` deployment."""
    done = subprocess.run([str(device / "venv" / "bin" / "qrun"), "classify",
                           str(CORAL / "cat.bmp"), "--top-k", "3", "--json"],
                          capture_output=True, text=True, timeout=120, env=qrun_env(device),
                          check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["ids"]


def host_classes(run_qrun, model: Path) -> list:
    out = run_qrun("classify", CORAL / "cat.bmp", "--model", model, "--top-k", 3, "--json")
    assert out.code == 0, out.err
    return json.loads(out.out)["ids"]


@pytest.mark.parametrize("name", [f"{V1}.tflite", f"{V1}_edgetpu.tflite"])
def test_imported_coral_model_is_pushed_verified_and_classifies_through_current(
        sshd, ssh_client_key, device, tmp_path, run_qrun, name):
    dep = import_model(zoo(tmp_path) / name, out=tmp_path / "dep").out_dir
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device), verify=True)
    result = push_many([targets.parse_target(sshd.target)], dep, opts)[0]
    assert result.ok, result.error
    assert result.verify and all(c.ok and c.samples == 8 for c in result.verify)
    pushed = mf.load(device / "current")
    assert pushed.converter.tool == "qdeploy import" and pushed.task.kind == mf.CLASSIFY
    for art in pushed.artifacts.values():
        assert sha(device / "current" / art.file) == art.sha256
    assert device_classes(device) == host_classes(run_qrun, CORAL / f"{V1}.tflite")


def test_push_of_a_bare_edgetpu_file_imports_it_first(sshd, ssh_client_key, device, tmp_path,
                                                      monkeypatch, run_cli, run_qrun):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    model = zoo(tmp_path) / f"{V1}_edgetpu.tflite"
    opts = options(tmp_path, sshd, ssh_client_key)  # writes known_hosts
    args = ["push", model, "--target", sshd.target, "--identity", opts.identity,
            "--known-hosts", opts.known_hosts, "--ssh-config", opts.ssh_config,
            "--remote-dir", device, "--no-bench", "--reports", tmp_path / "reports"]
    code, _, err = run_cli(*args)
    assert code == 0, err
    imports = tmp_path / "xdg-cache" / "qdeploy" / "imports"
    cached = next(imports.iterdir())
    assert f"imported {model} into {cached}" in err
    pushed = mf.load(device / "current")
    assert pushed.artifacts[mf.EDGETPU].sha256 == sha(model)
    assert pushed.artifacts[mf.INT8].sha256 == sha(model.with_name(f"{V1}.tflite"))
    assert device_classes(device) == host_classes(run_qrun, CORAL / f"{V1}.tflite")
    code, _, err = run_cli(*args)  # the second push reuses the import
    assert code == 0 and f"reusing the import of {model} in {cached}" in err
    assert [p.name for p in imports.iterdir()] == [cached.name]


def test_imported_detector_is_pushed_and_verified_on_every_output(
        sshd, ssh_client_key, device, tmp_path, ssd_detectors):
    dep = import_model(ssd_detectors.int8_model, out=tmp_path / "dep").out_dir
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device), verify=True)
    result = push_many([targets.parse_target(sshd.target)], dep, opts)[0]
    assert result.ok, result.error
    assert result.verify and all(c.ok for c in result.verify)
    (int8,) = [c for c in result.verify if c.variant == mf.INT8]
    assert len(int8.outputs) == 4 and int8.max_steps == 0  # same runtime code both sides
    assert mf.load(device / "current").task.kind == mf.DETECT
