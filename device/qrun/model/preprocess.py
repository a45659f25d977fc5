"""Image preprocessing: the one definition shared by `qdeploy convert` and the device.

A `Preprocess` says how camera pixels become the float model's input:
``x = (pixel - mean) / std`` after converting the image to `color` and resizing it
(LANCZOS) to the model's input size. `qdeploy convert` stores it in
`manifest.json`; `qrun` applies it unchanged, so the device feeds the model
exactly what calibration and evaluation fed it.

For a quantized input the float value is requantized with the input tensor's
scale and zero point, ``q = round(x / scale) + zero_point``. When ``scale * std ≈ 1``
and ``mean ≈ zero_point`` that is the identity on uint8 pixels, and the pixels
are fed unchanged, as Coral's classify example does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from qrun.errors import UserError

Number = Union[float, Sequence[float]]

COLOR_MODES = ("L", "RGB")
# Coral's classify example defaults: mean 128, std 128 (identity for its quantized models).
CORAL_MEAN = 128.0
CORAL_STD = 128.0
IDENTITY_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Preprocess:
    """How pixels become model input: ``(pixel - mean) / std``, in `color` mode."""

    mean: Number = 0.0
    std: Number = 255.0
    color: Optional[str] = None  # "L" or "RGB"; None: decided from the input shape

    def to_dict(self) -> dict:
        return {
            "color": self.color,
            "mean": _jsonable(self.mean),
            "std": _jsonable(self.std),
            "resize": "lanczos",
            "formula": "(pixel - mean) / std",
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        """Read `to_dict`'s form; a value that cannot be used raises ValueError saying which."""
        if not isinstance(d, dict):
            raise ValueError(f"preprocess is {d!r}, not an object with mean, std and color")
        mean = _numbers(d.get("mean", 0.0), "mean")
        std = _numbers(d.get("std", 255.0), "std")
        if np.any(np.asarray(std, dtype=float) == 0):
            raise ValueError("preprocess.std is 0 (every input would divide by zero)")
        color = d.get("color")
        if color is not None and color not in COLOR_MODES:
            raise ValueError(f"preprocess.color is {color!r}; it must be "
                             f"{' or '.join(COLOR_MODES)} (or null)")
        return cls(mean=mean, std=std, color=color)

    def channels(self) -> Optional[int]:
        """How many channels mean, std and color imply (None when they fit any count)."""
        counts = {np.asarray(v).size for v in (self.mean, self.std) if np.asarray(v).size > 1}
        if self.color:
            counts.add(3 if self.color == "RGB" else 1)
        if len(counts) > 1:
            raise ValueError(f"preprocess mean {_jsonable(self.mean)}, std "
                             f"{_jsonable(self.std)} and color {self.color} disagree on the "
                             "number of channels")
        return counts.pop() if counts else None


def parse_preprocess(text: str) -> Preprocess:
    """Parse a `--preprocess` value.

    Accepted: ``unit`` ([0, 1], pixels / 255, the default), ``symmetric`` ([-1, 1]),
    ``raw`` (pixels unchanged), or ``mean=M,std=S[,color=L|RGB]`` where M and S are
    numbers or ``/``-separated per-channel lists (e.g. ``mean=123.7/116.3/103.5``).
    """
    presets = {"unit": Preprocess(0.0, 255.0), "symmetric": Preprocess(127.5, 127.5),
               "raw": Preprocess(0.0, 1.0)}
    text = text.strip()
    if text in presets:
        return presets[text]
    fields = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("mean", "std", "color"):
            raise UserError(f"--preprocess: cannot read '{part}'; use unit, symmetric, raw or "
                            "mean=M,std=S[,color=L|RGB]")
        fields[key.strip()] = value.strip()
    try:
        mean = _tupled([float(v) for v in fields.get("mean", "0").split("/")])
        std = _tupled([float(v) for v in fields.get("std", "255").split("/")])
    except ValueError:
        raise UserError(f"--preprocess: mean and std must be numbers, got '{text}'") from None
    color = fields.get("color")
    if color is not None and color not in COLOR_MODES:
        raise UserError(f"--preprocess: color must be L or RGB, got '{color}'")
    if np.any(np.asarray(std, dtype=float) == 0):
        raise UserError("--preprocess: std must not be 0")
    return Preprocess(mean, std, color)


def image_geometry(shape: Sequence[int]) -> tuple[int, int, Optional[int]]:
    """(height, width, channels) of an image input; channels None for [1, H, W]."""
    dims = list(shape)
    if len(dims) == 4:
        return int(dims[1]), int(dims[2]), int(dims[3])
    if len(dims) == 3:
        return int(dims[1]), int(dims[2]), None
    raise UserError(f"the model input has shape {dims}; an image model needs [1, H, W] or "
                    "[1, H, W, C]")


def color_for(shape: Sequence[int], pre: Preprocess) -> str:
    """The PIL colour mode the input wants: the manifest's, else from the channel count."""
    if pre.color:
        return pre.color
    _, _, channels = image_geometry(shape)
    return "RGB" if channels == 3 else "L"


