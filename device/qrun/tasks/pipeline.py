"""The stages `qrun detect`, `qrun segment` and `qrun pose` share, each one timed.

load (resolve the deployment, refuse another task, pick the device, build the
interpreter), preprocess (decode the image, resize, quantize through a 256-entry lookup
table), invoke, postprocess (the task's decoder, in qrun.tasks.detect / qrun.tasks.segment /
qrun.tasks.pose). A `Stopwatch` records each stage in ms; its `timing_ms` is what the commands'
JSON reports. Option checks that need no model (threshold, `--out` directory) come first.

Each task sets itself up once per model as a small object with `color` and `draft_size`
(how to decode the image), `preprocess(picture, size)` -> (input data, what postprocess
needs) and `postprocess(interpreter, that)` -> the task's result (qrun.tasks.detect.Detector,
qrun.tasks.segment.Segmenter, qrun.tasks.pose.PoseFinder). The commands run it once; `qrun bench
--image` decodes the image once and times `frame_timings` of many frames.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from qrun.model import deployment, preprocess, runtime
from qrun.errors import UserError
from qrun.model.layout import MANIFEST_NAME
from qrun.model.tensors import TensorSpec
from qrun.tasks import roles

STAGES = ("load", "preprocess", "invoke", "postprocess")
FRAME_STAGES = ("preprocess", "invoke", "postprocess", "total")  # what a frame costs
COMMANDS = {"classify": "qrun classify", "detect": "qrun detect", "segment": "qrun segment",
            "pose": "qrun pose"}


@dataclass
class Stopwatch:
    """Milliseconds spent in each stage."""

    ms: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3

    def timing_ms(self) -> dict:
        """{load, preprocess, invoke, postprocess, total} in ms."""
        stages = {name: round(self.ms.get(name, 0.0), 3) for name in STAGES}
        return {**stages, "total": round(sum(self.ms.get(n, 0.0) for n in STAGES), 3)}


@dataclass
class Opened:
    """A model ready to run for one task: the deployment, the device chosen, the
    interpreter, and the manifest's task (None for a bare model file)."""

    dep: deployment.Deployment
    choice: deployment.Choice
    loaded: deployment.Loaded
    task: object  # qrun.model.manifest.Task or None

    @property
    def interpreter(self):
        return self.loaded.interpreter

    def device(self) -> dict:
        c = self.choice
        return {"requested": c.requested, "used": c.used, "reason": c.reason,
                "fell_back": c.fell_back}

    def model(self) -> dict:
        info = runtime.runtime_info()
        return {"path": str(self.choice.path), "variant": self.loaded.variant,
                "task": self.task.kind if self.task is not None else None,
                "decoder": self.task.decoder if self.task is not None else None,
                "runtime": {"name": info.name, "version": info.version}}


def timed_frame(opened: Opened, steps, image: Path, watch: "Stopwatch",
                draft_size: Optional[tuple] = None) -> tuple:
    """One image through a task's steps, each stage timed on `watch`: read and preprocess,
    invoke, postprocess. Returns (the decoded picture, its (w, h), what postprocess gave)."""
    from PIL import Image  # noqa: F401 - before the clock: an import is not a frame's cost

    with watch.stage("preprocess"):
        picture, size = read_image(image, steps.color, draft_size)
        data, context = steps.preprocess(picture, size)
    with watch.stage("invoke"):
        invoke(opened, data)
    with watch.stage("postprocess"):
        found = steps.postprocess(opened.interpreter, context)
    return picture, size, found


def frame_timings(opened: Opened, steps, picture, size: tuple, runs: int) -> dict:
    """Run `runs` frames of a decoded image through a task's steps (preprocess, invoke,
    postprocess), each stage timed on its own.

    Returns:
      {"preprocess", "invoke", "postprocess", "total"}: a list of µs per frame each.
    """
    clock = time.perf_counter_ns
    times = {name: [] for name in FRAME_STAGES}
    for _ in range(runs):
        start = clock()
        data, context = steps.preprocess(picture, size)
        prepared = clock()
        invoke(opened, data)
        invoked = clock()
        steps.postprocess(opened.interpreter, context)
        done = clock()
        times["preprocess"].append((prepared - start) / 1e3)
        times["invoke"].append((invoked - prepared) / 1e3)
        times["postprocess"].append((done - invoked) / 1e3)
        times["total"].append((done - start) / 1e3)
    return times


