"""`qrun` command line: classify, detect, segment, pose, bench, verify, evaluate, info.

Parses options and prints; the work is elsewhere.

Heavy modules (numpy, PIL, the TFLite runtime) are imported inside the commands,
so `qrun --help` stays quick and `qrun classify` pays only for what it uses.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from qrun import __version__
from qrun.errors import run
from qrun.model.layout import CURRENT, DEFAULT_HOME, HOME_ENV, MANIFEST_NAME

CURRENT_HELP = f"${HOME_ENV}/{CURRENT} ({DEFAULT_HOME}/{CURRENT})"
app = typer.Typer(name="qrun", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Run quantized and Edge TPU models on this device: classify an image, "
                       "detect objects, segment it, find a pose; benchmark a model, measure "
                       "its accuracy on labelled images, show the runtime and Edge TPUs. Without --model, "
                       f"qrun uses the current deployment, {CURRENT_HELP}.")

MODEL_HELP = (f"Model file (.tflite) or deployment directory with {MANIFEST_NAME}. "
              f"Default: {CURRENT_HELP}.")
DEVICE_HELP = ("auto: the Edge TPU when its delegate loads, else the CPU int8 twin (says why); "
               "edgetpu: the Edge TPU or an error; cpu: the CPU model.")
TPU_HELP = "Which Edge TPU: usb, usb:N, pci, pci:N or :N. Default: the first found."
THREADS_HELP = "CPU threads for the interpreter. Default: the runtime's choice."


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qrun {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: bool = typer.Option(
        False, "--verbose",
        help="Let the TFLite runtime's own log lines through (e.g. 'INFO: Created TensorFlow "
             "Lite XNNPACK delegate for CPU.'), which qrun drops by default. Give it before "
             "the command: qrun --verbose bench."),
) -> None:
    """qrun: classify, detect, segment, pose and benchmark TFLite models on the Edge TPU or
    the CPU."""
    from qrun.model import runtime  # light: the runtime itself is imported when a model loads

    runtime.show_runtime_log(verbose)


SOURCE_HELP = ("An image (JPEG, PNG or BMP), a video file, a folder of images, a camera "
               "(/dev/videoN, an index; picam: the Pi camera through picamera2) or a stream "
               "(rtsp://, http://). Anything but one image runs pipelined: capture, "
               "preprocess, invoke, postprocess and output each on its own thread; a summary "
               "line (frames, fps, each stage's median/p99, dropped) ends the run.")
# Options every task command (and bench, verify, evaluate) takes, defined once.
MODEL_OPTION = typer.Option(None, "--model", "-m", help=MODEL_HELP)
DEVICE_OPTION = typer.Option("auto", "--device", "-d", help=DEVICE_HELP)
TPU_OPTION = typer.Option("", "--tpu", help=TPU_HELP)
THREADS_OPTION = typer.Option(None, "--threads", help=THREADS_HELP)
STREAM_JSON_OPTION = typer.Option(False, "--json", help="Print one JSON object instead "
                                                        "(a stream: one JSON line per frame).")
FRAMES_OPTION = typer.Option(None, "--frames", min=1, help="Stop after N frames.")
LOOP_OPTION = typer.Option(False, "--loop", help="Play a file or folder again and again "
                                                 "(until --frames or Ctrl-C).")
SAVE_OPTION = typer.Option(
    None, "--save", help="Write the annotated frames: a video file for a video, camera or "
                         "stream (.mp4, .mkv, .mov, .avi), a directory of PNGs for a folder, a "
                         "PNG for an image. Its directory must exist (checked first).")
SERVE_OPTION = typer.Option(
    None, "--serve", metavar="HOST:PORT",
    help="Show the annotated frames live in a browser at http://HOST:PORT/ (MJPEG at "
         "/stream, fps and stage times at /stats). HOST defaults to 127.0.0.1 (this "
         "machine only); 0.0.0.0:8080 serves every interface.")


def _stream(kind: str, source: str, frames, loop, save, serve, as_json, model, device, tpu,
            threads, **params) -> bool:
    """Run SOURCE pipelined when it is more than one still image; False: it is one."""
    from qrun.stream import run as stream

    if not stream.wants_stream(source, frames, loop, save, serve):
        return False
    opts = stream.StreamOptions(source, frames, loop, save, as_json, serve)
    stream.run_task(kind, opts, model, device, tpu, threads, **params)
    return True


@app.command()
def classify(
    source: str = typer.Argument(..., metavar="SOURCE", help=SOURCE_HELP),
    model: Optional[Path] = MODEL_OPTION,
    labels: Optional[Path] = typer.Option(
        None, "--labels", "-l",
        help="Labels file: 'id label' / 'id: label' lines, or one label per line. "
             "Default: the deployment's; for a bare model file, the labels it carries."),
    top_k: int = typer.Option(3, "--top-k", "-k", help="How many classes to print."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", "-t",
        help="Lowest score to print. Default: none, the top-k classes whatever their scores "
             "(a model without softmax can score every class below 0)."),
    count: int = typer.Option(1, "--count", "-c",
                              help="Times to run the model; the first includes model load."),
    device: str = DEVICE_OPTION,
    tpu: str = TPU_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    as_json: bool = STREAM_JSON_OPTION,
    frames: Optional[int] = FRAMES_OPTION,
    loop: bool = LOOP_OPTION,
    save: Optional[Path] = SAVE_OPTION,
    serve: Optional[str] = SERVE_OPTION,
) -> None:
    """Classify SOURCE: print 'label: score' lines, best first, and the time of each invoke;
    for a video, camera, stream or folder, one line (or --json line) per frame.

    Reads the output the deployment's manifest names as scores (a bare model file: output
    0); a deployment whose task is not classify is refused, naming the command to use.
    """
    if _stream("classify", source, frames, loop, save, serve, as_json, model, device, tpu,
               threads, labels=labels, top_k=top_k):
        return
    from qrun.tasks.classify import classify as run_classify

    image = Path(source)
    result = run_classify(image, model, labels, top_k, threshold, count, device, tpu, threads)
    if result.fell_back:
        typer.echo(f"note: {result.device['reason']}", err=True)
    if as_json:
        import json

        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    for i, ms in enumerate(result.timings_ms, 1):
        flag = " (first: includes loading the model)" if i == 1 else ""
        typer.echo(f"invoke {i}: {ms:.2f} ms{flag}")
    for c in result.classes:
        typer.echo(f"{c.label or c.id}: {c.score:.5f}")


THRESHOLD_HELP = "Lowest score kept, 0 to 1."
OUT_CHECK = "Its directory must exist (checked before the model runs); written atomically."


def _timing_line(timing: dict) -> str:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timing.items() if k != "total")
    return f"time: {timing['total']:.1f} ms ({stages})"


def _print_json(document: dict) -> None:
    import json

    typer.echo(json.dumps(document, indent=2))


@app.command()
def detect(
    source: str = typer.Argument(..., metavar="SOURCE", help=SOURCE_HELP),
    model: Optional[Path] = MODEL_OPTION,
    labels: Optional[Path] = typer.Option(
        None, "--labels", "-l", help="Labels file. Default: the deployment's; for a bare model "
                                     "file, the names it carries (Ultralytics' metadata). "
                                     "One that does not fit the scores (a background line, "
                                     "COCO's 90 ids) is mapped by the model's names."),
    threshold: float = typer.Option(0.25, "--threshold", "-t", help=THRESHOLD_HELP),
    iou: float = typer.Option(0.45, "--iou",
                              help="NMS overlap (IoU) above which the lower-scoring of two "
                                   "boxes of one class is dropped (YOLO heads), 0 to 1."),
    max_objects: int = typer.Option(100, "--max", help="Most objects to report."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Write the image with boxes and labels drawn "
                                            "(PNG). " + OUT_CHECK),
    device: str = DEVICE_OPTION,
    tpu: str = TPU_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    as_json: bool = STREAM_JSON_OPTION,
    frames: Optional[int] = FRAMES_OPTION,
    loop: bool = LOOP_OPTION,
    save: Optional[Path] = SAVE_OPTION,
    serve: Optional[str] = SERVE_OPTION,
) -> None:
    """Detect objects in SOURCE (an image, or every frame of a video, camera, stream or
    folder): 'label: score (xmin, ymin, xmax, ymax)' lines, best first,
    boxes in the image's own pixels, and the time of each stage.

    SSD / EfficientDet models (TFLite_Detection_PostProcess) and Ultralytics YOLOv5/v8/v11
    heads (class-aware NMS here); the manifest's task says which output is what.
    """
    if _stream("detect", source, frames, loop, save, serve, as_json, model, device, tpu,
               threads, labels=labels, threshold=threshold, iou=iou, max_objects=max_objects):
        return
    from qrun.tasks.detect import detect as run_detect

    image = Path(source)
    result = run_detect(image, model, labels, threshold, iou, max_objects, out, device, tpu,
                        threads)
    if result.fell_back:
        typer.echo(f"note: {result.device['reason']}", err=True)
    if as_json:
        _print_json(result.to_dict())
        return
    for o in result.objects:
        b = o.bbox
        typer.echo(f"{o.label or o.id}: {o.score:.5f} "
                   f"({b.xmin:.1f}, {b.ymin:.1f}, {b.xmax:.1f}, {b.ymax:.1f})")
    if not result.objects:
        typer.echo(f"no objects scored {threshold} or more")
    typer.echo(_timing_line(result.timing_ms))
    if result.annotated:
        typer.echo(f"annotated image written to {result.annotated}", err=True)


@app.command()
def segment(
    source: str = typer.Argument(..., metavar="SOURCE", help=SOURCE_HELP),
    model: Optional[Path] = MODEL_OPTION,
    labels: Optional[Path] = typer.Option(None, "--labels", "-l",
                                          help="Labels file. Default: the deployment's; "
                                               "for a bare model file, the labels it carries."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Write the mask: a palette PNG at the image's size whose "
                                  "pixel values are the class ids. " + OUT_CHECK),
    overlay: Optional[Path] = typer.Option(
        None, "--overlay", help="Write the photo with the coloured mask blended over it "
                                "(PNG). " + OUT_CHECK),
    colormap: str = typer.Option("pascal", "--colormap",
                                 help="Colours of the mask: pascal or cityscapes."),
    device: str = DEVICE_OPTION,
    tpu: str = TPU_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    as_json: bool = STREAM_JSON_OPTION,
    frames: Optional[int] = FRAMES_OPTION,
    loop: bool = LOOP_OPTION,
    save: Optional[Path] = SAVE_OPTION,
    serve: Optional[str] = SERVE_OPTION,
) -> None:
    """Give every pixel of SOURCE (an image or each frame of a video, camera, stream or
    folder) a class (DeepLab-style models): print the classes found
    with their share of the image, and the time of each stage."""
    if _stream("segment", source, frames, loop, save, serve, as_json, model, device, tpu,
               threads, labels=labels, colormap=colormap):
        return
    from qrun.tasks.segment import segment as run_segment

    image = Path(source)
    result = run_segment(image, model, labels, out, overlay, colormap, device, tpu, threads)
    if result.fell_back:
        typer.echo(f"note: {result.device['reason']}", err=True)
    if as_json:
        _print_json(result.to_dict())
        return
    for c in result.classes:
        typer.echo(f"{c['label'] or c['id']}: {100 * c['fraction']:.1f}% "
                   f"({c['pixels']} pixels)")
    typer.echo(_timing_line(result.timing_ms))
    for what, path in (("mask", result.mask), ("overlay", result.overlay)):
        if path:
            typer.echo(f"{what} written to {path}", err=True)


@app.command()
def pose(
    source: str = typer.Argument(..., metavar="SOURCE", help=SOURCE_HELP),
    model: Optional[Path] = MODEL_OPTION,
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Write the image with the keypoints and skeleton "
                                            "drawn (PNG). " + OUT_CHECK),
    threshold: float = typer.Option(0.3, "--threshold", "-t",
                                    help="Lowest keypoint score printed and drawn, 0 to 1 "
                                         "(--json lists all 17)."),
    device: str = DEVICE_OPTION,
    tpu: str = TPU_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    as_json: bool = STREAM_JSON_OPTION,
    frames: Optional[int] = FRAMES_OPTION,
    loop: bool = LOOP_OPTION,
    save: Optional[Path] = SAVE_OPTION,
    serve: Optional[str] = SERVE_OPTION,
) -> None:
    """Find a person's 17 keypoints in SOURCE (an image or each frame of a video, camera,
    stream or folder; MoveNet): 'name: score (x, y)' lines in the
    image's pixels, and the time of each stage."""
    if _stream("pose", source, frames, loop, save, serve, as_json, model, device, tpu,
               threads, draw_threshold=threshold):
        return
    from qrun.tasks.pose import pose as run_pose

    image = Path(source)
    result = run_pose(image, model, out, threshold, device, tpu, threads)
    if result.fell_back:
        typer.echo(f"note: {result.device['reason']}", err=True)
    if as_json:
        _print_json(result.to_dict())
        return
    shown = [k for k in result.keypoints if k.score >= threshold]
    for k in shown:
        typer.echo(f"{k.name}: {k.score:.3f} ({k.x:.1f}, {k.y:.1f})")
    if not shown:
        typer.echo(f"no keypoint scored {threshold} or more")
    typer.echo(_timing_line(result.timing_ms))
    if result.annotated:
        typer.echo(f"annotated image written to {result.annotated}", err=True)


