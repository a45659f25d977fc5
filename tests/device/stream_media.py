"""Videos and folders for the qrun stream tests, made with PyAV from the YOLO fixture's
known boxes (tests/fixtures/yolo.py), seeded.

A frame is the fixture's 32x32 grid scaled up `SCALE` times: grey (128) everywhere, one cell
white. The fixture's head scores class 0 ("lamp") with a cell's brightness and class 1
("shadow") with one minus it, so above a threshold of 0.75 exactly one object is found per
frame, the white cell, whose box in frame pixels is known by construction (`cell_box`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.fixtures.yolo import CELL, GRID, SIZE

SCALE = 4
FRAME = SIZE * SCALE  # 128x128 frames
FPS = 10
SEED = 0
THRESHOLD = "0.75"


def cell_order(count: int, seed: int = SEED) -> list:
    """Which cell is white in each frame: a seeded shuffle of the 16, repeated."""
    rng = np.random.default_rng(seed)
    order = []
    while len(order) < count:
        order += [int(k) for k in rng.permutation(GRID * GRID)]
    return order[:count]


def cell_frame(k: int) -> np.ndarray:
    """uint8 [FRAME, FRAME, 3]: grey with cell k white."""
    pixels = np.full((FRAME, FRAME, 3), 128, np.uint8)
    x0, y0, x1, y1 = (int(v) for v in cell_box(k))
    pixels[y0:y1, x0:x1] = 255
    return pixels


def cell_box(k: int) -> list:
    """[xmin, ymin, xmax, ymax] of cell k in frame pixels."""
    row, col = divmod(k, GRID)
    side = CELL * SCALE
    return [col * side, row * side, (col + 1) * side, (row + 1) * side]


def write_video(path: Path, frames: list, fps: int = FPS) -> Path:
    """Encode RGB frames as H.264 (MP4) with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available
                                      else "mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cells_video(path: Path, count: int) -> tuple:
    """(the video, the white cell of each frame)."""
    order = cell_order(count)
    return write_video(path, [cell_frame(k) for k in order]), order


def decode(path: Path) -> list:
    """Every frame of a video as an RGB array (PyAV)."""
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


class Running:
    """A qrun subprocess left running (--serve, --loop), its stderr read line by line."""

    def __init__(self, args: list, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "qrun", *map(str, args)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.lines: list = []

    def wait_for(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            self.lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"qrun never printed {prefix!r}: {self.lines}")

    def interrupt(self, timeout: float = 30.0) -> tuple:
        """Ctrl-C; (exit code, the rest of stderr)."""
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        rest = self.proc.communicate(timeout=timeout)[1]
        return self.proc.returncode, "\n".join(self.lines) + "\n" + rest

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


def env_for(home: Path) -> dict:
    from tests.fixtures.runner import qrun_env

    return qrun_env(home)
