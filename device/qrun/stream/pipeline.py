"""Frames through a task's model on five threads joined by small bounded queues.

capture (decode the next frame) -> preprocess (resize or letterbox, quantize) -> invoke
(the model; its outputs copied, so the next invoke can start) -> postprocess (decode the
outputs, draw) -> sink (JSON lines, --save, the live page). Each stage runs on its own
thread, so while the model runs on frame n, frame n+1 is decoded and letterboxed and frame
n-1 decoded and drawn: the frame rate is that of the slowest stage, not of their sum. On
the Pi the Edge TPU runs invoke() off the CPU; the TFLite runtime, PyAV and PIL let go of
Python's lock while they work.

A file source drops nothing: the capture thread waits for room. A live source (camera,
stream) does not wait: when the first queue is full, the stalest frame in it is dropped
(and counted) for the new one, so what is shown is never behind.

Every stage's time per frame goes into a fixed-size ring (`Ring`), so memory stays flat
however long the run; `stats()` gives frames, fps, dropped and each stage's median and
p99 in ms at any time (the live page's /stats), `summary_line` the line printed at the end.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np

STAGES = ("capture", "preprocess", "invoke", "postprocess", "sink")
QUEUE_SIZE = 2
RING_SIZE = 4096  # stage times kept for the medians: the latest frames
RATE_WINDOW = 30  # frames the live fps is measured over
POLL_S = 0.05
END = object()  # passed down the queues when the source ends or the run stops


class Ring:
    """The latest `size` values of a stage's time per frame (ms), in fixed memory."""

    def __init__(self, size: int = RING_SIZE):
        self.values = np.zeros(size, dtype=np.float64)
        self.count = 0
        self.lock = threading.Lock()

    def add(self, value: float) -> None:
        with self.lock:
            self.values[self.count % len(self.values)] = value
            self.count += 1

    def latest(self) -> np.ndarray:
        with self.lock:
            return self.values[:min(self.count, len(self.values))].copy()


@dataclass
class Snapshot:
    """A model's outputs copied after invoke(), read as the interpreter is read
    (`get_output_details`, `get_tensor`), so postprocess runs while the next invoke does."""

    details: list
    tensors: dict

    @classmethod
    def of(cls, interpreter) -> "Snapshot":
        details = interpreter.get_output_details()
        return cls(details, {d["index"]: interpreter.get_tensor(d["index"]).copy()
                             for d in details})

    def get_output_details(self) -> list:
        return self.details

    def get_tensor(self, index: int):
        return self.tensors[index]


@dataclass
class Work:
    """One frame on its way: the source's Frame, then what each stage made of it."""

    frame: object  # qrun.stream.sources.Frame
    times: dict = field(default_factory=dict)
    data: object = None  # the input tensor
    context: object = None  # what postprocess needs (a Letterbox, the image size)
    outputs: object = None  # Snapshot
    result: object = None  # what the task's postprocess gave
    annotated: object = None  # the picture with the result drawn (PIL), when wanted


class Stopped(Exception):
    """The run was stopped (an error elsewhere, Ctrl-C): a stage gives up its frame."""