@app.command()
def bench(
    model: Optional[Path] = MODEL_OPTION,
    runs: int = typer.Option(100, "--runs", "-n", help="Timed steady-state runs."),
    warmup: int = typer.Option(10, "--warmup", "-w",
                               help="Untimed runs after the first inference."),
    threads: Optional[int] = THREADS_OPTION,
    device: Optional[str] = typer.Option(
        None, "--device", "-d",
        help=DEVICE_HELP + " Default: auto. Not with --compare, which runs every variant."),
    tpu: str = TPU_OPTION,
    json_out: Optional[str] = typer.Option(
        None, "--json",
        help="Write the JSON report to this file (atomically), or '-' for stdout."),
    compare: bool = typer.Option(
        False, "--compare",
        help="Benchmark every variant the deployment holds (float, int8, edgetpu when the "
             "delegate loads) with the same settings; the JSON holds one report each."),
    image: Optional[Path] = typer.Option(
        None, "--image", "-i", metavar="IMAGE",
        help="Also time whole frames of the model's task on this image (JPEG, PNG or BMP): "
             "decoded once, then per run preprocess (resize/letterbox, quantize), invoke and "
             "postprocess (top-k, detection decode + NMS, class map, keypoints), as qrun "
             "classify/detect/segment/pose do them; the report's 'frame' gives each stage's "
             "median and p99 and frames per second."),
    video: Optional[Path] = typer.Option(
        None, "--video", metavar="FILE",
        help="Also run this video's frames through the pipeline qrun detect/classify/segment/"
             "pose FILE uses (capture, preprocess, invoke, postprocess, sink on their own "
             "threads); the report's 'stream' gives frames per second, each stage's median "
             "and p99 in ms, dropped frames, and the rate its slowest stage allows."),
    frames: Optional[int] = typer.Option(None, "--frames",
                                         help="--video: at most this many frames."),
) -> None:
    """Measure latency (init, first inference, warm-up, steady state), memory and host facts.

    Every input is fed seeded random values of its dtype; the report records the model's
    task (from its manifest) and how many inputs and outputs it has. With --image, what a
    whole frame costs too, stage by stage.
    """
    from qrun.measure import bench as bench_mod

    from qrun.stream.bench import check_video

    target = _json_target(json_out)  # before benchmarking: a bad path fails in a second
    check_video(video, frames)
    if compare and device is not None:
        from qrun.errors import UserError

        raise UserError(f"--device {device} cannot be used with --compare, which benchmarks "
                        "every variant (float, int8, edgetpu); drop one of them")
    if compare:
        report = bench_mod.bench_variants(model, runs, warmup, threads, tpu,
                                          progress=bench_mod.stderr_progress, image=image,
                                          video=video, video_frames=frames)
        texts = [bench_mod.summary(r) for r in report["reports"]]
    else:
        report = bench_mod.bench(model, runs, warmup, threads, device or "auto", tpu,
                                 progress=bench_mod.stderr_progress, image=image,
                                 video=video, video_frames=frames).to_dict()
        texts = [bench_mod.summary(report)]
    if json_out is None:
        typer.echo("\n\n".join(texts))
        return
    import json

    text = json.dumps(report, indent=2) + "\n"
    if json_out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from qrun import atomic
    from qrun.errors import UserError

    try:
        atomic.write_text(target, text)
    except OSError as exc:
        raise UserError(f"--json {json_out}: cannot write the report "
                        f"({exc.strerror or exc.__class__.__name__}); give a writable "
                        "file path") from None
    typer.echo("\n\n".join(texts))
    typer.echo(f"report written to {target}", err=True)