def load_image(path: Path, shape: Sequence[int], pre: Preprocess) -> np.ndarray:
    """Read an image file as uint8 pixels fitted to the input `shape` (no batch axis)."""
    from PIL import Image, UnidentifiedImageError  # lazy: keeps --help fast

    height, width, channels = image_geometry(shape)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img = to_8bit(img, path).convert(color_for(shape, pre))
            img = img.resize((width, height), Image.LANCZOS)
            pixels = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise UserError(f"{path} is too large to decode safely (more than "
                        f"{2 * Image.MAX_IMAGE_PIXELS} pixels); downscale the image "
                        "first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path} is not a readable image ({exc.__class__.__name__}); "
                        "give a JPEG, PNG or BMP file") from None
    return fit_channels(pixels, channels)


def to_8bit(img, path: Path):
    """`img` with 16-bit, 32-bit integer or float pixels scaled to an 8-bit "L" image.

    Pillow's convert("L"/"RGB") clips such pixels at 255 (a 16-bit image turns white),
    so they are scaled here: 16-bit by 1/257 (rounded, so 8-bit data saved as 16-bit
    comes back exactly), float from 0..1. Other modes are returned unchanged.
    """
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or (mode == "I" and img.format == "PNG"):
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise UserError(f"{path} has pixel values outside 0..65535; save it as an 8- or "
                            "16-bit image")
        return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")
    if mode == "I":
        raise UserError(f"{path} has 32-bit integer pixels, whose white level qrun cannot "
                        "tell; save it as an 8- or 16-bit image")
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if values.size and not (np.all(np.isfinite(values))
                                and values.min() >= 0 and values.max() <= 1):
            raise UserError(f"{path} has float pixels outside 0..1; qrun reads float images "
                            "as 0 (black) to 1 (white): rescale it, or save it as an 8-bit "
                            "image")
        return Image.fromarray(np.round(values * 255).astype(np.uint8), "L")
    return img


def fit_channels(pixels: np.ndarray, channels: Optional[int]) -> np.ndarray:
    """Add or keep the channel axis so pixels match [H, W] or [H, W, C]."""
    if channels is None:
        return pixels if pixels.ndim == 2 else pixels[..., 0]
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] != channels:
        raise UserError(f"the image has {pixels.shape[-1]} channels, the model wants {channels}")
    return pixels


def is_identity(pre: Preprocess, scale: float, zero_point: int) -> bool:
    """True when uint8 pixels are already the quantized input (Coral's shortcut)."""
    mean = np.asarray(pre.mean, dtype=np.float64)
    std = np.asarray(pre.std, dtype=np.float64)
    return bool(np.all(np.abs(scale * std - 1) < IDENTITY_TOLERANCE)
                and np.all(np.abs(mean - zero_point) < IDENTITY_TOLERANCE))


def to_float(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Pixels to the float model's input range: ``(pixel - mean) / std``."""
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    return ((pixels.astype(np.float32) - mean) / std).astype(np.float32)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Float to integer with the tensor's parameters, rounded and clipped to `dtype`.

    As TFLite's QUANTIZE kernel does it: in float32, multiplied by the inverse scale,
    rounded half to even, then the zero point added (adding it before rounding moves
    halves by one step when the zero point is odd).
    """
    info = np.iinfo(dtype)
    inverse = np.float32(1) / np.float32(scale)
    q = np.round(np.asarray(x, dtype=np.float32) * inverse).astype(np.float64) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor to float: ``scale * (q - zero_point)``; floats pass through."""
    if np.issubdtype(q.dtype, np.floating) or scale == 0:
        return q.astype(np.float32)
    return (scale * (q.astype(np.float32) - zero_point)).astype(np.float32)


def to_input(pixels: np.ndarray, pre: Preprocess, dtype, scale: float,
             zero_point: int) -> np.ndarray:
    """uint8 pixels (one image or a batch) to values of the input tensor's dtype.

    An integer input without quantization parameters (scale 0: MoveNet's uint8 input)
    takes the pixel values as they are, whatever mean and std say.
    """
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return to_float(pixels, pre).astype(dtype)
    if scale == 0:
        info = np.iinfo(dtype)
        return np.clip(np.asarray(pixels).astype(np.int64), info.min, info.max).astype(dtype)
    if dtype == np.uint8 and pixels.dtype == np.uint8 and is_identity(pre, scale, zero_point):
        return pixels
    return quantize(to_float(pixels, pre), scale, zero_point, dtype)


def _jsonable(value: Number):
    arr = np.asarray(value, dtype=float)
    return float(arr) if arr.ndim == 0 else [float(v) for v in arr]


def _numbers(value, name: str):
    """A manifest's mean or std: a number, or a non-empty list of numbers (finite)."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                            and np.isfinite(v) for v in items):
        raise ValueError(f"preprocess.{name} is {value!r}, not a number or a list of numbers")
    return _tupled(items)


def _tupled(value):
    if isinstance(value, (list, tuple)):
        return value[0] if len(value) == 1 else tuple(float(v) for v in value)
    return float(value)
