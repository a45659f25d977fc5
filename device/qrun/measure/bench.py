"""`qrun bench`: latency of one model on this device, as a stable JSON report.

Field names follow TFLite's benchmark_model (init, first inference, warm-up
mean, steady-state statistics, memory) plus what a fleet report needs: model
sha256, runtime, device used and why, host facts, schema version. The fields,
kinds and version are the report contract's (qrun.measure.report_contract). The
steady-state loop times nothing but ``interpreter.invoke()`` on fixed random
input (seed 0), so its median stays within a few percent of a bare loop. Every
input is fed (`fill_inputs`); the report's `model` says how many inputs and outputs
the model has and its task kind (the deployment manifest's; null for a bare file).

With `--image`, whole frames of the model's task are timed too (`frame`): the image is
decoded once, then each run preprocesses it (resize or letterbox, quantize), invokes and
postprocesses (classify: top-k; detect: decode and NMS; segment: the class map at the
image's size; pose: the keypoints), exactly as `qrun classify/detect/segment/pose` do,
each stage timed on its own (qrun.tasks.pipeline.frame_timings).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, make_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import qrun
from qrun.model import deployment, runtime
from qrun.model.inputs import random_array
from qrun.measure import hostinfo, report_contract
from qrun.errors import UserError
from qrun.model.layout import EDGETPU, FLOAT, INT8, MODEL_ROLES
from qrun.measure.report_contract import BENCH_KIND, COMPARE_KIND, SCHEMA_VERSION

INPUT_SEED = 0
VARIANT_ORDER = MODEL_ROLES


# The report's values qrun bench does not measure: what every report starts with, and
# which qrun wrote it.
REPORT_DEFAULTS = {"schema_version": SCHEMA_VERSION, "kind": BENCH_KIND,
                   "qrun_version": qrun.__version__}


def report_type() -> type:
    """The BenchReport dataclass, built from the report contract: one attribute per
    top-level key (`report_contract.keys(optional=True)`), typed by its field.

    The measured attributes come first, in the contract's order and without defaults
    (bench_choice gives them all by name); then the optional ones (`frame`), None when
    not measured; then REPORT_DEFAULTS. `to_dict` gives the JSON object, its keys in the
    contract's order, an optional key left out when it was not measured.
    """
    measured, optional = [], []
    for f in report_contract.top_fields():
        if f.path in REPORT_DEFAULTS:
            continue
        if f.optional:
            optional.append((f.path, report_contract.value_type(f), field(default=None)))
        else:
            measured.append((f.path, report_contract.value_type(f)))
    defaults = [(key, type(value), field(default=value))
                for key, value in REPORT_DEFAULTS.items()]
    unmeasured = {f.path for f in report_contract.top_fields() if f.optional and not f.nullable}

    def to_dict(self) -> dict:
        d = asdict(self)
        return {key: d[key] for key in report_contract.keys(optional=True)
                if not (key in unmeasured and d[key] is None)}

    report = make_dataclass("BenchReport", measured + optional + defaults,
                            namespace={"to_dict": to_dict})
    report.__module__ = __name__
    report.__doc__ = ("One `qrun bench` run: one attribute per top-level key of the report "
                      "contract (see report_type).")
    return report


BenchReport = report_type()


def utc_now() -> str:
    """The current time as UTC ISO-8601 with a Z, to the second."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def latency_stats(timings_us) -> dict:
    """count, min, median, mean, std (population), p90, p99, max of steady-state times in µs."""
    t = np.asarray(timings_us, dtype=np.float64)
    if t.size == 0:
        raise UserError("no timed runs: --runs must be at least 1")
    p90, p99 = np.percentile(t, [90, 99])
    return {"count": int(t.size), "min": float(t.min()), "median": float(np.median(t)),
            "mean": float(t.mean()), "std": float(t.std()), "p90": float(p90),
            "p99": float(p99), "max": float(t.max())}