def _json_target(json_out: Optional[str]) -> Optional[Path]:
    """The file `--json` names (None for no --json or '-'), checked before any work is done."""
    if json_out is None or json_out == "-":
        return None
    from qrun.errors import UserError

    target = Path(json_out)
    try:
        is_dir, parent_is_dir = target.is_dir(), target.parent.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        raise UserError(f"--json {json_out}: {exc.strerror or exc.__class__.__name__}; give "
                        "another path") from None
    if is_dir:
        raise UserError(f"--json {json_out} is a directory; give a file name, e.g. "
                        f"{target / 'bench.json'}")
    if not parent_is_dir:
        raise UserError(f"--json {json_out}: directory {target.parent} does not exist; "
                        "create it or give another path")
    return target


@app.command()
def verify(
    model: Optional[Path] = MODEL_OPTION,
    device: str = typer.Option(
        "auto", "--device", "-d",
        help="auto: the CPU int8 model, and the Edge TPU model when its delegate loads; "
             "cpu: the int8 model only; edgetpu: the Edge TPU model or an error."),
    tpu: str = TPU_OPTION,
    inputs: Optional[Path] = typer.Option(
        None, "--inputs",
        help="Inputs instead of the deployment's reference inputs: a .npy for a "
             "single-input model (uint8 pixels or float model inputs), or a .npz with "
             "input_0, input_1, ... (one raw array per input, in the model's order)."),
    threads: Optional[int] = THREADS_OPTION,
    json_out: Optional[str] = typer.Option(
        None, "--json", help="'-': print the outputs as one JSON object on stdout."),
) -> None:
    """Run the deployment's reference inputs through each variant: top-1 where an output is a
    score vector, else the outputs compared (--json: every output's raw values)."""
    from qrun.measure import verify as verify_mod

    if json_out not in (None, "-"):
        from qrun.errors import UserError

        raise UserError(f"--json takes '-' (stdout), not {json_out!r}")
    document = verify_mod.verify(model, device, tpu, inputs, threads,
                                 progress=verify_mod.stderr_progress)
    if json_out is None:
        typer.echo(verify_mod.summary(document))
        return
    import json

    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


