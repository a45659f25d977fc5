"""Read calibration and evaluation data: image folders, numpy arrays, MNIST idx files.

Everything comes back as a `Samples` batch shaped like the model input without its
batch axis. uint8 data is *pixels*: it goes through the manifest's preprocessing,
exactly as the device will do it. Float data is taken as already in the float
model's input range and fed unchanged.

A model with several inputs takes an `.npz` holding one array per input, named as
the model names its inputs (the Keras input names, a SavedModel signature's argument
names: what `manifest.json` lists under `inputs`), each [N, *that input's shape
without batch]; labelled data adds `y`. The rule for uint8 and float is per array.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from qrun.errors import UserError
from qrun.model.preprocess import Preprocess, load_image, quantize, to_float, to_input

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
STRETCH = "stretch"  # resized to the input size (LANCZOS), aspect not kept: classifiers
LETTERBOX = "letterbox"  # as qrun detect feeds a YOLO head: centred, grey 114, bilinear
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Samples:
    """A batch of model inputs (pixels or floats) and, for evaluation, their labels."""

    data: np.ndarray  # [N, *input_shape[1:]], uint8 pixels or float model inputs
    source: str
    kind: str  # "images", "npy", "npz" or "idx"
    labels: Optional[np.ndarray] = None
    class_names: Optional[list] = None
    resize: Optional[str] = None  # images: STRETCH or LETTERBOX, how they met the input size

    @property
    def are_pixels(self) -> bool:
        return self.data.dtype == np.uint8

    def __len__(self) -> int:
        return len(self.data)


def float_inputs(samples: Samples, pre: Preprocess) -> np.ndarray:
    """The float model's inputs for these samples."""
    if samples.are_pixels:
        return to_float(samples.data, pre)
    return samples.data.astype(np.float32)


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (MNIST's format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot read idx file {path}: {exc}; the file is damaged, "
                        "download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise UserError(f"{path} is not an idx file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise UserError(f"{path} is truncated: {len(body)} data bytes, dims {dims} need {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def is_idx(path: Path) -> bool:
    name = Path(path).name
    return "-idx" in name or name.endswith((".idx", ".idx.gz"))


def idx_pair(directory: Path) -> tuple[Optional[Path], Optional[Path]]:
    """The images and labels idx files in a directory (MNIST naming), if any."""
    images = sorted(p for p in Path(directory).iterdir() if "idx3" in p.name)
    labels = sorted(p for p in Path(directory).iterdir() if "idx1" in p.name)
    return (images[0] if images else None), (labels[0] if labels else None)


def sibling_labels(images: Path) -> Optional[Path]:
    """MNIST's label file beside an image file: `*-images-idx3-*` -> `*-labels-idx1-*`."""
    name = images.name.replace("images-idx3", "labels-idx1")
    candidate = images.with_name(name)
    return candidate if name != images.name and candidate.is_file() else None


def image_files(directory: Path) -> list[Path]:
    """Image files under `directory`, searched recursively, in a stable order."""
    return sorted(p for p in Path(directory).rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_calibration(path: Path, input_shape: Sequence[int], pre: Preprocess,
                     limit: Optional[int] = None, resize: str = STRETCH) -> Samples:
    """Representative samples for calibration, at most `limit` of them; images resized to
    the input as `resize` says (STRETCH, or LETTERBOX as a YOLO detector's inference)."""
    samples = _load(Path(path), input_shape, pre, limit, labelled=False, resize=resize)
    if len(samples) == 0:
        raise UserError(f"calibration data {path} holds no samples; give a folder of "
                        "images, an .npy/.npz array or idx files")
    return samples


def load_labelled(path: Path, input_shape: Sequence[int], pre: Preprocess,
                  labels: Optional[Path] = None, limit: Optional[int] = None) -> Samples:
    """Labelled samples: class sub-folders, an .npz with x and y, or idx images + labels."""
    samples = _load(Path(path), input_shape, pre, limit, labelled=True, labels=labels)
    if len(samples) == 0:
        raise UserError(f"evaluation data {path} holds no samples")
    return samples


def load_calibration_inputs(path: Path, inputs: Sequence[tuple], pre: Preprocess,
                            limit: Optional[int] = None) -> list[Samples]:
    """Representative samples of a model with several inputs: one `Samples` per
    (name, shape) in `inputs`, from an .npz with one array per input name."""
    return _load_named(Path(path), inputs, limit, labelled=False)


def load_labelled_inputs(path: Path, inputs: Sequence[tuple], limit: Optional[int] = None
                         ) -> list[Samples]:
    """Labelled samples of a model with several inputs: an .npz with one array per input
    name and `y`; every `Samples` carries the labels."""
    return _load_named(Path(path), inputs, limit, labelled=True)


def _load_named(path: Path, inputs, limit, labelled) -> list[Samples]:
    names = [name for name, _ in inputs]
    want = f"an .npz with one array per model input named {', '.join(names)}" + \
        (" and the labels y" if labelled else "")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if not path.exists():
        raise UserError(f"data not found: {path}")
    if path.suffix != ".npz":
        raise UserError(f"{path}: the model has {len(names)} inputs, so its data must be "
                        f"{want}")
    with unreadable_array(path), np.load(path, allow_pickle=False) as z:
        missing = [n for n in names + (["y"] if labelled else []) if n not in z.files]
        if missing:
            raise UserError(f"{path} has no array {', '.join(missing)} (it holds "
                            f"{sorted(z.files)}); give {want}")
        arrays = {n: z[n] for n in names}
        y = z["y"] if labelled else None
    samples = [_fit(arrays[name], y, shape, f"{path}[{name}]", "npz", limit)
               for name, shape in inputs]
    counts = {len(s) for s in samples}
    if len(counts) != 1:
        held = ", ".join(f"{len(s)} {name}" for s, (name, _) in zip(samples, inputs))
        raise UserError(f"{path} holds {held} samples; give the same number for every input")
    if counts == {0}:
        raise UserError(f"data {path} holds no samples")
    for s in samples:
        s.source = str(path)
    return samples


def model_input(sample: np.ndarray, dtype, scale: float, zero_point: int,
                pre: Preprocess) -> np.ndarray:
    """One sample as the input tensor wants it: pixels preprocessed, floats quantized."""
    if sample.dtype == np.uint8:
        return to_input(sample, pre, dtype, scale, zero_point)
    if np.issubdtype(np.dtype(dtype), np.floating):
        return sample.astype(dtype)
    return quantize(sample, scale, zero_point, dtype)


def _load(path: Path, shape, pre, limit, labelled, labels=None, resize=STRETCH) -> Samples:
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if not path.exists():
        raise UserError(f"data not found: {path}")
    if path.is_dir():
        images_idx, labels_idx = idx_pair(path)
        if images_idx is not None and not image_files(path):
            return _from_idx(images_idx, labels or labels_idx, shape, limit, labelled)
        return _from_folder(path, shape, pre, limit, labelled, resize)
    if path.suffix == ".npy":
        if labelled:
            raise UserError(f"{path}: an .npy array has no labels; give an .npz with arrays "
                            "x and y, a folder with one sub-folder per class, or idx files")
        with unreadable_array(path):
            x = np.load(path, allow_pickle=False)
        return _fit(x, None, shape, str(path), "npy", limit)
    if path.suffix == ".npz":
        return _from_npz(path, shape, limit, labelled)
    if is_idx(path):
        return _from_idx(path, labels or sibling_labels(path), shape, limit, labelled)
    raise UserError(f"cannot read data from {path}: give a folder of images, an .npy/.npz "
                    "array or MNIST idx files")


def _from_folder(path: Path, shape, pre, limit, labelled, resize=STRETCH) -> Samples:
    if labelled:
        classes = sorted(d.name for d in path.iterdir() if d.is_dir())
        if not classes:
            raise UserError(f"{path} has no class sub-folders; labelled image data needs one "
                            "sub-folder per class")
        files, ids = [], []
        for i, name in enumerate(classes):
            for f in image_files(path / name):
                files.append(f)
                ids.append(i)
    else:
        classes, files, ids = None, image_files(path), []
    if limit is not None:
        files, ids = files[:limit], ids[:limit]
    if not files:
        raise UserError(f"{path} contains no images (.jpg, .png, .bmp)")
    read = letterboxed_image if resize == LETTERBOX else load_image
    pixels = np.stack([read(f, shape, pre) for f in files])
    return Samples(pixels, str(path), "images",
                   np.asarray(ids) if labelled else None, classes, resize)


def letterboxed_image(path: Path, shape, pre: Preprocess) -> np.ndarray:
    """An image file as qrun detect feeds a YOLO head: letterboxed into the input
    (qrun.tasks.letterbox: centred, padding 114, bilinear), uint8 pixels."""
    from PIL import Image

    from qrun.model.preprocess import color_for, fit_channels, image_geometry, to_8bit
    from qrun.tasks import letterbox

    height, width, channels = image_geometry(shape)
    try:
        with Image.open(path) as img:
            img = to_8bit(img, path).convert(color_for(shape, pre))
            pixels, _ = letterbox.fit(img, (width, height), centre=True,
                                      fill=letterbox.ULTRALYTICS_FILL,
                                      resample=Image.BILINEAR)
    except Image.DecompressionBombError:
        raise UserError(f"{path} is too large to decode safely; downscale the image "
                        "first") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path} is not a readable image ({exc.__class__.__name__}); "
                        "give a JPEG, PNG or BMP file") from None
    return fit_channels(pixels, channels)


@contextmanager
def unreadable_array(path: Path):
    """Turn numpy's errors for a damaged or pickled .npy/.npz into one UserError line."""
    try:
        yield
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else \
            type(exc).__name__
        raise UserError(f"{path} is not a readable .npy/.npz array ({reason}); save it again "
                        "with numpy.save/numpy.savez as a plain numeric array") from None


def _from_npz(path: Path, shape, limit, labelled) -> Samples:
    with unreadable_array(path), np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        if labelled and not {"x", "y"} <= set(keys):
            raise UserError(f"{path} must hold arrays named x and y (it has {keys})")
        if not keys:
            raise UserError(f"{path} holds no arrays")
        x = z["x"] if "x" in keys else z[keys[0]]
        y = z["y"] if labelled else None
    return _fit(x, y, shape, str(path), "npz", limit)


def _from_idx(images: Path, labels: Optional[Path], shape, limit, labelled) -> Samples:
    y = None
    if labelled:
        if labels is None:
            raise UserError(f"no labels idx file for {images}; pass --labels FILE")
        y = read_idx(labels)
    return _fit(read_idx(images), y, shape, str(images), "idx", limit)


def _fit(x: np.ndarray, y, shape, source: str, kind: str, limit) -> Samples:
    """Check one sample's shape against the model input; add a unit channel if needed."""
    want = tuple(int(d) for d in shape[1:])
    if x.ndim == len(want) and x.shape == want:
        x = x[None]  # a single sample
    if x.shape[1:] != want and x.shape[1:] + (1,) == want:
        x = x[..., None]
    if x.shape[1:] != want:
        raise UserError(f"data in {source} has samples of shape {tuple(x.shape[1:])}, the "
                        f"model input wants {want}")
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise UserError(f"data in {source} is {x.dtype}; give uint8 pixels or float inputs")
    if y is not None:
        y = class_indices(y, source)
        if len(y) != len(x):
            raise UserError(f"{source}: {len(x)} samples but {len(y)} labels")
    if limit is not None:
        x = x[:limit]
        y = None if y is None else y[:limit]
    if x.dtype != np.uint8 and not np.isfinite(x).all():
        bad = int(np.count_nonzero((~np.isfinite(x)).reshape(len(x), -1).any(axis=1)))
        raise UserError(f"data in {source} holds NaN or infinite values ({bad} of {len(x)} "
                        "samples); remove or fix those samples")
    return Samples(np.ascontiguousarray(x), source, kind, y)


def class_indices(y, source: str) -> np.ndarray:
    """Labels as int64 class indices: one non-negative integer per sample, else UserError."""
    y = np.asarray(y)
    fix = "give one integer class index per sample (for one-hot labels: y.argmax(axis=1))"
    if y.ndim != 1:
        raise UserError(f"labels in {source} have shape {y.shape}, not one per sample; {fix}")
    if y.dtype.kind in "iu":
        ints = y.astype(np.int64)
    elif y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        ints = y.astype(np.int64)
    else:
        kind = ("text" if y.dtype.kind in "USO" else "not whole numbers"
                if y.dtype.kind == "f" else f"of type {y.dtype}")
        raise UserError(f"labels in {source} are {kind}; {fix}")
    if len(ints) and ints.min() < 0:
        raise UserError(f"labels in {source} include {int(ints.min())}; {fix} (0 or more)")
    return ints
