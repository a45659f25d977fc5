"""The labelled images `qrun evaluate` and `qdeploy evaluate` read, in the layouts each
field keeps them in.

- COCO (detect, pose): `DIR/annotations.json`, an instances or person-keypoints file as
  COCO publishes them; each image found by its `file_name` in DIR or `DIR/images/`.
- YOLO (detect): `DIR/images/` and `DIR/labels/<stem>.txt`, one `class cx cy w h` line per
  box, normalised to the image; class names from `DIR/data.yaml` (`names:`) when present.
  Read into the same COCO form (boxes in pixels, category id = the class index).
- masks (segment): `DIR/images/` and `DIR/masks/<stem>.png`, a class id per pixel, 255
  ignored, at the image's size.
- images only (`--against float`): `DIR/images/`, else the images in DIR.

Every problem a user can cause is one UserError naming the file and the fix. Only the
image headers are read here (sizes); the pixels are decoded by the evaluation. Standard
library and PIL: the device imports it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from qrun.errors import UserError

COCO_FILE = "annotations.json"
DATA_YAML = "data.yaml"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
IGNORE = 255  # a mask pixel that counts for nothing
COCO, YOLO, MASKS, IMAGES = "coco", "yolo", "masks", "images"
EXPECTED = {  # what each task's evaluation reads, for the error naming a layout not found
    "detect": f"{COCO_FILE} (COCO) or images/ with labels/*.txt (YOLO)",
    "segment": "images/ with masks/*.png (class ids, 255 ignored)",
    "pose": f"{COCO_FILE} (COCO person keypoints)",
}


@dataclass(frozen=True)
class Item:
    """One image to evaluate: its COCO id, file, size, and (segment) its mask file."""

    id: int
    path: Path
    width: int
    height: int
    mask: Optional[Path] = None


@dataclass
class DataSet:
    """The images of DIR and their ground truth."""

    directory: Path
    layout: str  # COCO, YOLO, MASKS or IMAGES
    items: list  # Item
    coco: Optional[dict] = None  # the ground truth in COCO's form (detect, pose)
    notes: list = field(default_factory=list)

    @property
    def names(self) -> dict:
        """Category id -> name (COCO and YOLO layouts)."""
        return {int(c["id"]): str(c["name"]) for c in (self.coco or {}).get("categories", [])}


def read(directory: Path, task: str, against_float: bool = False,
         limit: Optional[int] = None) -> DataSet:
    """The data set in `directory` for a model of `task`, its layout found by its files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--data {directory} is not a directory; give the folder holding the "
                        f"images and their labels ({EXPECTED.get(task, 'images/')})")
    if not any(directory.iterdir()):
        raise UserError(f"--data {directory} is empty; it should hold "
                        f"{EXPECTED.get(task, 'images/')}")
    if against_float:
        return limited(read_images(directory), limit)
    if task in ("detect", "pose") and (directory / COCO_FILE).is_file():
        return limited(read_coco(directory, task), limit)
    if task == "detect" and (directory / "images").is_dir() and (directory / "labels").is_dir():
        return limited(read_yolo(directory), limit)
    if task == "segment" and (directory / "images").is_dir() and (directory / "masks").is_dir():
        return limited(read_masks(directory), limit)
    if task not in EXPECTED:
        raise UserError(f"evaluate measures detect, segment and pose models, not {task}")
    raise UserError(f"--data {directory} is in no layout evaluate reads for a {task} model: "
                    f"expected {EXPECTED[task]}; or pass --against float to score the int8 "
                    "model against the float model's own outputs on unlabelled images")


def limited(data: DataSet, limit: Optional[int]) -> DataSet:
    """The first `limit` images and their ground truth."""
    if limit is None or limit >= len(data.items):
        return data
    if limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    data.items = data.items[:limit]
    if data.coco is not None:
        ids = {item.id for item in data.items}
        data.coco = {**data.coco, "images": [i for i in data.coco["images"] if i["id"] in ids],
                     "annotations": [a for a in data.coco["annotations"]
                                     if a["image_id"] in ids]}
    return data


def image_files(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file())


