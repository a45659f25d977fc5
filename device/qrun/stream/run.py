"""`qrun classify|detect|segment|pose SOURCE` on a video, camera, stream or folder: the
source, the task's steps, the pipeline and the sinks put together.

Everything that can be refused is refused before the model loads: the options, the
source (opened first: what was tried is named), `--save` (its directory), `--serve` (the
port is bound). The run ends when the source does, after `--frames`, or on Ctrl-C; then
one summary line goes to stderr (frames, fps, each stage's median and p99, dropped). A live
source that stops (a stream closing, a camera unplugged) ends the run the same way, then
one `error:` line says so.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from qrun.errors import UserError
from qrun.stream import pipeline as stream_pipeline
from qrun.stream import sinks, sources
from qrun.stream.render import Renderer


@dataclass(frozen=True)
class StreamOptions:
    """What the task commands take for a stream of frames."""

    source: str
    frames: Optional[int] = None  # --frames N
    loop: bool = False
    save: Optional[Path] = None
    as_json: bool = False
    serve: Optional[str] = None  # HOST:PORT
    quiet: bool = False  # no per-frame text lines (qrun bench --video)


def wants_stream(source: str, frames: Optional[int], loop: bool, save: Optional[Path],
                 serve: Optional[str]) -> bool:
    """Whether SOURCE goes through the pipeline; a lone still image with none of the
    stream options takes the task command's single-image path, as it always has."""
    return (frames is not None or loop or save is not None or serve is not None
            or not sources.is_still(source))


def check_options(opts: StreamOptions) -> None:
    if opts.frames is not None and opts.frames < 1:
        raise UserError(f"--frames must be at least 1, got {opts.frames}")
    if opts.save is not None and not Path(opts.save).parent.is_dir():
        raise UserError(f"--save {opts.save}: directory {Path(opts.save).parent} does not "
                        "exist; create it or give another path")


@dataclass
class Prepared:
    """The source, its --save sink and the live server: opened before the model loads."""

    source: sources.Source
    saver: object
    server: object


def prepare(opts: StreamOptions, title: str) -> Prepared:
    """Open the source, check --save against it, bind the live page's port."""
    check_options(opts)
    server = None
    if opts.serve is not None:
        from qrun.stream import serve

        host, port = serve.parse_address(opts.serve)
        server = serve.LiveServer(host, port, lambda: {}, title)
    try:
        source = sources.open_source(opts.source, opts.loop)
        if opts.loop and source.live:
            raise UserError(f"--loop repeats files; {opts.source} is live: drop --loop")
        save = sinks.save_target(opts.save, source.kind)
        saver = sinks.saver(save, source.kind, source.fps)
    except BaseException:
        if server is not None:
            server.close()
        raise
    return Prepared(source, saver, server)


def stopped_gracefully(frames, holder: list):
    """The source's frames; a live source that stops is kept in `holder`, not raised, so
    the frames in flight are finished and the summary printed."""
    try:
        yield from frames
    except sources.SourceStopped as exc:
        holder.append(exc)