def check_fraction(value: float, flag: str) -> float:
    """Refuse a threshold outside 0..1."""
    if not (0.0 <= value <= 1.0):
        raise UserError(f"{flag} must be between 0 and 1, got {value}")
    return value


def check_out(path: Optional[Path], flag: str) -> Optional[Path]:
    """Refuse, before any work, an `--out` path whose directory is missing or that is a
    directory itself."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name, e.g. "
                        f"{path / 'annotated.png'}")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: directory {path.parent} does not exist; create it "
                        "or give another path")
    return path


def check_task(dep: deployment.Deployment, kind: str) -> None:
    """Refuse a deployment whose manifest gives its model another task than `kind`,
    naming the command that runs it."""
    if dep.manifest is None:
        return
    have = dep.manifest.task.kind
    if have == kind:
        return
    command = COMMANDS.get(have)
    fix = (f"run it with {command}" if command
           else "qrun bench and qrun verify run it")
    raise UserError(f"this model's task is {have} ({MANIFEST_NAME}), not {kind}; {fix}")


def open_model(model: Optional[Path], kind: str, device: str, tpu: str,
               threads: Optional[int], watch: Stopwatch) -> Opened:
    """Resolve `--model`, refuse another task, choose the device and build the interpreter
    (timed as "load"); the model must have one image input."""
    runtime.check_threads(threads)
    with watch.stage("load"):
        dep = deployment.resolve(model)
        check_task(dep, kind)
        choice = deployment.choose(dep, device, tpu)
        loaded = deployment.load(choice, threads)
    count = len(loaded.interpreter.get_input_details())
    if count != 1:
        raise UserError(f"{Path(choice.path).name} has {count} inputs; qrun {kind} feeds one "
                        "image (qrun bench and qrun verify feed every input)")
    task = dep.manifest.task if dep.manifest is not None else None
    return Opened(dep, choice, loaded, task)


def input_spec(interpreter) -> TensorSpec:
    return TensorSpec.from_details(interpreter.get_input_details()[0])


def read_image(path: Path, color: str, draft_size: Optional[tuple] = None) -> tuple:
    """Decode an image file as a PIL image in `color` ("RGB" or "L").

    Args:
      path: a JPEG, PNG or BMP file.
      color: the PIL mode to convert to.
      draft_size: (w, h) of the box the image will be fitted into keeping its aspect
        ratio (a letterbox): let a JPEG decode at a reduced size (its `draft` mode: 1/2,
        1/4, 1/8) still no smaller than the fitted image, which makes both the decode and
        every later resize of a camera frame cheaper.
    Returns:
      (image, original (w, h)); a file that is not an image is a UserError.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            size = img.size
            if draft_size is not None and img.format == "JPEG":
                img.draft(color, fitted_size(size, draft_size))
            img = preprocess.to_8bit(img, path).convert(color)
            img.load()
    except Image.DecompressionBombError:
        raise UserError(f"{path} is too large to decode safely; downscale the image "
                        "first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path} is not a readable image ({exc.__class__.__name__}); "
                        "give a JPEG, PNG or BMP file") from None
    return img, size


def fitted_size(size: tuple, box: tuple) -> tuple:
    """(w, h) of an image of `size` scaled to fit `box` keeping its aspect ratio, rounded
    up (so a JPEG drafted to it is never smaller than the letterbox resizes it to)."""
    import math

    scale = min(box[0] / size[0], box[1] / size[1])
    return math.ceil(size[0] * scale), math.ceil(size[1] * scale)


def image_color(spec: TensorSpec, pre: preprocess.Preprocess) -> str:
    return preprocess.color_for(spec.shape, pre)


def lookup_table(pre: preprocess.Preprocess, spec: TensorSpec) -> np.ndarray:
    """What each uint8 pixel value becomes in the input tensor: [256] (or [256, C] when
    mean/std differ per channel), so quantizing a frame is one `numpy.take` (see
    qrun.model.preprocess.to_input, which it tabulates)."""
    values = np.arange(256, dtype=np.uint8)
    channels = max(np.asarray(pre.mean).size, np.asarray(pre.std).size)
    if channels > 1:
        values = np.repeat(values[:, None], channels, axis=1)
    return preprocess.to_input(values, pre, spec.dtype, spec.scale, spec.zero_point)


