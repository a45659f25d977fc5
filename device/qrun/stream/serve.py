"""`--serve HOST:PORT`: the live page. `/` shows the annotated frames as they come (MJPEG
from `/stream`, multipart/x-mixed-replace) with fps, dropped frames and each stage's
median time, refreshed from `/stats` (JSON) twice a second.

Standard library only (http.server's ThreadingHTTPServer): one thread per viewer. The
sink publishes each annotated frame (`LiveServer.publish`); it is JPEG-encoded once for
every viewer, only while someone watches, at most MAX_STREAM_FPS times a second and no more
often than keeps drawing and encoding under CPU_SHARE of the time (the pipeline itself runs
at its own rate), so an unwatched page costs nothing and a watched one little. A viewer that goes away
ends its own thread quietly; the run goes on. Closing the server (the run ended, Ctrl-C)
ends every stream. Binds 127.0.0.1 unless HOST says otherwise (0.0.0.0: every interface).
"""

from __future__ import annotations

import errno
import html
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

from qrun.errors import UserError

BOUNDARY = "qrunframe"
JPEG_QUALITY = 80
MAX_STREAM_FPS = 20.0  # frames a second the page shows at most: JPEG encoding costs CPU
CPU_SHARE = 0.05  # of the time, at most, spent drawing and encoding the page's frames
WAIT_S = 1.0  # a stream handler checks this often whether the server closed


def parse_address(text: str) -> tuple:
    """HOST:PORT, :PORT or PORT -> (host, port); the host defaults to 127.0.0.1."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"--serve {text}: give HOST:PORT or PORT (e.g. 127.0.0.1:8080, "
                        "0.0.0.0:8080 for every interface)")
    return host, int(port)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ margin: 0; background: #111; color: #eee; font: 14px system-ui, sans-serif;
        height: 100vh; display: flex; flex-direction: column; }}
header {{ padding: 8px 12px; display: flex; flex-wrap: wrap; gap: 4px 18px;
          align-items: baseline; }}
h1 {{ font-size: 16px; margin: 0; }}
#fps {{ font-size: 20px; font-weight: bold; color: #7f7; }}
#stages {{ color: #aaa; }}
img {{ display: block; flex: 1; min-height: 0; width: 100%; object-fit: contain; }}
</style></head>
<body>
<header><h1>{title}</h1><span id="fps">– fps</span><span id="frames"></span>
<span id="stages"></span></header>
<img id="live" src="/stream" alt="live annotated frames">
<script>
async function tick() {{
  try {{
    const s = await (await fetch('/stats', {{cache: 'no-store'}})).json();
    document.getElementById('fps').textContent = s.fps.toFixed(1) + ' fps';
    document.getElementById('frames').textContent =
      s.frames + ' frames, ' + s.dropped + ' dropped';
    document.getElementById('stages').textContent = Object.entries(s.stages_ms)
      .filter(([k, v]) => v.median !== null)
      .map(([k, v]) => k + ' ' + v.median.toFixed(1) + ' ms').join(' · ');
  }} catch (e) {{}}
  setTimeout(tick, 500);
}}
tick();
</script>
</body></html>
"""


class LiveServer:
    """The page's HTTP server on its own thread, and the latest frame."""

    def __init__(self, host: str, port: int, stats: Callable[[], dict], title: str):
        self.stats, self.title = stats, title
        self.cond = threading.Condition()
        self.jpeg: Optional[bytes] = None
        self.picture = None  # the latest frame, not yet encoded (nobody was watching)
        self.seq = 0
        self.encoded_at = 0.0
        self.cost = None  # s to draw and encode a frame (a moving average)
        self.viewers = 0
        self.closed = False
        self.frames_sent = 0
        handler = type("Handler", (_Handler,), {"live": self})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"--serve {host}:{port}: the port is in use by another "
                                "program; give another port (or 0 for a free one)") from None
            raise UserError(f"--serve {host}:{port}: cannot listen there "
                            f"({exc.strerror or exc}); give an address of this machine") \
                from None
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.2}, name="qrun-serve",
                                       daemon=True)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/"

    def start(self) -> "LiveServer":
        self.thread.start()
        return self

    def publish(self, picture) -> None:
        """A new annotated frame: a PIL image, or a function that draws it (called only when
        the frame is sent). Drawn and JPEG-encoded here when someone watches and the last
        frame sent is old enough (`interval`); else only kept, for a viewer who comes."""
        now = time.monotonic()
        with self.cond:
            if self.viewers == 0 or now - self.encoded_at < self.interval():
                self.picture = picture
                return
        start = time.perf_counter()
        jpeg = encode_jpeg(picture() if callable(picture) else picture)
        cost = time.perf_counter() - start
        with self.cond:
            self.jpeg, self.picture, self.encoded_at = jpeg, None, now
            self.cost = cost if self.cost is None else 0.8 * self.cost + 0.2 * cost
            self.seq += 1
            self.cond.notify_all()

    def interval(self) -> float:
        """Seconds between frames sent: 1 / MAX_STREAM_FPS, longer when drawing and encoding
        a frame would take more than CPU_SHARE of the time (the pipeline's rate comes
        first)."""
        return max(1.0 / MAX_STREAM_FPS, (self.cost or 0.0) / CPU_SHARE)

    def latest(self, after: int) -> tuple:
        """(seq, JPEG) of the first frame newer than `after` (-1: the newest there is, at
        once); (seq, None) once closed."""
        with self.cond:
            if after < 0 and self.picture is not None:  # newer than the last one encoded
                picture = self.picture() if callable(self.picture) else self.picture
                self.jpeg, self.picture = encode_jpeg(picture), None
                self.seq += 1
            while self.seq <= after or self.jpeg is None:
                if self.closed:
                    break
                self.cond.wait(WAIT_S)
            if self.closed:
                return self.seq, None
            return self.seq, self.jpeg

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()


def encode_jpeg(picture) -> bytes:
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    live: LiveServer  # set on the subclass LiveServer makes
    protocol_version = "HTTP/1.0"
    server_version = "qrun"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        try:
            if path == "/":
                self._send(200, "text/html; charset=utf-8",
                           PAGE.format(title=html.escape(self.live.title)).encode())
            elif path == "/stats":
                self._send(200, "application/json", json.dumps(self.live.stats()).encode())
            elif path == "/stream":
                self._stream()
            else:
                self._send(404, "text/plain", b"not found: try / , /stream or /stats\n")
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            pass  # the viewer went away

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        live = self.live
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        with live.cond:
            live.viewers += 1
        seq = -1  # the latest frame at once, if there is one
        try:
            while True:
                seq, jpeg = live.latest(seq)
                if jpeg is None:
                    break
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                 f"Content-Length: {len(jpeg)}\r\n\r\n".encode())
                self.wfile.write(jpeg + b"\r\n")
                self.wfile.flush()
                live.frames_sent += 1
            self.wfile.write(f"--{BOUNDARY}--\r\n".encode())  # the run ended
        finally:
            with live.cond:
                live.viewers -= 1
