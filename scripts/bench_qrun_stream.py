#!/usr/bin/env python3
"""qrun's video pipeline (qrun.stream) against a minimal sequential loop, the live page's
cost, and memory over a long run: ratios measured side by side in one run.

Three targets (issue 26):

- `qrun bench --video` fps >= 1.3x a minimal sequential loop (decode, letterbox, invoke,
  decode head, NMS) at the same interpreter thread count, for the YOLOv8n-640-sized int8
  stand-in of scripts/bench_qrun_detect.py (built with TF and cached there). Also given as a
  ratio to 1 / the slowest stage (what the pipeline tends to when the stages overlap fully,
  as on a Pi whose Edge TPU runs invoke() off the CPU). qrun gains twice: the stages overlap,
  and a video whose annotated picture nobody wants is decoded straight to the letterbox's
  size; the overlap alone (frames decoded at full size) is printed too.
- --serve with a viewer adds at most 10% to the pipeline's frame time at 640x480.
- memory stays flat over 10,000 frames of `qrun classify VIDEO --loop --frames 10000 --json`
  (a real qrun process; RSS read from /proc after frame 500 and at the last frame).

The videos are seeded H.264 files of smooth moving blobs (PyAV), cached beside the model:
1280x720 (300 frames) for the pipeline, 640x480 for the live page and the memory run.
The sequential loop and the pipeline alternate in blocks (`--rounds`); medians are printed.

    PYTHONPATH=host:device:. .venv/bin/python scripts/bench_qrun_stream.py [--frames 150]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "device")]
import bench_qrun_detect as detect_bench  # noqa: E402 - the stand-in model and its cache

CACHE = detect_bench.CACHE
SEED = 0
TARGET_SPEEDUP = 1.3
TARGET_SERVE = 0.10
MEMORY_MODEL = ROOT / "tests" / "data" / "coral" / "mobilenet_v1_0.25_128_quant.tflite"


def blob_video(path: Path, size: tuple, frames: int) -> Path:
    """A seeded H.264 video of smooth colour blobs drifting across (compresses like a scene)."""
    if path.is_file():
        return path
    import av
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(SEED)
    w, h = size
    small = rng.integers(0, 256, (h // 40 + 2, w // 40 + 2, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((w + 80, h + 80), Image.BICUBIC)
    base = np.asarray(big.filter(ImageFilter.GaussianBlur(3)))
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            dx, dy = int(40 + 40 * np.sin(i / 15)), int(40 + 40 * np.cos(i / 20))
            pixels = np.ascontiguousarray(base[dy:dy + h, dx:dx + w])
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def sequential_fps(opened, steps, video: Path, frames: int) -> float:
    """The minimal loop: decode a frame, letterbox and quantize it, invoke, decode the head
    and NMS, one after the other on one thread (qrun's own steps, so only the overlap
    differs)."""
    import av

    from qrun.tasks import pipeline

    done, start = 0, None
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            if done == 1:
                start = time.perf_counter()  # as the pipeline's fps: from the first frame out
            picture = frame.to_image()
            data, box = steps.preprocess(picture, picture.size)
            pipeline.invoke(opened, data)
            steps.postprocess(opened.interpreter, box)
            done += 1
            if done >= frames:
                break
    return (done - 1) / (time.perf_counter() - start)


def pipeline_run(opened, steps, video: Path, frames: int, serve: bool = False,
                 full_decode: bool = False) -> tuple:
    """`qrun bench --video`'s measurement (qrun.stream.bench's path): (fps, stage medians);
    with `serve`, the live page on and one viewer reading its MJPEG stream; with
    `full_decode`, frames decoded at full size as the sequential loop does (no draft decode:
    the overlap alone)."""
    from qrun.stream import run
    from qrun.stream.render import Renderer

    draft = run.draft
    if full_decode:
        run.draft = lambda steps: None
    opts = run.StreamOptions(str(video), frames=frames, quiet=True,
                             serve="127.0.0.1:0" if serve else None)
    prepared = run.prepare(opts, "bench")
    viewer = None
    if serve:
        url = prepared.server.url + "stream"
        got = {"bytes": 0}

        def watch():
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    while block := response.read(1 << 16):
                        got["bytes"] += len(block)
            except OSError:
                pass

        viewer = threading.Thread(target=watch, daemon=True)
        viewer.start()
    try:
        pipe = run.run(opts, prepared, opened, steps, Renderer("detect"), note=lambda _: None)
    finally:
        run.draft = draft
    if viewer is not None:
        viewer.join(timeout=10)
        assert got["bytes"] > 0, "the viewer got no frames"
    stages = {k: v["median"] for k, v in pipe.stage_stats().items()}
    return pipe.fps(), stages


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1])


def memory_run(video: Path, frames: int, threads: int) -> tuple:
    """RSS (KiB) of a real `qrun classify VIDEO --loop --frames N --json` after frame 500 and
    at its last frame; and the frames it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "qrun", "classify", str(video), "--model",
                             str(MEMORY_MODEL), "--loop", "--frames", str(frames), "--json",
                             "--threads", str(threads)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    early = late = None
    count = 0
    for line in proc.stdout:
        index = json.loads(line)["index"]
        count += 1
        if index == min(500, frames - 1):
            early = rss_kb(proc.pid)
        if index == frames - 1:
            late = rss_kb(proc.pid)
    err = proc.communicate()[1]
    if proc.returncode != 0:
        raise SystemExit(f"qrun classify failed: {err.strip().splitlines()[-1:]}")
    summary = [ln for ln in err.splitlines() if " fps; " in ln]
    return early, late, count, summary[0] if summary else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150, help="frames per block")
    parser.add_argument("--rounds", type=int, default=3, help="sequential/pipeline blocks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-frames", type=int, default=10_000, help="0: no memory run")
    args = parser.parse_args()

    model, _, _ = detect_bench.cached_inputs()
    video = blob_video(CACHE / "blobs_1280x720.mp4", (1280, 720), 300)
    small = blob_video(CACHE / "blobs_640x480.mp4", (640, 480), 300)

    from qrun.tasks import detect, pipeline

    opened = pipeline.open_model(model, "detect", "cpu", "", args.threads, pipeline.Stopwatch())
    steps = detect.detector(opened)
    sequential_fps(opened, steps, video, 10)  # warm-up
    seq, piped, stages, overlap = [], [], [], []
    for _ in range(args.rounds):
        seq.append(sequential_fps(opened, steps, video, args.frames))
        fps, stage = pipeline_run(opened, steps, video, args.frames)
        piped.append(fps)
        stages.append(stage)
        overlap.append(pipeline_run(opened, steps, video, args.frames, full_decode=True)[0])
    plain, served = [], []
    for _ in range(args.rounds):
        plain.append(pipeline_run(opened, steps, small, args.frames)[0])
        served.append(pipeline_run(opened, steps, small, args.frames, serve=True)[0])

    s, p = statistics.median(seq), statistics.median(piped)
    medians = {k: statistics.median(st[k] for st in stages) for k in stages[0]}
    slowest = max(medians, key=medians.get)
    bound = 1e3 / medians[slowest]
    speedup = p / s
    print(f"model: {model.name} (YOLOv8n-640-sized int8 stand-in), {args.threads} threads; "
          f"video {video.name}, {args.frames} frames a block, {args.rounds} rounds")
    print("pipeline stage medians (ms): "
          + ", ".join(f"{k} {v:.1f}" for k, v in medians.items()))
    print(f"sequential loop: {s:.1f} fps ({1e3 / s:.1f} ms/frame); pipeline (qrun bench "
          f"--video): {p:.1f} fps ({1e3 / p:.1f} ms/frame)")
    print(f"pipeline / sequential = {speedup:.2f}x (target >= {TARGET_SPEEDUP}x): "
          f"{'PASS' if speedup >= TARGET_SPEEDUP else 'FAIL'}")
    print(f"pipeline / (1 / slowest stage: {slowest}, {bound:.1f} fps) = {p / bound:.2f}")
    o = statistics.median(overlap)
    print(f"of which the overlap alone (frames decoded at full size, as the loop does): "
          f"{o:.1f} fps = {o / s:.2f}x the sequential loop; the draft decode (straight to the "
          f"letterbox's size) the rest")

    a, b = statistics.median(plain), statistics.median(served)
    cost = (1 / b) / (1 / a) - 1
    print(f"640x480: {a:.1f} fps without the live page, {b:.1f} fps with it and one viewer: "
          f"frame time +{100 * cost:.1f}% (target <= {100 * TARGET_SERVE:.0f}%): "
          f"{'PASS' if cost <= TARGET_SERVE else 'FAIL'}")

    if args.memory_frames < 1:
        return 0 if speedup >= TARGET_SPEEDUP and cost <= TARGET_SERVE else 1
    early, late, count, summary = memory_run(small, args.memory_frames, args.threads)
    growth = late / early - 1
    print(f"memory: qrun classify {small.name} --loop --frames {args.memory_frames} "
          f"({MEMORY_MODEL.name}): RSS {early / 1024:.1f} MiB after frame 500, "
          f"{late / 1024:.1f} MiB at frame {count} ({100 * growth:+.1f}%); {summary}")
    return 0 if speedup >= TARGET_SPEEDUP and cost <= TARGET_SERVE else 1


if __name__ == "__main__":
    sys.exit(main())
