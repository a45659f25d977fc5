"""The reference inputs an import writes for verify (see qrun.measure.reference for the forms).

`--reference` images go through the manifest's preprocessing into uint8 pixels (.npy);
a given .npy/.npz is checked against the model's inputs and copied; without one, 8
seeded random samples of each input's shape and dtype are written (an .npy of pixels
for one uint8 image input, else an .npz of raw values). Each function returns the
file name, a writer for the staging directory, and the line saying which.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from qrun.measure import reference as qref
from qrun.model.inputs import random_array
from qrun.model.preprocess import Preprocess, load_image

from qdeploy.errors import UserError

RANDOM_SAMPLES = 8
RANDOM_SEED = 0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_image_input(inputs: list) -> bool:
    """One uint8 [1, H, W, C] input: reference inputs are pixels."""
    return (len(inputs) == 1 and inputs[0].dtype == "uint8" and len(inputs[0].shape) == 4
            and inputs[0].shape[3] in (1, 3))


def random_inputs(inputs: list, count: int = RANDOM_SAMPLES, seed: int = RANDOM_SEED) -> list:
    """`count` seeded random samples per input, in its dtype (qrun.model.inputs.random_array:
    integers over the dtype's range, floats in [0, 1)), drawn in input order from one
    Generator of `seed`."""
    rng = np.random.default_rng(seed)
    return [random_array([count, *spec.shape[1:]], spec.dtype, rng) for spec in inputs]


def reference_images(path: Path) -> list:
    """An image file, or the images in a directory (sorted)."""
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise UserError(f"--reference {path} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                            "; give a folder of images, an image, or an .npy/.npz array")
        return found
    return [path]


def given_reference(path: Path, inputs: list, pre: Preprocess) -> tuple:
    """(file name, writer, line) for --reference: images, an .npy or an .npz."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--reference {path} does not exist; give a folder of images, an "
                        "image, or an .npy/.npz array")
    if path.suffix.lower() in (".npy", ".npz"):
        ref = qref.load(path)
        check_reference(ref, inputs, path)
        name = qref.NPZ_NAME if ref.raw else qref.NPY_NAME
        return name, lambda dest: shutil.copyfile(path, dest), \
            f"reference inputs: {ref.count} sample(s) from {path}"
    if not is_image_input(inputs) and not (len(inputs) == 1 and len(inputs[0].shape) == 4):
        raise UserError(f"--reference {path}: images need a model with one image input; "
                        f"this one has inputs {[s.shape for s in inputs]}; give an .npz with "
                        "input_0, input_1, ...")
    images = reference_images(path)
    pixels = np.stack([load_image(p, inputs[0].shape, pre) for p in images])
    return qref.NPY_NAME, lambda dest: np.save(dest, pixels), \
        f"reference inputs: {len(images)} image(s) from {path}, as uint8 pixels"


def check_reference(ref: qref.Reference, inputs: list, path: Path) -> None:
    """The arrays must fit the model's inputs (count, shape; dtype for the raw .npz)."""
    if len(ref.arrays) != len(inputs):
        raise UserError(f"--reference {path} holds {len(ref.arrays)} array(s) but the model "
                        f"has {len(inputs)} input(s); give one array per input "
                        "(input_0, input_1, ... in an .npz)")
    for i, (array, spec) in enumerate(zip(ref.arrays, inputs)):
        want = list(spec.shape[1:])
        if list(array.shape[1:]) != want or (ref.raw and array.dtype.name != spec.dtype):
            raise UserError(f"--reference {path}: input {i} is {list(array.shape)} "
                            f"{array.dtype.name}, the model's input {i} is {spec.shape} "
                            f"{spec.dtype}; give [N, {', '.join(map(str, want))}] samples")


def random_reference(inputs: list) -> tuple:
    arrays = random_inputs(inputs)
    if is_image_input(inputs):
        return qref.NPY_NAME, lambda dest: np.save(dest, arrays[0]), \
            (f"reference inputs: {RANDOM_SAMPLES} seeded random images (uint8 pixels); pass "
             "--reference IMAGES for real ones")
    return qref.NPZ_NAME, lambda dest: qref.save_npz(dest, arrays), \
        (f"reference inputs: {RANDOM_SAMPLES} seeded random samples per input "
         f"({', '.join(s.dtype for s in inputs)}, raw values); pass --reference FILE.npz for "
         "real ones")