def stretched(picture, spec: TensorSpec, table: np.ndarray) -> np.ndarray:
    """A decoded image resized (LANCZOS) to the input, ignoring its aspect ratio as
    DeepLab's and MoveNet's examples do, then quantized through `table`."""
    from PIL import Image

    resized = picture.resize((spec.shape[2], spec.shape[1]), Image.LANCZOS)
    return to_input(np.asarray(resized, dtype=np.uint8), table, spec)


def to_input(pixels: np.ndarray, table: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """uint8 pixels [H, W(, C)] -> a batch of one of the input's dtype, through `table`."""
    _, _, channels = preprocess.image_geometry(spec.shape)
    pixels = preprocess.fit_channels(pixels, channels)
    if table.ndim == 1:
        data = table.take(pixels)
    else:
        data = table[pixels, np.arange(table.shape[1])]
    return data[None, ...]


def invoke(opened: Opened, data: np.ndarray) -> None:
    """Feed `data` to the input and run the model; a runtime failure is a UserError."""
    interpreter = opened.interpreter
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], data)
    try:
        interpreter.invoke()
    except (RuntimeError, ValueError) as exc:
        raise UserError(runtime.runtime_error_message(Path(opened.choice.path), str(exc))) \
            from None


def output(interpreter, position: int) -> tuple:
    """(raw array, TensorSpec) of the output at `position`."""
    details = interpreter.get_output_details()[position]
    return interpreter.get_tensor(details["index"]), TensorSpec.from_details(details)


def output_shapes(interpreter) -> list:
    return [[int(n) for n in d["shape"]] for d in interpreter.get_output_details()]


def model_view(interpreter) -> roles.ModelView:
    """What the interpreter shows of its model, for qrun.tasks.roles: shapes, op names,
    the SSD op's outputs as output positions, the signature's output names."""
    positions = {int(d["index"]): i for i, d in enumerate(interpreter.get_output_details())}
    ops = ops_of(interpreter)
    postprocess = next((op for op in ops if op.get("op_name") == roles.POSTPROCESS), None)
    return roles.ModelView(
        inputs=[[int(n) for n in d["shape"]] for d in interpreter.get_input_details()],
        outputs=output_shapes(interpreter),
        op_names=frozenset(op.get("op_name") for op in ops),
        postprocess_outputs=None if postprocess is None else tuple(
            positions.get(int(t)) for t in postprocess["outputs"]),
        signature_outputs=signature_outputs(interpreter))


def ops_of(interpreter) -> list:
    """The interpreter's op details; empty where the runtime does not show them."""
    try:
        return list(interpreter._get_ops_details())
    except (AttributeError, RuntimeError, ValueError):
        return []


def signature_outputs(interpreter) -> dict:
    """Signature output name -> output position (empty when the model has no signature,
    as `_edgetpu` models have none)."""
    try:
        signatures = interpreter._get_full_signature_list() or {}
    except (AttributeError, RuntimeError, ValueError):
        return {}
    if len(signatures) != 1:
        return {}
    positions = {int(d["index"]): i for i, d in enumerate(interpreter.get_output_details())}
    outputs = next(iter(signatures.values())).get("outputs", {})
    return {name: positions[index] for name, index in outputs.items() if index in positions}


def read_labels(opened: Opened, given: Optional[Path], classes: Optional[int]) -> tuple:
    """(id -> label, where they came from or None): `--labels`, else the deployment's, else
    what a bare model file carries (Ultralytics' names, a packed label file); checked
    against `classes` when the model says how many it has, a file that does not fit mapped
    by the model's own names (qrun.model.labels.for_model)."""
    from qrun.model.labels import for_model

    deployed = deployment.labels_path(opened.dep, None)
    return for_model(given, deployed, bare_file(opened), classes)


def bare_file(opened: Opened) -> Optional[Path]:
    """The model file run without a manifest (the one named, else the twin that ran)."""
    if opened.dep.manifest is not None:
        return None
    return opened.dep.model or Path(opened.choice.path)


def save_png(image, path: Path) -> None:
    """Write a PIL image as PNG atomically (a temp name, then a rename)."""
    from qrun import atomic

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    try:
        atomic.write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc.__class__.__name__}); "
                        "give a writable path") from None