def image_size(path: Path) -> tuple:
    """(w, h) from the image's header; a file that is not an image is a UserError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path} is not a readable image ({exc.__class__.__name__}); give "
                        "JPEG, PNG or BMP files") from None


def missing_error(directory: Path, source: str, missing: list) -> UserError:
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return UserError(f"{source} names {len(missing)} image(s) not in {directory} or "
                     f"{directory / 'images'}: {shown}; copy them there or drop them from it")


# -- COCO -----------------------------------------------------------------------------

def read_coco(directory: Path, task: str) -> DataSet:
    path = directory / COCO_FILE
    try:
        coco = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not readable JSON ({exc.__class__.__name__}); give a COCO "
                        "annotations file") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise UserError(f"{path} is not a COCO annotations file: it needs the lists images, "
                        "annotations and categories")
    if task == "pose" and not any(c.get("keypoints") for c in coco["categories"]):
        raise UserError(f"{path} has no keypoints category: a pose model is evaluated on "
                        "COCO person-keypoints annotations (person_keypoints_*.json)")
    items, missing = [], []
    for image in coco["images"]:
        name = str(image.get("file_name", ""))
        found = next((p for p in (directory / name, directory / "images" / name)
                      if name and p.is_file()), None)
        if found is None:
            missing.append(name or f"id {image.get('id')}")
            continue
        w, h = image.get("width"), image.get("height")
        if not (isinstance(w, int) and isinstance(h, int)):
            w, h = image_size(found)
            image.update(width=w, height=h)
        items.append(Item(int(image["id"]), found, w, h))
    if missing:
        raise missing_error(directory, str(path), missing)
    if not items:
        raise UserError(f"{path} lists no images; add images and their annotations")
    for a in coco["annotations"]:
        a.setdefault("iscrowd", 0)
        if "area" not in a and "bbox" in a:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
    coco.setdefault("info", {})
    return DataSet(directory, COCO, items, coco)


# -- YOLO -----------------------------------------------------------------------------

def read_yolo(directory: Path) -> DataSet:
    images = image_files(directory / "images")
    if not images:
        raise UserError(f"{directory / 'images'} holds no JPEG, PNG or BMP images")
    names = yaml_names(directory / DATA_YAML)
    items, annotations, used = [], [], set()
    for k, path in enumerate(images, 1):
        w, h = image_size(path)
        items.append(Item(k, path, w, h))
        label = directory / "labels" / f"{path.stem}.txt"
        for row in yolo_rows(label) if label.is_file() else []:
            cls, cx, cy, bw, bh = row
            used.add(cls)
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            annotations.append({"id": len(annotations) + 1, "image_id": k, "category_id": cls,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    unnamed = sorted(used - set(names)) if names else []
    if unnamed:
        raise UserError(f"{directory / 'labels'} uses class(es) {unnamed} that "
                        f"{directory / DATA_YAML} does not name; add them to its names")
    categories = [{"id": i, "name": names.get(i, str(i))} for i in sorted(set(names) | used)]
    coco = {"info": {}, "images": [{"id": i.id, "file_name": i.path.name, "width": i.width,
                                    "height": i.height} for i in items],
            "annotations": annotations, "categories": categories}
    notes = [] if names else [f"no {DATA_YAML} in {directory}: classes matched by index"]
    return DataSet(directory, YOLO, items, coco, notes)


def yolo_rows(path: Path) -> list:
    """(class, cx, cy, w, h) of each line of a YOLO label file."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, values = int(parts[0]), [float(v) for v in parts[1:5]]
        except ValueError:
            values = []
        if len(parts) != 5 or len(values) != 4 or not all(0 <= v <= 1.0001 for v in values):
            raise UserError(f"{path} line {n} is not 'class cx cy w h' with the four values "
                            f"normalised to 0..1: {line.strip()[:60]!r}")
        rows.append((cls, *values))
    return rows


def yaml_names(path: Path) -> dict:
    """Class index -> name from an Ultralytics data.yaml's `names:` (a list, inline or one
    `- name` a line, or `index: name` lines); {} without the file. PyYAML when installed."""
    if not path.is_file():
        return {}
    text = path.read_text()
    try:
        import yaml

        names = (yaml.safe_load(text) or {}).get("names")
    except ImportError:
        names = _names_without_yaml(text)
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    raise UserError(f"{path} has no names: list or mapping; add the class names")


def _names_without_yaml(text: str):
    lines = text.splitlines()
    for k, line in enumerate(lines):
        m = re.match(r"^names:\s*(.*)$", line)
        if not m:
            continue
        inline = m.group(1).strip()
        if inline.startswith("["):
            return [s.strip().strip("'\"") for s in inline.strip("[]").split(",") if s.strip()]
        block = []
        for item in lines[k + 1:]:
            if item and not item[0].isspace():
                break
            entry = re.match(r"^\s+(?:-\s*(.+)|(\d+)\s*:\s*(.+))$", item)
            if entry:
                block.append(entry.group(1) or (int(entry.group(2)), entry.group(3)))
        if block and all(isinstance(b, tuple) for b in block):
            return {i: n.strip().strip("'\"") for i, n in block}
        return [str(b).strip().strip("'\"") for b in block]
    return None


# -- masks and bare images ------------------------------------------------------------

def read_masks(directory: Path) -> DataSet:
    images = image_files(directory / "images")
    if not images:
        raise UserError(f"{directory / 'images'} holds no JPEG, PNG or BMP images")
    items = []
    for k, path in enumerate(images, 1):
        mask = next((m for m in (directory / "masks" / f"{path.stem}{s}"
                                 for s in (".png", ".bmp")) if m.is_file()), None)
        if mask is None:
            raise UserError(f"{path.name} has no mask {directory / 'masks' / path.stem}.png; "
                            "add it (class ids, 255 ignored) or remove the image")
        size, mask_size = image_size(path), image_size(mask)
        if size != mask_size:
            raise UserError(f"mask {mask} is {mask_size[0]}x{mask_size[1]} but its image "
                            f"{path.name} is {size[0]}x{size[1]}; a mask must have its "
                            "image's size")
        items.append(Item(k, path, size[0], size[1], mask))
    return DataSet(directory, MASKS, items)


def read_images(directory: Path) -> DataSet:
    folder = directory / "images" if (directory / "images").is_dir() else directory
    images = image_files(folder)
    if not images:
        raise UserError(f"--data {directory} holds no JPEG, PNG or BMP images (in it or in "
                        "images/); --against float needs images only")
    items = [Item(k, p, *image_size(p)) for k, p in enumerate(images, 1)]
    return DataSet(directory, IMAGES, items)


def read_mask(path: Path):
    """A mask file as a uint8 [H, W] array of class ids."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        if img.mode not in ("L", "P"):
            img = img.convert("L")
        return np.asarray(img, dtype=np.uint8)