class Pipeline:
    """The five stages, the queues between them, the stop switches and the statistics.

    Args:
      frames: the source's frames (an iterator; pulled on the capture thread).
      live: drop stale frames instead of waiting (cameras, streams).
      preprocess, invoke, postprocess, sink: one function per stage, each taking a Work
        and filling it in (invoke returns the Snapshot, the others what they made).
      limit: stop after this many frames (--frames), None: when the source ends.
    """

    def __init__(self, frames: Iterable, live: bool, preprocess: Callable,
                 invoke: Callable, postprocess: Callable, sink: Callable,
                 limit: Optional[int] = None, queue_size: int = QUEUE_SIZE):
        self.frames, self.live, self.limit = iter(frames), live, limit
        self.steps = {"preprocess": preprocess, "invoke": invoke,
                      "postprocess": postprocess, "sink": sink}
        self.queues = [queue.Queue(maxsize=queue_size) for _ in range(len(STAGES) - 1)]
        self.rings = {stage: Ring() for stage in STAGES}
        self.stop = threading.Event()  # no more frames: drain what is in flight
        self.abort = threading.Event()  # give up at once (an error)
        self.error: Optional[BaseException] = None
        self.dropped = 0
        self.done = 0
        self.first_done: Optional[float] = None
        self.last_done: Optional[float] = None
        self.recent = deque(maxlen=RATE_WINDOW)
        self.started = time.perf_counter()
        self.threads: list = []

    # --- the stages -------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.abort.set()
        self.stop.set()

    def _put(self, q: queue.Queue, item) -> None:
        while not self.abort.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue
        raise Stopped()

    def _put_live(self, q: queue.Queue, item) -> None:
        """Put without waiting: a full queue loses its stalest frame (counted)."""
        while True:
            try:
                q.put_nowait(item)
                return
            except queue.Full:
                try:
                    q.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _get(self, q: queue.Queue):
        while not self.abort.is_set():
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                continue
        raise Stopped()

    def _capture(self) -> None:
        out, clock, captured = self.queues[0], time.perf_counter, 0
        try:
            while not self.stop.is_set():
                if self.limit is not None and not self.live and captured >= self.limit:
                    break
                start = clock()
                frame = next(self.frames, END)
                if frame is END:
                    break
                work = Work(frame, {"capture": (clock() - start) * 1e3})
                captured += 1
                (self._put_live if self.live else self._put)(out, work)
            self._put(out, END)
        except Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._fail(exc)

    def _stage(self, name: str, position: int) -> None:
        inp = self.queues[position - 1]
        out = self.queues[position] if position < len(self.queues) else None
        step, clock = self.steps[name], time.perf_counter
        try:
            while True:
                work = self._get(inp)
                if work is END:
                    if out is not None:
                        self._put(out, END)
                    return
                start = clock()
                step(work)
                work.times[name] = (clock() - start) * 1e3
                if out is not None:
                    self._put(out, work)
                else:
                    self._finished(work)
        except Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._fail(exc)

    def _finished(self, work: Work) -> None:
        now = time.perf_counter()
        for stage, ms in work.times.items():
            self.rings[stage].add(ms)
        self.first_done = now if self.first_done is None else self.first_done
        self.last_done = now
        self.recent.append(now)
        self.done += 1
        if self.limit is not None and self.done >= self.limit:
            self.stop.set()

    # --- running ----------------------------------------------------------------------

    def start(self) -> "Pipeline":
        self.started = time.perf_counter()
        self.threads = [threading.Thread(target=self._capture, name="qrun-capture",
                                         daemon=True)]
        self.threads += [threading.Thread(target=self._stage, args=(name, i),
                                          name=f"qrun-{name}", daemon=True)
                         for i, name in enumerate(STAGES[1:], 1)]
        for t in self.threads:
            t.start()
        return self

    def wait(self) -> None:
        """Until every stage has finished; Ctrl-C stops the source and drains the frames
        in flight (a second Ctrl-C gives them up). Re-raises a stage's error."""
        try:
            for t in self.threads:
                while t.is_alive():
                    t.join(timeout=0.2)
        except KeyboardInterrupt:
            self.stop.set()
            try:
                deadline = time.monotonic() + 5.0
                for t in self.threads:
                    t.join(timeout=max(0.0, deadline - time.monotonic()))
            except KeyboardInterrupt:
                pass
            self.abort.set()
        if self.error is not None:
            raise self.error

    def run(self) -> "Pipeline":
        self.start()
        self.wait()
        return self

    # --- what it measured -------------------------------------------------------------

    def fps(self) -> float:
        """Frames per second through the whole pipeline: from the first frame out to the
        last (the first frame's own latency, model warm-up included, left out)."""
        if self.done >= 2 and self.last_done > self.first_done:
            return (self.done - 1) / (self.last_done - self.first_done)
        if self.done and self.last_done:
            return self.done / (self.last_done - self.started)
        return 0.0

    def live_fps(self) -> float:
        """Frames per second over the latest RATE_WINDOW frames (the live page)."""
        recent = list(self.recent)
        if len(recent) >= 2 and recent[-1] > recent[0]:
            return (len(recent) - 1) / (recent[-1] - recent[0])
        return 0.0

    def stage_stats(self) -> dict:
        """{stage: {"median": ms, "p99": ms}} over the latest frames (RING_SIZE)."""
        stats = {}
        for stage in STAGES:
            values = self.rings[stage].latest()
            if values.size:
                median, p99 = np.percentile(values, [50, 99])
                stats[stage] = {"median": float(median), "p99": float(p99)}
            else:
                stats[stage] = {"median": None, "p99": None}
        return stats

    def stats(self) -> dict:
        """What the live page's /stats returns."""
        return {"frames": self.done, "fps": round(self.live_fps() or self.fps(), 2),
                "dropped": self.dropped,
                "stages_ms": {k: {s: (None if v is None else round(v, 2))
                                  for s, v in d.items()}
                              for k, d in self.stage_stats().items()}}


def summary_line(pipe: Pipeline) -> str:
    """frames, fps, each stage's median/p99 in ms, dropped: the line printed at the end."""
    stages = ", ".join(f"{k} {v['median']:.1f}/{v['p99']:.1f}"
                       for k, v in pipe.stage_stats().items() if v["median"] is not None)
    return (f"{pipe.done} frames, {pipe.fps():.1f} fps; ms median/p99: {stages or 'none'}; "
            f"dropped {pipe.dropped}")