def fill_inputs(interpreter, seed: int = INPUT_SEED) -> None:
    """Set every input to reproducible random values of its dtype (as benchmark_model does;
    qrun.model.inputs.random_array, drawn in input order from one Generator of `seed`)."""
    rng = np.random.default_rng(seed)
    for details in interpreter.get_input_details():
        interpreter.set_tensor(details["index"],
                               random_array(details["shape"], details["dtype"], rng))


def check_settings(runs: int, warmup: int, threads: Optional[int],
                   image: Optional[Path] = None) -> None:
    """Fail early, before any model loads, on settings that cannot be run."""
    if image is not None and not Path(image).is_file():
        raise UserError(f"--image {image}: no such file; give a JPEG, PNG or BMP image")
    if runs < 1:
        raise UserError(f"--runs must be at least 1, got {runs}")
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}")
    runtime.check_threads(threads)


def timed_invokes(interpreter, runs: int, model_path: Path) -> list:
    """Invoke `runs` times; return each invoke's time in µs, nothing else timed."""
    invoke = interpreter.invoke
    clock = time.perf_counter_ns
    timings = []
    append = timings.append
    try:
        for _ in range(runs):
            start = clock()
            invoke()
            append((clock() - start) / 1e3)
    except (RuntimeError, ValueError) as exc:
        raise UserError(runtime.runtime_error_message(model_path, str(exc))) from None
    return timings


def task_of(dep: deployment.Deployment) -> Optional[str]:
    """The task kind the deployment's manifest gives its model; None for a bare file."""
    return dep.manifest.task.kind if dep.manifest is not None else None


def model_facts(path: Path, variant: str, interpreter, task: Optional[str]) -> dict:
    """The report's `model` object: the file, its variant, task and input/output counts."""
    from qrun.model.manifest import sha256_file

    return {"path": str(path.resolve()), "sha256": sha256_file(path),
            "size": path.stat().st_size, "variant": variant, "task": task,
            "input_count": len(interpreter.get_input_details()),
            "output_count": len(interpreter.get_output_details())}


def bench_choice(choice: deployment.Choice, runs: int = 100, warmup: int = 10,
                 threads: Optional[int] = None,
                 progress: Callable[[str], None] = lambda _: None,
                 task: Optional[str] = None, image: Optional[Path] = None,
                 dep: Optional[deployment.Deployment] = None,
                 video: Optional[Path] = None, video_frames: Optional[int] = None) -> BenchReport:
    """Benchmark the model `choice` names on its device.

    Args:
      choice: from qrun.model.deployment.choose.
      runs: timed steady-state invokes (at least 1).
      warmup: untimed invokes after the first one.
      threads: CPU threads; the runtime's default when None.
      progress: called with one-line status messages.
      task: the task kind to record (`task_of`); None when nothing says.
      image: time whole frames of this image too (`frame_report`); needs `dep`.
      dep: the deployment `choice` came from (its task, preprocessing and labels).
      video, video_frames: run this video's frames (at most video_frames) through the
        pipeline too (qrun.stream.bench); needs `dep`.
    Returns:
      A BenchReport.
    """
    check_settings(runs, warmup, threads, image)
    progress(f"loading {choice.path} on {choice.used}")
    loaded = deployment.load(choice, threads)
    interpreter = loaded.interpreter
    frames = None
    if image is not None:  # set up and decoded before timing: a bad image fails at once
        frames = decoded_frame(loaded_as_opened(dep, choice, loaded), Path(image))
    fill_inputs(interpreter)
    first_ms = timed_invokes(interpreter, 1, choice.path)[0] / 1e3
    warm = timed_invokes(interpreter, warmup, choice.path) if warmup else []
    progress(f"timing {runs} runs ({loaded.variant} on {choice.used})")
    timings = timed_invokes(interpreter, runs, choice.path)
    frame = None
    if frames is not None:
        progress(f"timing {runs} frames of {Path(image).name} ({task or 'classify'})")
        frame = frame_report(frames, runs, warmup)
    stream = None
    if video is not None:
        from qrun.stream.bench import stream_report

        progress(f"running the frames of {Path(video).name} through the pipeline")
        stream = stream_report(loaded_as_opened(dep, choice, loaded), Path(video), video_frames)
    info = runtime.runtime_info()
    path = Path(choice.path)
    return BenchReport(
        timestamp=utc_now(),
        model=model_facts(path, loaded.variant, interpreter, task),
        runtime={"name": info.name, "version": info.version},
        device={"requested": choice.requested, "used": choice.used, "reason": choice.reason},
        settings={"runs": runs, "warmup": warmup, "threads": threads,
                  "input": f"random, seed {INPUT_SEED}"},
        init_ms=loaded.init_ms,
        first_inference_ms=first_ms,
        warmup_mean_ms=float(np.mean(warm) / 1e3) if warm else 0.0,
        latency_us=latency_stats(timings),
        timings_us=timings,
        peak_rss_kb=hostinfo.peak_rss_kb(),
        host=hostinfo.host_facts(),
        frame=frame,
        stream=stream,
    )


