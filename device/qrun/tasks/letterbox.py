"""Letterbox: resize an image into the model's input keeping its aspect ratio, pad the rest,
and map boxes and points found in the input back to the original image's pixels.

Two placements are in use: pycoral's `set_resized_input` puts the resized image at the
top-left corner and leaves the rest 0; Ultralytics' `LetterBox` centres it and pads with
114 (grey). A `Letterbox` records the transform, so the mapping back is exact for either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ULTRALYTICS_FILL = 114
PYCORAL_FILL = 0


@dataclass(frozen=True)
class Letterbox:
    """How an image of `image_size` (w, h) sits in an input of `input_size` (w, h):
    scaled by `scale`, its top-left corner at (`pad_x`, `pad_y`) input pixels."""

    image_size: tuple
    input_size: tuple
    scale: float
    pad_x: int
    pad_y: int


def plan(image_size: tuple, input_size: tuple, centre: bool) -> Letterbox:
    """The letterbox of an image (w, h) in an input (w, h): the largest scale that fits,
    placed at the centre (Ultralytics) or the top-left corner (pycoral)."""
    (w, h), (iw, ih) = image_size, input_size
    scale = min(iw / w, ih / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    pad_x, pad_y = ((iw - new_w) // 2, (ih - new_h) // 2) if centre else (0, 0)
    return Letterbox((w, h), (iw, ih), scale, pad_x, pad_y)


def resized_size(box: Letterbox) -> tuple:
    """(w, h) of the image once scaled into the input."""
    w, h = box.image_size
    return max(1, round(w * box.scale)), max(1, round(h * box.scale))


def fit(image, input_size: tuple, centre: bool = True, fill: int = ULTRALYTICS_FILL,
        resample=None, image_size: tuple = None) -> tuple:
    """Letterbox a PIL image into `input_size` (w, h).

    Args:
      image: a PIL image (its mode is kept).
      input_size: the model's (width, height).
      centre: centre the image (Ultralytics) or put it top-left (pycoral).
      fill: the padding value.
      resample: a PIL filter; LANCZOS when None (BILINEAR is faster on big frames).
      image_size: the original (w, h) when `image` was decoded smaller (JPEG draft mode);
        the boxes then map back to the original's pixels.
    Returns:
      (pixels uint8 [h, w] or [h, w, C], Letterbox).
    """
    from PIL import Image

    box = plan(image_size or image.size, input_size, centre)
    size = resized_size(box)
    if size != image.size:
        image = image.resize(size, resample if resample is not None else Image.LANCZOS,
                             reducing_gap=3.0)
    pixels = np.asarray(image, dtype=np.uint8)
    iw, ih = input_size
    out = np.full((ih, iw) + pixels.shape[2:], fill, np.uint8)
    out[box.pad_y:box.pad_y + size[1], box.pad_x:box.pad_x + size[0]] = pixels
    return out, box


def boxes_to_image(boxes: np.ndarray, box: Letterbox) -> np.ndarray:
    """Boxes [N, 4] (xmin, ymin, xmax, ymax) in input pixels -> original image pixels,
    clipped to the image."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = box.image_size
    x = (boxes[:, [0, 2]] - box.pad_x) / box.scale
    y = (boxes[:, [1, 3]] - box.pad_y) / box.scale
    return np.stack([np.clip(x[:, 0], 0, w), np.clip(y[:, 0], 0, h),
                     np.clip(x[:, 1], 0, w), np.clip(y[:, 1], 0, h)], axis=1)


def points_to_image(points: np.ndarray, box: Letterbox) -> np.ndarray:
    """Points [N, 2] (x, y) in input pixels -> original image pixels (not clipped)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.stack([(points[:, 0] - box.pad_x) / box.scale,
                     (points[:, 1] - box.pad_y) / box.scale], axis=1)
