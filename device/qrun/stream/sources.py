"""Where frames come from: an image file, a folder of images, a video file, a camera, a stream.

`open_source(spec, loop)` reads SOURCE as the task commands take it:

- an existing file with an image suffix (.jpg, .jpeg, .png, .bmp): one frame (`--loop`: again
  and again);
- an existing directory: its images in name order, one frame each;
- any other existing file: a video, decoded with PyAV (FFmpeg);
- `/dev/videoN` or a bare index N: a V4L2 camera through FFmpeg's v4l2 input; `picam`: the
  Raspberry Pi camera through picamera2 (when it is installed);
- `rtsp://`, `rtsps://`, `http://`, `https://`: a network stream through FFmpeg, every wait
  on the network with a deadline (`NETWORK_TIMEOUT_S`).

Cameras and streams are live: they do not wait for a slow model, so the pipeline drops
their stale frames (qrun.stream.pipeline). Files are not: every frame is seen.

A source yields `Frame`s: index (0, 1, ...), timestamp in seconds (the video's presentation
time; for live sources the time since the first frame), the picture (PIL, RGB) and a name
(the image's file stem for folders, used by --save).
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from qrun.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".ts",
                  ".h264", ".264", ".mjpeg", ".mjpg", ".gif", ".flv", ".wmv", ".3gp")
NETWORK_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
NETWORK_TIMEOUT_S = (10.0, 5.0)  # opening, then each read
VIDEO_EXTRA = ("video sources need PyAV, the runner's `video` extra: pip install av "
               "(or 'qdeploy[video]'; qdeploy push --runner-extras video installs it on a "
               "device)")
PICAM = "picam"
TEXT_FORMATS = ("tty",)  # FFmpeg inputs that are text, not pictures


@dataclass
class Frame:
    """One picture of a source."""

    index: int
    timestamp: float  # seconds
    image: object  # PIL image, RGB
    name: str
    size: Optional[tuple] = None  # the source's (w, h) when `image` was decoded smaller

    @property
    def original_size(self) -> tuple:
        return self.size or self.image.size


def require_av():
    """PyAV, or one UserError line naming the extra that brings it."""
    try:
        import av
    except ImportError:
        raise UserError(VIDEO_EXTRA) from None
    return av


class Source:
    """Frames from somewhere; `frames()` yields them until the source ends."""

    kind = "source"
    live = False
    fps: Optional[float] = None  # the nominal frame rate, for --save
    description = ""

    def frames(self, shrink=None) -> Iterator[Frame]:
        """The frames; `shrink(w, h) -> (w, h)`, when given, is the smaller size a source
        that can decode smaller (a video) may give them at (the model sees no more)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class ImageSource(Source):
    """One image file: one frame, or the same frame again and again with `loop`."""

    kind = "image"

    def __init__(self, path: Path, loop: bool):
        self.path, self.loop = Path(path), loop
        self.description = str(path)

    def frames(self, shrink=None) -> Iterator[Frame]:
        from qrun.tasks.pipeline import read_image

        picture, _ = read_image(self.path, "RGB")
        index = 0
        while True:
            yield Frame(index, 0.0, picture, self.path.stem)
            index += 1
            if not self.loop:
                return


class FolderSource(Source):
    """The images of a directory in name order (not its subdirectories)."""

    kind = "folder"

    def __init__(self, path: Path, loop: bool):
        self.path, self.loop = Path(path), loop
        self.files = sorted(p for p in self.path.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise UserError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                            "give a folder of images, a video or a camera")
        self.description = f"{path} ({len(self.files)} images)"

    def frames(self, shrink=None) -> Iterator[Frame]:
        from qrun.tasks.pipeline import read_image

        index = 0
        while True:
            for path in self.files:
                picture, _ = read_image(path, "RGB")
                yield Frame(index, float(index), picture, path.stem)
                index += 1
            if not self.loop:
                return