def frame_steps(opened):
    """The task's steps for one decoded image (see qrun.tasks.pipeline), with the commands'
    defaults; a bare model file is taken for a classifier, as qrun classify takes it."""
    from qrun.model.manifest import CLASSIFY, DETECT, POSE, SEGMENT

    kind = opened.task.kind if opened.task is not None else CLASSIFY
    count = len(opened.interpreter.get_input_details())
    if count != 1:
        raise UserError(f"{Path(opened.choice.path).name} has {count} inputs; --image feeds "
                        "one image: drop --image to time invoke() alone")
    if kind == DETECT:
        from qrun.tasks.detect import detector

        return detector(opened)
    if kind == SEGMENT:
        from qrun.tasks.segment import segmenter

        return segmenter(opened)
    if kind == POSE:
        from qrun.tasks.pose import pose_finder

        return pose_finder(opened)
    if kind == CLASSIFY and opened.task is None:
        try:
            return classifier(opened)
        except UserError as exc:
            raise UserError(f"{Path(opened.choice.path).name} has no manifest, so --image "
                            f"times it as a classifier, but {exc}; import it with qdeploy "
                            "import (which records its task) and bench the deployment") \
                from None
    if kind == CLASSIFY:
        return classifier(opened)
    raise UserError(f"this model's task is {kind}: --image times the frames of classify, "
                    "detect, segment and pose models; drop --image to time invoke() alone")


@dataclass(frozen=True)
class Classifier:
    """What qrun classify does to one decoded image: resize (LANCZOS) and quantize it as
    qrun.model.preprocess does (`preprocess`), the top-k classes (`postprocess`)."""

    position: int  # of the scores output
    pre: object  # qrun.model.preprocess.Preprocess
    spec: object  # the input's TensorSpec
    color: str
    names: dict
    top_k: int = 3
    draft_size: Optional[tuple] = None

    def preprocess(self, picture, size: tuple) -> tuple:
        from PIL import Image

        from qrun.model import preprocess

        height, width, channels = preprocess.image_geometry(self.spec.shape)
        pixels = np.asarray(picture.resize((width, height), Image.LANCZOS), dtype=np.uint8)
        pixels = preprocess.fit_channels(pixels, channels)
        data = preprocess.to_input(pixels, self.pre, self.spec.dtype, self.spec.scale,
                                   self.spec.zero_point)
        return data[None, ...], None

    def postprocess(self, interpreter, _) -> list:
        from qrun.tasks import adapters

        return adapters.get_classes(interpreter, self.top_k, float("-inf"), self.names,
                                    self.position)


def classifier(opened) -> Classifier:
    """Set qrun classify's steps up for an opened model (its scores output checked)."""
    from qrun.tasks import adapters, pipeline
    from qrun.tasks.classify import scores_output

    position = scores_output(opened.dep)
    adapters.check_scores_shape(adapters.output_details(opened.interpreter, position)["shape"])
    spec = pipeline.input_spec(opened.interpreter)
    pre = deployment.preprocess_of(opened.dep)
    names, _ = pipeline.read_labels(opened, None, None)
    return Classifier(position, pre, spec, pipeline.image_color(spec, pre), names)


