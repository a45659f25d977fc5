"""Where annotated frames go: JSON lines or text lines on stdout, --save (an annotated
video, or annotated images for a folder), the live page (qrun.stream.serve).

`--save PATH` is checked before the model loads (`save_target`): for a video, camera or
stream, PATH is a video file whose container its suffix names (.mp4, .mkv, .mov: H.264;
.avi: MPEG-4 part 2); for a folder, PATH is a directory (made when its parent exists) that
gets one PNG per image, named after it; for an image, PATH is a PNG. Everything is written
under a temporary name and renamed into place when the run ends well; a failed run leaves
nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Optional

from qrun.errors import UserError

CONTAINERS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".avi": "avi"}
DEFAULT_FPS = 30.0


def save_target(path: Optional[Path], source_kind: str) -> Optional[Path]:
    """Refuse, before any work, a --save PATH that cannot be written for this source."""
    if path is None:
        return None
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"--save {path}: directory {path.parent} does not exist; create it "
                        "or give another path")
    if source_kind == "folder":
        if path.exists() and not path.is_dir():
            raise UserError(f"--save {path} is a file; a folder source saves one annotated "
                            "image per input: give a directory")
        return path
    if path.is_dir():
        raise UserError(f"--save {path} is a directory; give a file name, e.g. "
                        f"{path / ('annotated.mp4' if source_kind != 'image' else 'annotated.png')}")
    if source_kind == "image":
        return path
    if path.suffix.lower() not in CONTAINERS:
        raise UserError(f"--save {path}: unknown video container {path.suffix or '(none)'}; "
                        f"end the name with one of {', '.join(CONTAINERS)}")
    return path


class JsonLines:
    """One JSON object per frame on stdout: index, timestamp, the frame's name, the task's
    result, each stage's ms."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def write(self, frame, record: dict, times: dict) -> None:
        line = {"index": frame.index, "timestamp": round(frame.timestamp, 6),
                "frame": frame.name, **record,
                "ms": {k: round(v, 3) for k, v in times.items()}}
        self.stream.write(json.dumps(line) + "\n")
        self.stream.flush()

    def close(self, ok: bool) -> None:
        pass


class TextLines:
    """`frame 12 (0.400 s): person 0.91, dog 0.80` on stdout."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def write(self, frame, text: str) -> None:
        self.stream.write(f"frame {frame.index} ({frame.timestamp:.3f} s): {text}\n")
        self.stream.flush()


class VideoWriter:
    """Annotated frames encoded into a video file (PyAV), renamed into place at the end."""

    def __init__(self, path: Path, fps: Optional[float]):
        from qrun.stream.sources import require_av

        self.av = require_av()
        self.path = Path(path)
        self.fps = Fraction(fps or DEFAULT_FPS).limit_denominator(1001)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                   dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.container = None
        self.stream = None
        self.count = 0

    def _open(self, size: tuple) -> None:
        av = self.av
        fmt = CONTAINERS[self.path.suffix.lower()]
        self.container = av.open(str(self.tmp), mode="w", format=fmt)
        h264 = fmt != "avi" and "libx264" in av.codecs_available
        self.stream = self.container.add_stream("libx264" if h264 else "mpeg4", rate=self.fps)
        self.stream.width, self.stream.height = size[0] - size[0] % 2, size[1] - size[1] % 2
        self.stream.pix_fmt = "yuv420p"
        if h264:
            self.stream.options = {"preset": "veryfast"}

    def write(self, picture) -> None:
        if self.container is None:
            self._open(picture.size)
        frame = self.av.VideoFrame.from_image(picture.convert("RGB")).reformat(
            self.stream.width, self.stream.height, "yuv420p")
        frame.pts = self.count
        frame.time_base = 1 / self.fps
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.count += 1

    def close(self, ok: bool) -> None:
        try:
            if self.container is not None:
                if ok:
                    for packet in self.stream.encode():
                        self.container.mux(packet)
                self.container.close()
            if ok and self.count:
                os.chmod(self.tmp, 0o666 & ~_umask())
                os.replace(self.tmp, self.path)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


class ImageWriter:
    """Annotated images: one PNG per frame into a directory (a folder source), or the one
    frame of an image source as a PNG; published at the end."""

    def __init__(self, path: Path, folder: bool):
        self.path, self.folder = Path(path), folder
        self.stage = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self.names: list = []

    def write(self, frame, picture) -> None:
        name = f"{frame.name}.png" if self.folder else self.path.name
        if self.folder and name in self.names:  # --loop: a later pass keeps its index
            name = f"{frame.name}-{frame.index}.png"
        picture.save(self.stage / name, format="PNG")
        self.names.append(name)

    def close(self, ok: bool) -> None:
        try:
            if ok and self.names:
                if self.folder:
                    self.path.mkdir(exist_ok=True)
                    for name in self.names:
                        os.replace(self.stage / name, self.path / name)
                else:
                    os.replace(self.stage / self.names[-1], self.path)
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)


def _umask() -> int:
    from qrun.atomic import umask

    return umask()


def saver(path: Optional[Path], source_kind: str, fps: Optional[float]):
    """The --save sink for this source, or None."""
    if path is None:
        return None
    if source_kind in ("folder", "image"):
        return ImageWriter(path, folder=source_kind == "folder")
    return VideoWriter(path, fps)
