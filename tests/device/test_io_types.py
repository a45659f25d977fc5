"""`qrun classify` on float-input and int8-input models (Coral's test models are all uint8).

The models are qdeploy convert outputs: the demo's float twin, and the same source model
converted once with uint8 and once with int8 input/output.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from qdeploy.quantize.convert import convert
from qdeploy.quantize.evaluate import predict
from qdeploy.quantize.datasets import Samples
from qrun.model import manifest as mf

pytestmark = pytest.mark.slow

DIGITS = 12


@pytest.fixture(scope="module")
def digit_pngs(demo_split, tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for i, pixels in enumerate(demo_split.x_heldout[:DIGITS]):
        path = folder / f"{i:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths, demo_split.x_heldout[:DIGITS]


def classify_top1(run_qrun, image, model) -> tuple[int, float]:
    out = run_qrun("classify", image, "--model", model, "--json", "--top-k", "1",
                   "--threshold", "-1e9")
    assert out.code == 0, out.err
    result = json.loads(out.out)
    return result["ids"][0], result["scores"][0]


def test_float_input_model_matches_the_host_evaluation(run_qrun, converted_demo, digit_pngs):
    """Float input: qrun normalises PNG pixels as the manifest says, like `qdeploy evaluate`."""
    out = converted_demo.out_dir
    paths, pixels = digit_pngs
    manifest = mf.load(out)
    host = predict(out / "model_float.tflite", Samples(pixels, "digits", "npy"), manifest)
    device = [classify_top1(run_qrun, p, out / "model_float.tflite")[0] for p in paths]
    assert device == list(host)


def test_int8_input_model_agrees_with_its_uint8_twin(run_qrun, seed_model_file, calib_npy,
                                                     digit_pngs, tmp_path):
    """int8 input is requantized from the float range; uint8 input takes pixels unchanged.
    Converted from the same model and calibration, both must give the same answers."""
    paths, _ = digit_pngs
    results = {}
    for io in ("uint8", "int8"):
        result = convert(seed_model_file, calib_npy, tmp_path / io, num_calib=20, io_type=io)
        assert result.manifest.input.dtype == io
        results[io] = [classify_top1(run_qrun, p, tmp_path / io / "model_int8.tflite")
                       for p in paths]
    step = mf.load(tmp_path / "int8").output.scale
    for (id_u, score_u), (id_i, score_i) in zip(results["uint8"], results["int8"]):
        assert id_u == id_i
        assert abs(score_u - score_i) <= 1.01 * step
