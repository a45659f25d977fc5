"""`qrun bench --video FILE [--frames N]`: a video file's frames through the pipeline
(qrun.stream.pipeline) as `qrun detect|classify|segment|pose FILE` runs them, measured: frames
per second through the whole pipeline, each stage's median and p99 in ms, dropped frames (a
file drops none), and the rate the slowest stage allows (`bound_fps`, 1000 / its median:
what the pipeline tends to when the stages overlap perfectly, as on a Pi whose Edge TPU runs
invoke() off the CPU). The report's optional `stream` (qrun.measure.report_contract).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qrun.errors import UserError
from qrun.stream.pipeline import STAGES


def check_video(video: Optional[Path], frames: Optional[int]) -> None:
    """Refuse, before any model loads, a --video that is not a file or a bad --frames."""
    if video is None:
        if frames is not None:
            raise UserError("--frames counts the frames of --video; give --video FILE too")
        return
    if not Path(video).is_file():
        raise UserError(f"--video {video}: no such file; give a video file (MP4, MKV, AVI, "
                        "...)")
    if frames is not None and frames < 1:
        raise UserError(f"--frames must be at least 1, got {frames}")


def stream_report(opened, video: Path, frames: Optional[int] = None) -> dict:
    """Run the video's frames (at most `frames`) through the opened model's task steps on
    the pipeline; the report's `stream` object."""
    from qrun.measure.bench import frame_steps
    from qrun.model.manifest import CLASSIFY
    from qrun.stream import run
    from qrun.stream.render import Renderer

    steps = frame_steps(opened)
    kind = opened.task.kind if opened.task is not None else CLASSIFY
    opts = run.StreamOptions(str(video), frames=frames, quiet=True)
    prepared = run.prepare(opts, "")
    if prepared.source.kind != "video":
        prepared.source.close()
        raise UserError(f"--video {video} is not a video file; --image times one image")
    size = prepared.source.size
    pipe = run.run(opts, prepared, opened, steps, Renderer(kind), note=lambda _: None)
    stages = pipe.stage_stats()
    slowest = max(STAGES, key=lambda s: stages[s]["median"] or 0.0)
    return {"video": str(Path(video).resolve()), "width": size[0], "height": size[1],
            "frames": pipe.done, "fps": pipe.fps(), "dropped": pipe.dropped,
            **{f"{stage}_ms": stages[stage] for stage in STAGES},
            "slowest_stage": slowest, "bound_fps": 1e3 / stages[slowest]["median"]}


def stream_lines(stream: Optional[dict]) -> list:
    """What the pipeline did with the video, for qrun bench's summary (nothing without
    --video)."""
    if not stream:
        return []
    stages = "  ".join(f"{stage} {stream[f'{stage}_ms']['median']:.1f}/"
                       f"{stream[f'{stage}_ms']['p99']:.1f}" for stage in STAGES)
    return [f"stream of {Path(stream['video']).name} ({stream['width']}x{stream['height']}, "
            f"{stream['frames']} frames, ms median/p99): {stages}",
            f"stream: {stream['fps']:.1f} frames/s, dropped {stream['dropped']}; the slowest "
            f"stage ({stream['slowest_stage']}) allows {stream['bound_fps']:.1f} "
            f"({stream['fps'] / stream['bound_fps']:.2f} of it)"]