@dataclass
class DecodedFrame:
    """An image decoded once for a model's task steps, ready to be run as many frames."""

    opened: object  # qrun.tasks.pipeline.Opened
    steps: object  # frame_steps
    image: Path
    picture: object  # the decoded PIL image
    size: tuple  # the original's (w, h)
    decode_ms: float


def loaded_as_opened(dep: deployment.Deployment, choice: deployment.Choice,
                     loaded: deployment.Loaded):
    """The loaded model as qrun.tasks.pipeline opens it for the task commands."""
    from qrun.tasks import pipeline

    return pipeline.Opened(dep, choice, loaded,
                           dep.manifest.task if dep.manifest is not None else None)


def decoded_frame(opened, image: Path) -> DecodedFrame:
    """Set the task's steps up and decode `image` once, as the task's command does."""
    from qrun.tasks import pipeline

    steps = frame_steps(opened)
    start = time.perf_counter()
    picture, size = pipeline.read_image(image, steps.color, steps.draft_size)
    return DecodedFrame(opened, steps, image, picture, size,
                        (time.perf_counter() - start) * 1e3)


def frame_report(frame: DecodedFrame, runs: int, warmup: int) -> dict:
    """The report's `frame`: `warmup` untimed and `runs` timed frames of the decoded image,
    each stage's statistics in µs (total: their sum, frame by frame)."""
    from qrun.tasks import pipeline

    run = (frame.opened, frame.steps, frame.picture, frame.size)
    pipeline.frame_timings(*run, warmup)
    times = pipeline.frame_timings(*run, runs)
    return {"image": str(frame.image.resolve()), "width": frame.size[0],
            "height": frame.size[1], "decode_ms": frame.decode_ms, "runs": runs,
            "warmup": warmup,
            **{f"{stage}_us": latency_stats(times[stage]) for stage in pipeline.FRAME_STAGES}}


def bench(model: Optional[Path] = None, runs: int = 100, warmup: int = 10,
          threads: Optional[int] = None, device: str = "auto", tpu: str = "",
          progress: Callable[[str], None] = lambda _: None,
          image: Optional[Path] = None, video: Optional[Path] = None,
          video_frames: Optional[int] = None) -> BenchReport:
    """Benchmark the model `--model` names (see qrun.model.deployment) on the device `--device`
    picks; with `image`, whole frames of its task too."""
    check_settings(runs, warmup, threads, image)
    dep = deployment.resolve(model)
    choice = deployment.choose(dep, device, tpu)
    if choice.fell_back:
        progress(f"note: {choice.reason}")
    return bench_choice(choice, runs, warmup, threads, progress, task_of(dep), image, dep,
                        video, video_frames)


def summary(report: dict) -> str:
    """A few human-readable lines for a report (what `qrun bench` prints without --json)."""
    lat = report["latency_us"]
    dev = report["device"]
    m = report["model"]
    return "\n".join([
        f"model:   {m['path']} ({m['variant']}, {m['size']} bytes)",
        (f"task:    {m['task'] or 'not recorded (a bare model file)'}, "
         f"{plural(m['input_count'], 'input')}, {plural(m['output_count'], 'output')}"),
        f"device:  {dev['used']} (asked {dev['requested']}: {dev['reason']})",
        f"runtime: {report['runtime']['name']} {report['runtime']['version']}",
        f"init {report['init_ms']:.1f} ms, first inference {report['first_inference_ms']:.2f} ms, "
        f"warm-up mean {report['warmup_mean_ms']:.2f} ms",
        f"steady state ({lat['count']} runs, µs): min {lat['min']:.1f}  median "
        f"{lat['median']:.1f}  mean {lat['mean']:.1f}  std {lat['std']:.1f}  p90 {lat['p90']:.1f}  "
        f"p99 {lat['p99']:.1f}  max {lat['max']:.1f}",
        f"peak RSS {report['peak_rss_kb']} KiB",
        *frame_lines(report.get("frame")),
        *stream_lines(report.get("stream")),
    ])


def stream_lines(stream: Optional[dict]) -> list:
    from qrun.stream.bench import stream_lines as lines

    return lines(stream)


