"""Images qrun reads: 16-bit, 32-bit and float pixels are scaled to 8 bits, not clipped to white;
images too large to decode safely are refused in one line."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.deployments import V1_025
from tests.paths import CORAL
from tests.fixtures.runner import one_error

MODEL = CORAL / f"{V1_025}.tflite"
LABELS = CORAL / "imagenet_labels.txt"


def classes_of(run_qrun, image) -> list:
    out = run_qrun("classify", image, "--model", MODEL, "--labels", LABELS, "--json",
                   "--top-k", 5)
    assert out.code == 0, out.err
    return json.loads(out.out)["results"]


@pytest.fixture
def gray_parrot(tmp_path) -> np.ndarray:
    """parrot.jpg as 8-bit gray pixels (a real photo, full tonal range)."""
    with Image.open(CORAL / "parrot.jpg") as img:
        return np.asarray(img.convert("L"))


def test_16_bit_png_classifies_like_its_8_bit_original(run_qrun, gray_parrot, tmp_path):
    eight, sixteen, white = tmp_path / "p8.png", tmp_path / "p16.png", tmp_path / "white.png"
    Image.fromarray(gray_parrot).save(eight)
    Image.fromarray(gray_parrot.astype(np.uint16) * 257).save(sixteen)
    Image.new("L", Image.open(eight).size, 255).save(white)
    assert Image.open(sixteen).mode.startswith("I;16")
    expected = classes_of(run_qrun, eight)
    assert expected != classes_of(run_qrun, white)  # the photo is not read as a white image
    assert classes_of(run_qrun, sixteen) == expected


def test_float_image_in_0_1_classifies_like_its_8_bit_original(run_qrun, gray_parrot,
                                                                tmp_path):
    eight, floats = tmp_path / "p8.png", tmp_path / "pf.tiff"
    Image.fromarray(gray_parrot).save(eight)
    Image.fromarray(gray_parrot.astype(np.float32) / 255).save(floats)
    assert Image.open(floats).mode == "F"
    assert classes_of(run_qrun, floats) == classes_of(run_qrun, eight)


def test_float_image_outside_0_1_is_refused(run_qrun, gray_parrot, tmp_path):
    floats = tmp_path / "pf.tiff"
    Image.fromarray(gray_parrot.astype(np.float32)).save(floats)  # 0..255, not 0..1
    one_error(run_qrun("classify", floats, "--model", MODEL), "pf.tiff",
              "float pixels outside 0..1")


def test_32_bit_integer_image_is_refused(run_qrun, gray_parrot, tmp_path):
    ints = tmp_path / "p32.tiff"
    Image.fromarray(gray_parrot.astype(np.int32) * 1000).save(ints)
    assert Image.open(ints).mode == "I"
    one_error(run_qrun("classify", ints, "--model", MODEL), "p32.tiff", "32-bit integer pixels")


def test_decompression_bomb_is_one_line(run_qrun, tmp_path):
    """A real PNG whose header says 14000 x 14000 pixels: Pillow refuses it before decoding."""
    small = tmp_path / "small.png"
    Image.new("L", (1, 1)).save(small)
    data = bytearray(small.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", 14000, 14000)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bytes(data))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)
    one_error(run_qrun("classify", bomb, "--model", MODEL), "bomb.png", "downscale the image")
