"""Bare model files: imported once into the sha256-keyed cache, then reused."""

from __future__ import annotations

import json
import shutil

import pytest
from qdeploy.modelimport import cache
from qrun.errors import UserError
from qrun.model import manifest as mf

from tests.fixtures.compile import MOBILENET, SUCCESS
from tests.fixtures.convert import files_in
from tests.paths import COMPILER_LOGS, CORAL, FAKE_COMPILER

V1 = "mobilenet_v1_0.25_128_quant"


@pytest.fixture
def xdg_cache(tmp_path, monkeypatch):
    root = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(root))
    return root


def undated(files: dict) -> dict:
    """A directory's files with the manifest's `created` time left out (an import made again
    a second later differs there only)."""
    manifest = json.loads(files["manifest.json"])
    manifest.pop("created")
    return {**files, "manifest.json": manifest}


def test_bare_file_is_imported_once_then_reused(tmp_path, xdg_cache):
    model = tmp_path / "zoo" / f"{V1}.tflite"
    model.parent.mkdir()
    shutil.copyfile(CORAL / model.name, model)
    first = cache.imported(model)
    assert first.imported and first.directory.parent == xdg_cache / "qdeploy" / "imports"
    assert first.directory.name == mf.sha256_file(model)[:16]
    assert first.line(model) == f"imported {model} into {first.directory}"
    m = mf.load(first.directory)
    assert m.converter.tool == "qdeploy import" and m.artifacts[mf.INT8].sha256 == \
        mf.sha256_file(model)
    made = files_in(first.directory)
    again = cache.imported(model)
    assert not again.imported and again.directory == first.directory
    assert again.line(model).startswith("reusing the import of")
    assert files_in(first.directory) == made
    # A cached import whose files changed is made again, not trusted.
    (first.directory / "labels.txt").write_text("tampered\n")
    third = cache.imported(model)
    assert third.imported and undated(files_in(third.directory)) == undated(made)


def test_an_edgetpu_models_key_covers_its_twin(tmp_path, xdg_cache):
    alone = tmp_path / "alone" / f"{V1}_edgetpu.tflite"
    paired = tmp_path / "paired" / f"{V1}_edgetpu.tflite"
    for path in (alone, paired):
        path.parent.mkdir()
        shutil.copyfile(CORAL / path.name, path)
    shutil.copyfile(CORAL / f"{V1}.tflite", paired.parent / f"{V1}.tflite")
    lone, twin = cache.imported(alone), cache.imported(paired)
    assert lone.directory != twin.directory
    assert mf.INT8 not in mf.load(lone.directory).artifacts
    assert mf.INT8 in mf.load(twin.directory).artifacts


def test_compile_on_a_bare_file_compiles_its_cached_import(tmp_path, xdg_cache, monkeypatch,
                                                           run_cli):
    model = tmp_path / "zoo" / f"{MOBILENET}.tflite"
    model.parent.mkdir()
    shutil.copyfile(CORAL / model.name, model)
    monkeypatch.setenv("FAKE_EDGETPU_TRANSCRIPT", str(COMPILER_LOGS / SUCCESS))
    monkeypatch.setenv("FAKE_EDGETPU_TWIN", str(CORAL / f"{MOBILENET}_edgetpu.tflite"))
    code, out, err = run_cli("compile", model, "--compiler", FAKE_COMPILER)
    assert code == 0, err
    directory = xdg_cache / "qdeploy" / "imports" / mf.sha256_file(model)[:16]
    assert err.splitlines()[0] == f"imported {model} into {directory}"
    assert "manifest.json updated" in out
    assert mf.EDGETPU in mf.load(directory).artifacts
    assert sorted(p.name for p in model.parent.iterdir()) == [model.name]  # nothing beside it
    # The second call reuses the import (and compiles again).
    code, _, err = run_cli("compile", model, "--compiler", FAKE_COMPILER)
    assert code == 0 and err.splitlines()[0].startswith("reusing the import of")


def test_compile_on_a_bare_edgetpu_model_still_refuses_it(tmp_path, xdg_cache, run_cli):
    code, _, err = run_cli("compile", CORAL / f"{V1}_edgetpu.tflite")
    assert code == 1 and "already compiled for the Edge TPU" in err
    assert not xdg_cache.exists()


# -- bare_file_import: the one rule push and compile share ------------------------------

def test_bare_file_import_leaves_directories_and_missing_paths_to_the_command(tmp_path,
                                                                            xdg_cache):
    missing = tmp_path / "nothing.tflite"
    for compilable in (False, True):
        assert cache.bare_file_import(tmp_path, compilable=compilable) is None
        assert cache.bare_file_import(missing, compilable=compilable) is None
    assert not xdg_cache.exists()


def test_bare_file_import_of_a_quantized_model_for_push_and_compile(tmp_path, xdg_cache):
    model = tmp_path / f"{V1}.tflite"
    shutil.copyfile(CORAL / model.name, model)
    first = cache.bare_file_import(model)
    assert first.imported and first.lines(model)[0] == first.line(model)
    assert all(line.startswith("note: ") for line in first.lines(model)[1:])
    again = cache.bare_file_import(model, compilable=True)  # compile takes it too: same key
    assert not again.imported and again.directory == first.directory
    assert again.lines(model) == [again.line(model)]  # a reused import has no notes to say


def test_bare_file_import_for_compile_skips_what_compile_refuses(tmp_path, xdg_cache,
                                                                 ssd_detectors):
    edgetpu = tmp_path / f"{V1}_edgetpu.tflite"
    shutil.copyfile(CORAL / edgetpu.name, edgetpu)
    assert cache.bare_file_import(edgetpu, compilable=True) is None
    assert cache.bare_file_import(ssd_detectors.float_model, compilable=True) is None
    assert not xdg_cache.exists()
    # push imports both: the compiled model alone, and the float one with a note saying so.
    assert mf.EDGETPU in mf.load(cache.bare_file_import(edgetpu).directory).artifacts
    floating = cache.bare_file_import(ssd_detectors.float_model)
    assert sorted(mf.load(floating.directory).artifacts) == [mf.FLOAT]
    assert any(line.startswith("note: ") and "float model" in line
               for line in floating.lines(ssd_detectors.float_model))


def test_bare_file_import_refuses_a_file_that_is_no_model(tmp_path, xdg_cache):
    text = tmp_path / "model.tflite"
    text.write_text("not a flatbuffer\n")
    for compilable in (False, True):
        with pytest.raises(UserError):
            cache.bare_file_import(text, compilable=compilable)
    assert not xdg_cache.exists()