def frame_lines(frame: Optional[dict]) -> list:
    """What a frame costs, stage by stage, for `summary` (nothing without --image)."""
    if not frame:
        return []
    total = frame["total_us"]["median"]
    stages = "  ".join(f"{stage} {frame[f'{stage}_us']['median']:.1f}/"
                       f"{frame[f'{stage}_us']['p99']:.1f}"
                       for stage in ("preprocess", "invoke", "postprocess"))
    return [f"frames of {Path(frame['image']).name} ({frame['width']}x{frame['height']}, "
            f"decoded once in {frame['decode_ms']:.1f} ms; {frame['runs']} runs, µs median/"
            f"p99): {stages}",
            f"frame total: median {total:.1f}  p99 {frame['total_us']['p99']:.1f}  "
            f"= {1e6 / total:.1f} frames/s"]


def plural(count: int, noun: str) -> str:
    """`1 input`, `2 inputs`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def stderr_progress(message: str) -> None:
    """Print a progress line on stderr (stdout stays for the report)."""
    print(f"qrun bench: {message}", file=sys.stderr, flush=True)


def compare_choices(dep: deployment.Deployment, tpu: str = "",
                    probe: Optional[Callable] = None) -> tuple[list, list]:
    """The variants to compare (float, int8 on the CPU; edgetpu if the delegate loads), and the skipped.

    Returns:
      (choices, skipped), skipped being [{"variant": ..., "reason": ...}].
    """
    found = {}
    if dep.manifest is not None and dep.root is not None:
        for role in VARIANT_ORDER:
            path = dep.artifact(role)
            if path is not None:
                found[role] = path
    if dep.model is not None and dep.model not in found.values():
        role = dep.role_of(dep.model) or deployment.variant_hint(dep, dep.model) or "model"
        found.setdefault(role, dep.model)
    if EDGETPU in found and INT8 not in found:
        twin = deployment.cpu_model(dep)
        if twin is not None and twin != found.get(FLOAT):
            found[INT8] = twin
    choices, skipped = [], []
    for role in sorted(found, key=lambda r: VARIANT_ORDER.index(r) if r in VARIANT_ORDER else -1):
        path = found[role]
        variant = role if role in VARIANT_ORDER else None
        if role != EDGETPU:
            choices.append(deployment.Choice(path, variant, "cpu", "cpu", "--compare: CPU variant"))
            continue
        if probe is None:
            from qrun.model.delegate_probe import probe_delegate as probe
        result = probe(runtime.edgetpu_library(), runtime.check_device(tpu), path)
        if result.ok:
            choices.append(deployment.Choice(path, EDGETPU, "edgetpu", "edgetpu",
                                             result.reason, tpu=tpu))
        else:
            skipped.append({"variant": EDGETPU, "path": str(path), "reason": result.reason})
    return choices, skipped


def bench_variants(model: Optional[Path] = None, runs: int = 100, warmup: int = 10,
                   threads: Optional[int] = None, tpu: str = "",
                   progress: Callable[[str], None] = lambda _: None,
                   image: Optional[Path] = None, video: Optional[Path] = None,
                   video_frames: Optional[int] = None) -> dict:
    """`qrun bench --compare`: one report per variant of the deployment, same settings.

    Returns:
      {"schema_version": 1, "kind": "qrun-bench-compare", "reports": [...], "skipped": [...]}.
    """
    check_settings(runs, warmup, threads, image)
    dep = deployment.resolve(model)
    choices, skipped = compare_choices(dep, tpu)
    for s in skipped:
        progress(f"note: skipping {s['variant']}: {s['reason']}")
    if not choices:
        raise UserError(f"{model or deployment.qdeploy_home() / deployment.CURRENT} holds no "
                        "model that runs here; push a deployment with an int8 model")
    reports = [bench_choice(c, runs, warmup, threads, progress, task_of(dep), image,
                            dep, video, video_frames).to_dict() for c in choices]
    return {"schema_version": SCHEMA_VERSION, "kind": COMPARE_KIND, "timestamp": utc_now(),
            "qrun_version": qrun.__version__, "reports": reports, "skipped": skipped}
