"""A hand-edited or damaged manifest.json: one error line naming manifest.json, the field and
the fix, never a traceback, the image blamed, or scores computed from nonsense."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.runner import CORAL, V1_025, make_deployment
from tests.fixtures.runner import one_error

CAT = CORAL / "cat.bmp"


def edit(directory, change) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def set_pre(key, value):
    return lambda d: d["preprocess"].__setitem__(key, value)


CASES = {
    "preprocess as a string": (lambda d: d.__setitem__("preprocess", "unit"),
                               "preprocess is 'unit'"),
    "mean not a number": (set_pre("mean", "abc"), "preprocess.mean is 'abc'"),
    "mean an empty list": (set_pre("mean", []), "preprocess.mean is []"),
    "std 0": (set_pre("std", 0), "preprocess.std is 0"),
    "one std of three 0": (set_pre("std", [128, 0, 128]), "preprocess.std is 0"),
    "color lower case": (set_pre("color", "rgb"), "preprocess.color is 'rgb'"),
    "color L on an RGB model": (set_pre("color", "L"), "the model input [1, 128, 128, 3] has 3"),
    "two means and color RGB": (set_pre("mean", [1, 2]), "disagree on the number of channels"),
    "two means on an RGB model": (lambda d: d["preprocess"].update(mean=[1, 2], color=None),
                                  "is for 2 channel(s)"),
    "artifacts a list": (lambda d: d.__setitem__("artifacts", []), "field artifacts is []"),
    "labels file a number": (lambda d: d["artifacts"]["labels"].__setitem__("file", 5),
                             "artifact labels has file 5"),
    "labels a number": (lambda d: d.__setitem__("labels", 5), "field labels is 5"),
    "input a list": (lambda d: d.__setitem__("input", [1, 2]), "field input is [1, 2]"),
    "schema_version a string": (lambda d: d.__setitem__("schema_version", "1"),
                                "schema_version '1', not a number"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_manifest_is_one_line_naming_the_field(run_qrun, tmp_path, name):
    change, needle = CASES[name]
    deploy = make_deployment(tmp_path / "deploy", {"int8": f"{V1_025}.tflite"})
    assert run_qrun("classify", CAT, "--model", deploy).code == 0  # good before the edit
    edit(deploy, change)
    for command in (("classify", CAT), ("bench", "--runs", 1), ("verify",)):
        out = run_qrun(*command, "--model", deploy)
        one_error(out, "manifest.json", needle, "re-run qdeploy convert")


def test_per_channel_preprocess_that_fits_is_accepted(run_qrun, tmp_path):
    deploy = make_deployment(tmp_path / "deploy", {"int8": f"{V1_025}.tflite"})
    edit(deploy, set_pre("mean", [127, 128, 129]))
    out = run_qrun("classify", CAT, "--model", deploy, "--top-k", 2)
    assert out.code == 0, out.err


def web_app_dir(tmp_path):
    """A real model file in a folder that also holds another tool's manifest.json."""
    import shutil

    folder = tmp_path / "webdir"
    folder.mkdir()
    shutil.copy(CORAL / f"{V1_025}.tflite", folder)
    (folder / "manifest.json").write_text('{"name": "My PWA", "start_url": "/", "icons": []}')
    return folder


def test_model_file_beside_a_foreign_manifest_runs_as_a_bare_model(run_qrun, tmp_path):
    folder = web_app_dir(tmp_path)
    labels = CORAL / "imagenet_labels.txt"
    out = run_qrun("classify", CAT, "--model", folder / f"{V1_025}.tflite", "--labels", labels,
                   "--json")
    assert out.code == 0, out.err
    bare = run_qrun("classify", CAT, "--model", CORAL / f"{V1_025}.tflite", "--labels", labels,
                    "--json")
    assert json.loads(out.out)["results"] == json.loads(bare.out)["results"]
    info = run_qrun("info", "--model", folder / f"{V1_025}.tflite")
    assert info.code == 0, info.err


def test_foreign_manifest_is_still_refused_for_a_directory(run_qrun, tmp_path):
    folder = web_app_dir(tmp_path)
    one_error(run_qrun("classify", CAT, "--model", folder), "no schema_version")


def test_broken_qdeploy_manifest_beside_a_model_file_is_still_refused(run_qrun, tmp_path):
    deploy = make_deployment(tmp_path / "deploy", {"int8": f"{V1_025}.tflite"})
    edit(deploy, set_pre("std", 0))
    one_error(run_qrun("classify", CAT, "--model", deploy / f"{V1_025}.tflite"),
              "manifest.json", "preprocess.std is 0")