@app.command()
def evaluate(
    data: Path = typer.Argument(..., metavar="DIR", help="Labelled images: COCO "
                                "(annotations.json; images in DIR or DIR/images), YOLO "
                                "(images/ + labels/*.txt, names in data.yaml) or masks "
                                "(images/ + masks/*.png, class ids, 255 ignored)."),
    model: Optional[Path] = MODEL_OPTION,
    against: Optional[str] = typer.Option(None, "--against", help="float: no labels; score "
                                          "int8 and the Edge TPU model against the float "
                                          "model's own outputs."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N images."),
    tpu: str = TPU_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead."),
) -> None:
    """Accuracy of every variant of a detect, segment or pose deployment (the Edge TPU model
    when its delegate loads): COCO mAP50-95 and mAP50, mIoU and pixel accuracy, OKS AP."""
    from qrun.measure import evaluate as evaluate_mod

    document = evaluate_mod.evaluate(model, data, against, tpu, limit,
                                     progress=evaluate_mod.stderr_progress)
    if as_json:
        _print_json(document)
        return
    typer.echo(evaluate_mod.summary(document))


@app.command()
def info(
    model: Optional[Path] = typer.Option(
        None, "--model", "-m",
        help="Model file or deployment directory to describe. Default: the current "
             "deployment, if there is one."),
    tpu: str = TPU_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead."),
) -> None:
    """Show the TFLite runtime, whether libedgetpu loads, Edge TPUs present, every input and
    output of each model (name, position, shape, dtype, quantization) and the task its
    manifest records."""
    import json

    from qrun import info as info_mod

    report = info_mod.info(model, tpu)
    typer.echo(json.dumps(report, indent=2) if as_json else info_mod.format_info(report))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"qrun {__version__}")


def main() -> None:
    run(app)