class VideoSource(Source):
    """A video file, a V4L2 camera or a network stream, decoded by FFmpeg (PyAV)."""

    kind = "video"

    def __init__(self, target: str, loop: bool = False, live: bool = False,
                 fmt: Optional[str] = None, options: Optional[dict] = None,
                 kind: str = "video", timeout=None):
        self.target, self.loop, self.live = target, loop and not live, live
        self.fmt, self.options, self.timeout, self.kind = fmt, options or {}, timeout, kind
        self.description = target
        self.container = self._open()  # at once: a source that cannot be opened fails here
        stream = self.container.streams.video[0]
        rate = stream.average_rate or stream.base_rate
        self.fps = float(rate) if rate else None
        self.size = (stream.codec_context.width, stream.codec_context.height)

    def _open(self):
        av = require_av()
        try:
            container = av.open(self.target, format=self.fmt, options=self.options,
                                timeout=self.timeout)
        except av.error.FFmpegError as exc:
            raise UserError(open_failure(self.target, self.kind, exc)) from None
        if not container.streams.video or container.format.name in TEXT_FORMATS:
            container.close()
            raise UserError(f"{self.target} has no video stream; give a video file, a "
                            "camera or a stream")
        return container

    def frames(self, shrink=None) -> Iterator[Frame]:
        av = require_av()
        index, start, offset = 0, None, 0.0
        while True:
            last = 0.0
            try:
                for frame in self.container.decode(video=0):
                    if self.live:
                        now = time.monotonic()
                        start = now if start is None else start
                        stamp = now - start
                    else:
                        stamp = offset + (frame.time if frame.time is not None
                                          else index / (self.fps or 30.0))
                    last = stamp
                    size = (frame.width, frame.height)
                    if shrink is not None and shrink(size) != size:
                        # scaled while converted to RGB (swscale, bilinear): one pass
                        w, h = shrink(size)
                        picture = frame.to_image(width=w, height=h)
                    else:
                        picture, size = frame.to_image(), None
                    yield Frame(index, stamp, picture, f"frame{index:06d}", size)
                    index += 1
            except av.error.FFmpegError as exc:
                if self.live and index:
                    raise SourceStopped(self, index, exc) from None
                raise UserError(f"{self.target}: cannot decode frame {index} "
                                f"({ffmpeg_reason(exc)}); the file is damaged or not a "
                                "video") from None
            if self.live:
                raise SourceStopped(self, index, None)
            if not self.loop or index == 0:
                if index == 0:
                    raise UserError(f"{self.target} holds no decodable video frame; give "
                                    "another file")
                return
            self.container.close()
            offset = last + 1.0 / (self.fps or 30.0)
            self.container = self._open()

    def close(self) -> None:
        self.container.close()


class PicameraSource(Source):
    """The Raspberry Pi camera through picamera2 (libcamera)."""

    kind = "camera"
    live = True

    def __init__(self, size: tuple = (640, 480)):
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise UserError("source 'picam' needs picamera2 (sudo apt install "
                            "python3-picamera2, and a venv made with "
                            "--system-site-packages); or give /dev/videoN") from None
        try:
            self.camera = Picamera2()
            config = self.camera.create_video_configuration(
                main={"size": size, "format": "RGB888"})
            self.camera.configure(config)
            self.camera.start()
        except (RuntimeError, IndexError, OSError) as exc:
            raise UserError(f"the Pi camera cannot be opened ({exc}); check its cable, "
                            "that no other program uses it, and `rpicam-hello`") from None
        self.description = "Pi camera (picamera2)"
        self.fps = 30.0

    def frames(self, shrink=None) -> Iterator[Frame]:
        from PIL import Image

        start, index = time.monotonic(), 0
        while True:
            pixels = self.camera.capture_array("main")
            # RGB888 is B, G, R in memory (libcamera's naming): reverse to RGB.
            yield Frame(index, time.monotonic() - start,
                        Image.fromarray(pixels[..., 2::-1].copy()), f"frame{index:06d}")
            index += 1

    def close(self) -> None:
        self.camera.stop()
        self.camera.close()


