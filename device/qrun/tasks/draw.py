"""Pictures of what a model found, with PIL: boxes and labels, palette masks, skeletons.

The colour maps are the ones the segmentation datasets publish: PASCAL VOC's bit-spread
map (as in DeepLab's `create_pascal_label_colormap`: 256 colours, class 0 black) and
Cityscapes' 19 training classes. A mask PNG is a palette ("P") image whose pixel values
are the class ids, so a viewer shows colours and a program reads ids.
"""

from __future__ import annotations

import numpy as np

CITYSCAPES = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
]
# COCO keypoints (MoveNet's order) joined by the skeleton drawn by --out.
SKELETON = [(0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10),
            (5, 11), (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16)]
LINE = 2


def pascal_colormap() -> np.ndarray:
    """[256, 3] uint8: PASCAL VOC's colour of each class id."""
    colormap = np.zeros((256, 3), dtype=np.int64)
    ind = np.arange(256, dtype=np.int64)
    for shift in reversed(range(8)):
        for channel in range(3):
            colormap[:, channel] |= ((ind >> channel) & 1) << shift
        ind >>= 3
    return colormap.astype(np.uint8)


def cityscapes_colormap() -> np.ndarray:
    """[256, 3] uint8: Cityscapes' 19 training-class colours, the rest black."""
    colormap = np.zeros((256, 3), dtype=np.uint8)
    colormap[:len(CITYSCAPES)] = CITYSCAPES
    return colormap


COLORMAPS = {"pascal": pascal_colormap, "cityscapes": cityscapes_colormap}


def class_colour(class_id: int) -> tuple:
    """A distinct bright colour for a class id (the PASCAL map, skipping black)."""
    return tuple(int(c) for c in pascal_colormap()[1 + int(class_id) % 255])


def palette_mask(class_map: np.ndarray, colormap: str = "pascal"):
    """A palette PIL image whose pixel values are the class ids [H, W] (0..255)."""
    from PIL import Image

    mask = Image.fromarray(np.asarray(class_map, dtype=np.uint8), "P")
    mask.putpalette(COLORMAPS[colormap]().reshape(-1).tolist())
    return mask


def overlay(image, mask, alpha: float = 0.5):
    """The photo with the coloured mask blended over it (`alpha` of the mask) where the
    class is not 0 (background), which keeps the photo as it is."""
    from PIL import Image

    photo = image.convert("RGB")
    blended = Image.blend(photo, mask.convert("RGB"), alpha)
    foreground = Image.fromarray(((np.asarray(mask) != 0) * 255).astype(np.uint8), "L")
    return Image.composite(blended, photo, foreground)


def draw_objects(image, objects: list):
    """A copy of the image with each object's box and 'label score' drawn."""
    from PIL import ImageDraw

    canvas = image.convert("RGB")
    pen = ImageDraw.Draw(canvas)
    for obj in objects:
        colour = class_colour(obj.id)
        b = obj.bbox
        pen.rectangle([b.xmin, b.ymin, max(b.xmin, b.xmax - 1), max(b.ymin, b.ymax - 1)],
                      outline=colour, width=LINE)
        text = f"{obj.label or obj.id} {obj.score:.2f}"
        x0, y0, x1, y1 = pen.textbbox((b.xmin, b.ymin), text)
        top = max(0, b.ymin - (y1 - y0) - 2)
        pen.rectangle([b.xmin, top, b.xmin + (x1 - x0) + 2, top + (y1 - y0) + 2], fill=colour)
        pen.text((b.xmin + 1, top), text, fill=(0, 0, 0))
    return canvas


def draw_pose(image, keypoints: list, threshold: float):
    """A copy of the image with the keypoints scoring at least `threshold` and the
    skeleton lines between them."""
    from PIL import ImageDraw

    canvas = image.convert("RGB")
    pen = ImageDraw.Draw(canvas)
    seen = {i: k for i, k in enumerate(keypoints) if k.score >= threshold}
    for a, b in SKELETON:
        if a in seen and b in seen:
            pen.line([(seen[a].x, seen[a].y), (seen[b].x, seen[b].y)], fill=(0, 255, 255),
                     width=LINE)
    radius = max(2, round(min(canvas.size) / 100))
    for k in seen.values():
        pen.ellipse([k.x - radius, k.y - radius, k.x + radius, k.y + radius],
                    fill=(255, 0, 0), outline=(255, 255, 255))
    return canvas
