"""Which variant of a real converted deployment qrun runs when a file has gone missing."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.paths import CORAL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converted(seed_model_file, calib_npy, tmp_path_factory):
    """A real qdeploy convert output: model_float.tflite, model_int8.tflite, manifest.json."""
    from qdeploy.quantize.convert import convert

    out = tmp_path_factory.mktemp("converted")
    convert(seed_model_file, calib_npy, out, num_calib=20, io_type="uint8")
    return out


def test_missing_int8_model_says_the_float_one_ran(run_qrun, converted, tmp_path):
    deploy = tmp_path / "deploy"
    shutil.copytree(converted, deploy)
    (deploy / "model_int8.tflite").unlink()
    out = run_qrun("classify", CORAL / "cat.bmp", "--model", deploy, "--json")
    assert out.code == 0, out.err
    result = json.loads(out.out)
    assert result["model"]["path"] == str(deploy / "model_float.tflite")
    assert result["model"]["variant"] == "float"
    notes = [ln for ln in out.err_lines if ln.startswith("note: ")]
    assert len(notes) == 1, out.err
    assert "int8 model model_int8.tflite named in manifest.json is missing" in notes[0]
    assert "float model model_float.tflite ran instead" in notes[0]


def test_complete_deployment_runs_int8_without_a_note(run_qrun, converted):
    out = run_qrun("classify", CORAL / "cat.bmp", "--model", converted, "--json")
    assert out.code == 0, out.err
    assert json.loads(out.out)["model"]["variant"] == "int8"
    assert not [ln for ln in out.err_lines if ln.startswith("note: ")]