class SourceStopped(Exception):
    """A live source ended (a stream closed, a camera unplugged): the run ends with its
    summary, then this error line."""

    def __init__(self, source: Source, frames: int, exc: Optional[BaseException]):
        why = f" ({ffmpeg_reason(exc)})" if exc is not None else ""
        super().__init__(f"{source.description} stopped after {frames} frames{why}")


def ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's own words for an error, without PyAV's repetition of the file name."""
    text = getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
    return re.sub(r"^\[Errno -?\d+\]\s*", "", str(text)).split(": '")[0]


def open_failure(target: str, kind: str, exc: BaseException) -> str:
    """The error line of a source FFmpeg could not open, by kind."""
    code = getattr(exc, "errno", None)
    reason = ffmpeg_reason(exc)
    if kind == "camera":
        if code == errno.EBUSY:
            return (f"camera {target} is in use by another program ({reason}); close it "
                    f"(`fuser {target}` names it) and try again")
        return f"camera {target} cannot be opened ({reason}); check it with `v4l2-ctl " \
               "--list-devices`"
    if kind == "stream":
        return (f"stream {target} cannot be opened ({reason}); check the address and that "
                "the camera or server is up")
    return (f"{target} is not a readable video ({reason}); give a video file (MP4, MKV, "
            "AVI, ...), a folder of images or an image")


def camera_path(spec: str) -> Optional[str]:
    """`/dev/videoN` for a camera SOURCE (`/dev/videoN` itself or an index), else None."""
    if spec.isdigit():
        return f"/dev/video{int(spec)}"
    if re.fullmatch(r"/dev/video\d+", spec):
        return spec
    return None


def cameras() -> list:
    """The V4L2 devices present, /dev/video0 first."""
    found = [p for p in Path("/dev").glob("video*") if p.name[5:].isdigit()]
    return [str(p) for p in sorted(found, key=lambda p: int(p.name[5:]))]


def open_source(spec: str, loop: bool = False) -> Source:
    """The source SOURCE names; one UserError line saying what was tried when it cannot be
    opened."""
    spec = str(spec)
    if spec.lower().startswith(NETWORK_SCHEMES):
        options = {"rtsp_transport": "tcp"} if spec.lower().startswith("rtsp") else {}
        return VideoSource(spec, live=True, options=options, kind="stream",
                           timeout=NETWORK_TIMEOUT_S)
    if spec == PICAM:
        return PicameraSource()
    device = camera_path(spec)
    if device is not None and (device == spec or not Path(spec).exists()):
        if not os.path.exists(device):
            present = cameras()
            seen = f"cameras here: {', '.join(present)}" if present else "no /dev/video* here"
            raise UserError(f"camera {device} not found ({seen}); plug one in, or give a "
                            "video file, a folder, an image or a stream URL")
        return VideoSource(device, live=True, fmt="v4l2", kind="camera")
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, loop)
    if path.is_file():
        if is_still(spec):
            return ImageSource(path, loop)
        return VideoSource(str(path), loop=loop)
    raise UserError(f"source {spec} not found: not a file, a folder, a camera "
                    "(/dev/videoN, an index, picam) or a stream URL (rtsp://, http://)")


def is_still(spec: str) -> bool:
    """True when SOURCE is one still image as `qrun detect IMAGE` has always taken it: a
    path with an image suffix (there or not: the image commands say what is wrong), or a
    file that is no video (PIL says whether it is an image)."""
    spec = str(spec)
    path = Path(spec)
    if spec.lower().startswith(NETWORK_SCHEMES) or spec == PICAM or path.is_dir():
        return False
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if not path.is_file():
        return camera_path(spec) is None and path.suffix.lower() not in VIDEO_SUFFIXES \
            and bool(path.suffix)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return False
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError):
        pass
    try:
        import av
    except ImportError:
        return True  # the image path says it is not an image
    try:
        with av.open(str(path)) as container:
            # FFmpeg shows any text file as a video of its characters (its "tty" input)
            return not container.streams.video or container.format.name in TEXT_FORMATS
    except (av.error.FFmpegError, OSError, ValueError):
        return True