def stop_on_sigterm() -> Callable[[], None]:
    """Let SIGTERM (systemd, `kill`) end a run as Ctrl-C does: frames in flight finished,
    --save completed, the summary printed. Returns what puts the old handler back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, old)


def draft(steps) -> Optional[Callable[[tuple], tuple]]:
    """For a task whose steps letterbox into `draft_size` (detect): the size a frame of
    (w, h) is letterboxed to, so a video can be decoded straight to it when no annotated
    picture is wanted (as a JPEG's draft mode is used for one image). None otherwise."""
    box = getattr(steps, "draft_size", None)
    if box is None:
        return None
    from qrun.tasks import letterbox

    def shrink(size: tuple) -> tuple:
        fitted = letterbox.resized_size(letterbox.plan(size, box, centre=True))
        return fitted if fitted[0] < size[0] else size

    return shrink


def run(opts: StreamOptions, prepared: Prepared, opened, steps, renderer: Renderer,
        note: Callable[[str], None] = lambda line: print(line, file=sys.stderr)):
    """Run the frames of `prepared.source` through the model; returns the finished
    Pipeline (its stats). Prints JSON or text lines per frame, the summary line at the end."""
    from qrun.tasks.pipeline import invoke as run_model

    source, saver, server = prepared.source, prepared.saver, prepared.server
    picture_wanted = saver is not None  # the live page draws only the frames it sends
    color = steps.color
    interpreter = opened.interpreter
    out = sinks.JsonLines() if opts.as_json else None if opts.quiet else sinks.TextLines()
    stopped: list = []

    def preprocess(work):
        picture = work.frame.image
        fed = picture if color == "RGB" else picture.convert(color)
        work.data, work.context = steps.preprocess(fed, work.frame.original_size)

    def invoke(work):
        run_model(opened, work.data)
        work.outputs = stream_pipeline.Snapshot.of(interpreter)
        work.data = None

    def postprocess(work):
        work.result = steps.postprocess(work.outputs, work.context)
        work.outputs = None
        if picture_wanted:
            work.annotated = renderer.draw(work.frame.image, work.result)

    def sink(work):
        if isinstance(out, sinks.JsonLines):
            out.write(work.frame, renderer.record(work.result), work.times)
        elif out is not None:
            out.write(work.frame, renderer.text(work.result))
        if saver is not None:
            if isinstance(saver, sinks.ImageWriter):
                saver.write(work.frame, work.annotated)
            else:
                saver.write(work.annotated)
        if server is not None:
            server.publish(work.annotated if work.annotated is not None else
                           functools.partial(renderer.draw, work.frame.image, work.result))

    shrink = None if picture_wanted or server is not None else draft(steps)
    pipe = stream_pipeline.Pipeline(stopped_gracefully(source.frames(shrink), stopped),
                                    source.live,
                                    preprocess, invoke, postprocess, sink, opts.frames)
    ok = False
    restore = stop_on_sigterm()
    try:
        if server is not None:
            server.stats = pipe.stats
            server.start()
            note(f"live page: {server.url} (Ctrl-C stops)")
        pipe.run()
        ok = True
    finally:
        if saver is not None:
            try:
                saver.close(ok and pipe.done > 0)
            except Exception as exc:  # noqa: BLE001 - one line, the run's own error first
                if ok:
                    raise UserError(f"--save {opts.save}: cannot finish writing "
                                    f"({exc.__class__.__name__}: {exc})") from None
        restore()
        if server is not None:
            server.close()
        source.close()
        if pipe.done or ok:
            note(stream_pipeline.summary_line(pipe))
    if saver is not None and pipe.done:
        what = {"folder": "images", "image": "image"}.get(source.kind, "frames")
        note(f"annotated {what} written to {opts.save}")
    if stopped:
        raise UserError(f"{stopped[0]}; the run ended there")
    return pipe


def task_steps(kind: str, opened, labels: Optional[Path] = None, threshold: float = 0.25,
               iou: float = 0.45, max_objects: int = 100, top_k: int = 3):
    """The task's steps for one decoded frame (preprocess, postprocess), as the single-image
    commands set them up."""
    from qrun.model.manifest import CLASSIFY, DETECT, POSE, SEGMENT
    from qrun.tasks import pipeline as tasks

    if kind == DETECT:
        from qrun.tasks.detect import detector

        tasks.check_fraction(threshold, "--threshold")
        tasks.check_fraction(iou, "--iou")
        if max_objects < 1:
            raise UserError(f"--max must be at least 1, got {max_objects}")
        return detector(opened, labels, threshold, iou, max_objects)
    if kind == SEGMENT:
        from qrun.tasks.segment import segmenter

        return segmenter(opened, labels)
    if kind == POSE:
        from qrun.tasks.pose import pose_finder

        return pose_finder(opened)
    if kind == CLASSIFY:
        import dataclasses

        from qrun.measure.bench import classifier

        steps = classifier(opened)
        names = tasks.read_labels(opened, labels, None)[0] if labels else steps.names
        return dataclasses.replace(steps, names=names, top_k=top_k)
    raise UserError(f"qrun has no frame steps for task {kind}")


def run_task(kind: str, opts: StreamOptions, model: Optional[Path], device: str, tpu: str,
             threads: Optional[int], renderer: Optional[Renderer] = None,
             note: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
             **params):
    """`qrun KIND SOURCE`: open the source (and --save, --serve), then the model, then run
    the frames through it. Returns the finished Pipeline."""
    from qrun.tasks import pipeline as tasks

    renderer = renderer or Renderer(kind, threshold=params.pop("draw_threshold", 0.3),
                                    colormap=params.pop("colormap", "pascal"))
    prepared = prepare(opts, f"qrun {kind} · {opts.source}")
    try:
        opened = tasks.open_model(model, kind, device, tpu, threads, tasks.Stopwatch())
        if opened.choice.fell_back:
            note(f"note: {opened.device()['reason']}")
        steps = task_steps(kind, opened, **params)
    except BaseException:
        if prepared.server is not None:
            prepared.server.close()
        if prepared.saver is not None:
            prepared.saver.close(False)
        prepared.source.close()
        raise
    return run(opts, prepared, opened, steps, renderer, note)
