"""`qdeploy push --verify`: does the device compute what the host computes?

The device runs the deployment's reference inputs through its models (`qrun verify
--json -`, see qrun.measure.verify); the host runs the same inputs through the same int8
model with the same runtime code (`qrun.model.runtime.make_interpreter`, the manifest's
preprocessing; `host_side` gathers them) and compares, per variant and per output
(`compare_output`): the largest difference of dequantized outputs, counted in that
output's quantization steps (a float output's step is FLOAT_STEP, an integer output
that is not quantized steps by 1), and top-1 agreement where the output is a score
vector (qrun.measure.verify.scored_outputs).

A model whose task qrun can decode (detect, segment, pose: the manifest's task) is judged
in the task's terms, by qrun.measure.agreement: the detections (class, IoU >= 0.5, scores
within 0.1, counts within one), the class maps (pixel agreement) or the keypoints
(distance) of every reference input must agree; the raw differences are still measured
and shown, not judged. arm64 and x86-64 int8 kernels round differently, and a raw
detection head of 705,600 values turns that into a few large single-value differences
while the detections stay the same (Ultralytics' YOLOv8n on a Pi).

A classifier or a raw model fails when any output's largest difference exceeds the
tolerance (`DEFAULT_STEPS` steps), or, for a classifier, when a top-1 class differs on a
sample where the host's top-1 leads the device's by more than the tolerance (a closer flip
is a near-tie: counted, reported, not a failure). Different CPU kernels differ by a few steps
(x86 XNNPACK vs TFLite's reference kernels: up to 5 on Coral's MobileNets; arm64
vs x86: about 8 on the iNat birds model's top score); mismatched preprocessing or
a wrong model moves outputs by tens to hundreds of steps and flips classes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from qrun.model import deployment
from qrun.model import manifest as qmanifest
from qrun.measure import agreement as task_terms
from qrun.measure import reference as qreference
from qrun.measure import verify as device_verify
from qrun.errors import UserError
from qrun.model.preprocess import Preprocess, dequantize
from qrun.tasks import roles
from qdeploy.remote.connection import Link

DEFAULT_STEPS = 16.0  # output quantization steps: 16/256 = 0.0625 of a uint8 softmax's range
FLOAT_STEP = 1.0 / 256  # the "step" of an output that is not quantized
INTEGER_STEP = 1.0  # the step of an integer output that is not quantized (class ids, counts)
KIND = device_verify.KIND


@dataclass
class OutputComparison:
    """One output of one variant, device against host, over the reference inputs."""

    position: int  # in the interpreter's order
    name: str
    step: float  # one quantization step, in output units
    max_abs_diff: float  # largest |device - host| of dequantized values
    max_steps: float  # the same in steps
    worst_sample: int
    samples: int
    scored: bool  # a score vector: top-1 compared
    agree: Optional[int]  # samples whose top-1 is the same; None when not scored
    near_ties: int
    flipped: list  # samples whose top-1 differs (near-ties included)
    ok: bool


# Task verdicts whose figure is a share in 0..1, stored and shown as the top-1 agreement is.
SHARE_METRICS = ("detection_agreement", "pixel_agreement")


@dataclass
class Comparison:
    """One variant on the device against the host's int8 model, on the reference inputs.

    The figures are the variant's: top-1 over the scored outputs (every sample agrees
    when none is scored), the largest difference that of the worst output; `outputs`
    holds each output's.
    """

    variant: str
    device_used: str
    model_sha256: str
    samples: int
    agree: int  # samples whose top-1 is the same (in every scored output)
    near_ties: int  # top-1 flips between classes the host scores within the tolerance
    max_abs_diff: float  # largest |device - host| of dequantized outputs (worst output)
    max_steps: float  # the same in that output's quantization steps
    worst_sample: int  # index of the sample holding max_abs_diff
    tolerance_steps: float
    ok: bool
    worst_output: int = 0  # position of the output holding max_steps
    scored: bool = True  # some output is a score vector (top-1 compared)
    outputs: list = field(default_factory=list)  # OutputComparison, in the output order
    task: Optional[dict] = None  # qrun.measure.agreement.Agreement (as a dict): the verdict

    @property
    def judged_by_task(self) -> bool:
        return self.task is not None

    @property
    def agreement(self) -> float:
        return self.agree / self.samples if self.samples else 0.0

    def stored_figures(self) -> tuple:
        """(agreement, scored) as the report store keeps them: top-1 agreement for score
        vectors; for a task qrun decodes, the share its verdict prints (detections or
        pixels that match); pose's keypoint distance is no share and stays unscored."""
        if self.task is not None and self.task["metric"] in SHARE_METRICS:
            return self.task["value"], True
        return self.agreement, self.scored

    def text(self) -> str:
        """One line: `int8 on cpu: top-1 8/8, max |Δ| 0.0039 (1 step, sample 3)`; with
        several outputs the worst is named: `(1 step, output 0 'scores', sample 3)`."""
        steps = "step" if self.max_steps == 1 else "steps"
        ties = f" ({self.near_ties} near-tie)" if self.near_ties else ""
        top1 = (f"top-1 {self.agree}/{self.samples}{ties}" if self.scored
                else f"{self.samples} samples, no score vector")
        where = ""
        if len(self.outputs) > 1:
            where = f"output {self.worst_output} '{self.outputs[self.worst_output].name}', "
        raw = (f"max |Δ| {self.max_abs_diff:.4g} ({self.max_steps:g} {steps}, "
               f"{where}sample {self.worst_sample})")
        if self.task is not None:
            return f"{self.variant} on {self.device_used}: {self.task['text']}; raw {raw}"
        return f"{self.variant} on {self.device_used}: {top1}, {raw}"

    def to_dict(self) -> dict:
        return {**asdict(self), "agreement": self.agreement}


@dataclass
class VerifyResult:
    """All variants verified on one target, what was skipped, and the device's document."""

    comparisons: list = field(default_factory=list)  # Comparison
    skipped: list = field(default_factory=list)  # {"variant", "reason"}
    timestamp: str = ""
    reference_sha256: str = ""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)

    def failure(self, tolerance_steps: float) -> Optional[str]:
        """The line a failed verify prints, or None when every variant passed."""
        bad = [c for c in self.comparisons if not c.ok]
        if not bad:
            return None
        if all(c.judged_by_task for c in bad):
            what = {qmanifest.DETECT: "detections", qmanifest.SEGMENT: "class maps",
                    qmanifest.POSE: "keypoints"}.get(bad[0].task["task"], "outputs")
            return f"the device's {what} differ from the host's: " + "; ".join(
                c.text() for c in bad)
        return ("the device's outputs differ from the host's: " + "; ".join(
            c.text() for c in bad) + f" (tolerance {tolerance_steps:g} steps)")


def compare_output(host: np.ndarray, device: np.ndarray, step: float,
                   tolerance_steps: float = DEFAULT_STEPS, scored: bool = True,
                   position: int = 0, name: str = "") -> OutputComparison:
    """Compare one output's dequantized values, [samples, values] each, host and device.

    Args:
      host, device: dequantized values, one row per reference input.
      step: the output's quantization scale (one step in output units); 0: FLOAT_STEP.
      tolerance_steps: largest difference allowed, in steps.
      scored: the output is a score vector: compare top-1 too.
    """
    host = np.asarray(host, dtype=np.float64)
    device = np.asarray(device, dtype=np.float64)
    if host.shape != device.shape or host.ndim != 2 or host.shape[0] == 0:
        what = f"output {position}" + (f" '{name}'" if name else "")
        raise UserError(f"the device returned {what} of shape {list(device.shape)}, the host "
                        f"computed {list(host.shape)}: the device runs another model; push again")
    step = float(step) if step and step > 0 else FLOAT_STEP
    per_sample = np.abs(device - host).max(axis=1)
    worst = int(np.argmax(per_sample))
    max_abs = float(per_sample[worst])
    max_steps = round(max_abs / step, 3)
    flips = ties = np.zeros(len(host), dtype=bool)
    if scored:
        host_top = np.argmax(host, axis=1)
        device_top = np.argmax(device, axis=1)
        rows = np.arange(len(host))
        margin = host[rows, host_top] - host[rows, device_top]  # >= 0; 0 where top-1 agrees
        flips = host_top != device_top
        ties = flips & (margin <= tolerance_steps * step + 1e-12)
    ok = bool(max_steps <= tolerance_steps and not np.any(flips & ~ties))
    return OutputComparison(position=position, name=name, step=step, max_abs_diff=max_abs,
                            max_steps=max_steps, worst_sample=worst, samples=len(host),
                            scored=scored,
                            agree=int(np.sum(~flips)) if scored else None,
                            near_ties=int(np.sum(ties)),
                            flipped=[int(i) for i in np.flatnonzero(flips)], ok=ok)


def combine(outputs: list, tolerance_steps: float = DEFAULT_STEPS,
            variant: str = qmanifest.INT8, device_used: str = "cpu",
            model_sha256: str = "") -> Comparison:
    """A variant's Comparison from its outputs' (OutputComparison, in order): it fails
    when one fails; the worst output is the failing (else any) one with the most steps."""
    failing = [o for o in outputs if not o.ok]
    worst = max(failing or outputs, key=lambda o: o.max_steps)
    flipped = set().union(*(o.flipped for o in outputs))
    samples = outputs[0].samples
    return Comparison(variant=variant, device_used=device_used, model_sha256=model_sha256,
                      samples=samples, agree=samples - len(flipped),
                      near_ties=sum(o.near_ties for o in outputs),
                      max_abs_diff=worst.max_abs_diff, max_steps=worst.max_steps,
                      worst_sample=worst.worst_sample, tolerance_steps=float(tolerance_steps),
                      ok=not failing, worst_output=worst.position,
                      scored=any(o.scored for o in outputs), outputs=list(outputs))


def compare_outputs(host: np.ndarray, device: np.ndarray, step: float,
                    tolerance_steps: float = DEFAULT_STEPS, variant: str = qmanifest.INT8,
                    device_used: str = "cpu", model_sha256: str = "") -> Comparison:
    """Compare a single-output model's dequantized outputs ([samples, outputs] each, a
    score vector) of the host and the device: a Comparison, `ok` as the module says."""
    return combine([compare_output(host, device, step, tolerance_steps)], tolerance_steps,
                   variant, device_used, model_sha256)


def reference_file(directory: Path, manifest: qmanifest.Manifest) -> Optional[Path]:
    """The deployment's reference inputs, if its manifest lists them and the file is there."""
    path = manifest.path_of(Path(directory), qmanifest.REFERENCE)
    return path if path is not None and path.is_file() else None


def step_of(spec) -> float:
    """One quantization step of an output (a TensorSpec), in its dequantized units."""
    if spec.scale and spec.scale > 0:
        return float(spec.scale)
    return FLOAT_STEP if np.issubdtype(np.dtype(spec.dtype), np.floating) else INTEGER_STEP


def host_run(model: Path, samples, pre: Preprocess) -> tuple[list, list]:
    """`model` run on the host for `samples` (a Reference): every output's TensorSpec and
    its dequantized values, [N, values], in the interpreter's order."""
    from qrun.model.runtime import make_interpreter

    interpreter = make_interpreter(model)
    raw = device_verify.run_samples(interpreter, samples, pre, Path(model))
    specs = device_verify.output_specs(interpreter)
    return specs, [dequantize(r, s.scale, s.zero_point) for s, r in zip(specs, raw)]


def device_outputs(record: dict) -> list:
    """(TensorSpec, dequantized [N, values]) of each output of one variant record of a
    `qrun verify` document."""
    got = []
    try:
        for out in record["outputs"]:
            spec = qmanifest.TensorSpec(list(out["shape"]), str(out["dtype"]),
                                        float(out["scale"]), int(out["zero_point"]),
                                        name=str(out.get("name") or ""), index=out.get("index"))
            count = int(np.prod(spec.shape))
            rows = np.stack([device_verify.decode(text, spec.dtype, count)
                             for text in out["values"]])
            got.append((spec, dequantize(rows, spec.scale, spec.zero_point)))
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"qrun verify sent outputs that cannot be read ({exc!r}); "
                        "check `qrun verify` on the device") from None
    return got


def drop_padding(task: Optional[qmanifest.Task], specs: list, host: list,
                 device: list) -> tuple:
    """Host and device outputs ([samples, values] each; `specs` their TensorSpecs) with the
    detections the SSD post-processing op (roles.POSTPROCESS) did not fill set to 0.

    The op writes its first `count` detections; the rest of boxes, classes and scores is
    whatever the tensor's memory held (seen on a seeded SSD: values up to ±1e38 that differ
    run to run). Detections past the smaller of the two counts are cleared on both sides;
    a different count still fails on the count output itself.
    """
    if task is None or task.decoder != roles.SSD or task.output(qmanifest.COUNT) is None:
        return host, device
    at = task.output(qmanifest.COUNT)
    counts = np.minimum(host[at][:, 0], device[at][:, 0])
    kept = np.nan_to_num(counts, nan=0.0).clip(0).astype(np.int64)
    host, device = list(host), list(device)
    for role in (qmanifest.BOXES, qmanifest.CLASSES, qmanifest.SCORES):
        position = task.output(role)
        if position is not None and len(specs[position].shape) >= 2:
            detections = specs[position].shape[1]  # [1, detections] or [1, detections, 4]
            host[position] = first_detections(host[position], detections, kept)
            device[position] = first_detections(device[position], detections, kept)
    return host, device


def first_detections(values: np.ndarray, detections: int, kept: np.ndarray) -> np.ndarray:
    """[samples, detections * k] values with the detections from kept[sample] on set to 0."""
    with np.errstate(invalid="ignore"):  # padding may hold signalling NaNs
        rows = np.array(values, dtype=np.float64).reshape(len(values), detections, -1)
    rows[np.arange(detections)[None, :] >= kept[:, None]] = 0.0
    return rows.reshape(len(values), -1)


def compare_variant(record: dict, specs: list, expected: list, scored: list,
                    tolerance_steps: float = DEFAULT_STEPS,
                    task: Optional[qmanifest.Task] = None,
                    input_size: Optional[tuple] = None,
                    names: Optional[dict] = None) -> Comparison:
    """One variant record of the device against the host's outputs (`specs`, `expected`,
    in order; `scored`: positions of the score vectors), output by output; a task qrun
    decodes (detect, segment, pose) is judged by what it outputs (`judge_by_task`)."""
    device = device_outputs(record)
    if len(device) != len(expected):
        raise UserError(f"the device's model has {len(device)} output(s), the host's "
                        f"{len(expected)}: the device runs another model; push again")
    expected, values_of = drop_padding(task, specs, expected,
                                       [values for _, values in device])
    outputs = [compare_output(host, values, step_of(spec), tolerance_steps, i in scored, i,
                              spec.name)
               for i, (spec, host, values) in enumerate(zip(specs, expected, values_of))]
    comparison = combine(outputs, tolerance_steps, variant=record["variant"],
                         device_used=record["device"]["used"],
                         model_sha256=record["model"]["sha256"])
    if task is not None and input_size is not None:
        judge_by_task(comparison, task, specs, expected, values_of, input_size, names)
    return comparison


TASK_JUDGED = (qmanifest.DETECT, qmanifest.SEGMENT, qmanifest.POSE)


def judge_by_task(comparison: Comparison, task: qmanifest.Task, specs: list, host: list,
                  device: list, input_size: tuple, names: Optional[dict] = None) -> None:
    """Judge `comparison` by what the task outputs (qrun.measure.agreement): every
    reference input's detections, class map or keypoints must agree. Left as it is for a
    classifier (top-1 and the step tolerance) and for tasks qrun cannot decode.

    Detection scores may differ by SCORE_STEPS of their output's quantization step when
    that is more than agreement's tolerance (a head whose one scale also covers boxes in
    pixels steps its scores coarsely)."""
    if task.kind not in TASK_JUDGED:
        return
    shapes = [s.shape for s in specs]
    expected = task_terms.decode(task, shapes, host, input_size)
    got = task_terms.decode(task, shapes, device, input_size)
    if expected is None or got is None:
        return
    scores = task.output(qmanifest.HEAD if qmanifest.HEAD in task.outputs else qmanifest.SCORES)
    step = float(specs[scores].scale) if scores is not None else 0.0
    verdict = task_terms.compare(task, expected, got, minimum=VERIFY_MINIMUM,
                                 every_sample=True, names=names,
                                 score_tolerance=max(task_terms.SCORE_TOLERANCE,
                                                     SCORE_STEPS * step))
    comparison.task = verdict.to_dict()
    comparison.ok = verdict.ok
    comparison.agree = comparison.samples - len(verdict.differing)


VERIFY_MINIMUM = 0.95  # the share of pixels that must agree (every sample, too)
SCORE_STEPS = 2  # matched detection scores may differ by this many of their output's steps


def image_size(model: Path) -> Optional[tuple]:
    """The (w, h) of a model's first input when it is an image [1, H, W, C], else None."""
    from qrun.model.runtime import make_interpreter

    shape = [int(n) for n in make_interpreter(model).get_input_details()[0]["shape"]]
    return (shape[2], shape[1]) if len(shape) == 4 else None


def int8_model(directory: Path, manifest: qmanifest.Manifest) -> Path:
    """The deployment's int8 model, which the host runs; a UserError when it has none."""
    model = deployment.int8_model(Path(directory), manifest)
    if model is None:
        raise UserError(f"{directory} has no int8 model for the host to compare with; "
                        "re-run qdeploy convert")
    return model


@dataclass
class HostSide:
    """What the host compares the device with: reference inputs, int8 model, preprocessing,
    and the task that says which outputs are score vectors."""

    samples: qreference.Reference
    reference_sha256: str
    model: Path
    preprocess: Preprocess
    task: Optional[qmanifest.Task] = None
    names: dict = field(default_factory=dict)  # class id -> label, for the verdict


def host_side(directory: Path, manifest: qmanifest.Manifest, against: Optional[Path] = None,
              required: bool = False) -> Optional[HostSide]:
    """The host's half of verify for the deployment in `directory`, or None when it has no
    reference inputs.

    `required` (`--verify` given explicitly) makes missing reference inputs an error, as
    are reference inputs that do not fit the model's inputs (before anything is sent). With
    `against`, the host runs that deployment's int8 model, preprocessing and task on the
    pushed deployment's reference inputs.
    """
    reference = reference_file(directory, manifest)
    if required and against is None and deployment.int8_model(Path(directory), manifest) is None:
        raise UserError(f"--verify: {directory} has no CPU int8 model to compare the device "
                        "with (an Edge TPU model without its twin); import it again with "
                        "--cpu X.tflite, or push without --verify")
    if reference is None:
        if required:
            raise UserError(f"--verify: {directory} has no reference inputs "
                            f"(reference_inputs.npy or .npz); {device_verify.RERUN_CONVERT}")
        return None
    source_dir, source = Path(directory), manifest
    if against is not None:
        source_dir = Path(against)
        source = qmanifest.load(source_dir)
    samples = device_verify.load_reference(reference)
    qreference.check(samples, manifest.inputs)
    return HostSide(samples=samples,
                    reference_sha256=manifest.artifacts[qmanifest.REFERENCE].sha256,
                    model=int8_model(source_dir, source), preprocess=source.preprocess,
                    task=source.task, names=label_names(source_dir, source))


def label_names(directory: Path, manifest: qmanifest.Manifest) -> dict:
    """The deployment's labels (id -> name), or none when it has no readable labels file."""
    path = manifest.path_of(Path(directory), qmanifest.LABELS)
    if path is None or not path.is_file():
        return {}
    from qrun.model.labels import read_labels

    try:
        return dict(read_labels(path).names)
    except UserError:
        return {}


def check_schema(document: dict) -> None:
    """Refuse a `qrun verify` document this qdeploy cannot compare: not one, or another
    schema (an older runner records output 0 only)."""
    if not isinstance(document, dict) or document.get("kind") != KIND:
        raise UserError("qrun verify printed JSON that is not a qrun-verify document")
    version = document.get("schema_version")
    if version == device_verify.SCHEMA_VERSION:
        return
    if isinstance(version, int) and version < device_verify.SCHEMA_VERSION:
        raise UserError(f"the runner on the device is older than this qdeploy (its qrun verify "
                        f"writes schema {version}, this qdeploy compares schema "
                        f"{device_verify.SCHEMA_VERSION}); remove ~/qdeploy/venv on the device "
                        "so the push reinstalls it, or pass --no-verify")
    raise UserError(f"qrun verify on the device wrote schema {version!r}, which this qdeploy "
                    f"does not know (it compares schema {device_verify.SCHEMA_VERSION}); "
                    "upgrade qdeploy, or pass --no-verify")


def check(document: dict, samples, model: Path, pre: Preprocess,
          tolerance_steps: float = DEFAULT_STEPS, reference_sha256: Optional[str] = None,
          task: Optional[qmanifest.Task] = None, names: Optional[dict] = None) -> VerifyResult:
    """Compare a device's `qrun verify` document with the host's run of `model`.

    Args:
      document: what `qrun verify --json -` printed on the device.
      samples: the reference inputs the device used (the host's copy: a Reference, or an
        array of input-0 samples).
      model, pre: the host's int8 model and the preprocessing to feed it with.
      tolerance_steps: see `compare_output`.
      reference_sha256: when given, the device must have used inputs with this sha256.
      task: the manifest's task: which outputs are score vectors (see
        qrun.measure.verify.scored_outputs), and for detect, segment and pose what the
        verdict compares (`judge_by_task`); None: every [1, N] output, by steps.
      names: class id -> label, for the verdict's sentence.
    """
    check_schema(document)
    used = str((document.get("reference") or {}).get("sha256") or "")
    if reference_sha256 is not None and used != reference_sha256:
        raise UserError(f"the device verified with other reference inputs (sha256 {used[:12]}, "
                        f"the deployment's are {reference_sha256[:12]}); push again")
    specs, expected = host_run(model, samples, pre)
    scored = device_verify.scored_outputs(specs, task)
    result = VerifyResult(skipped=list(document.get("skipped") or []),
                          timestamp=str(document.get("timestamp") or ""),
                          reference_sha256=used)
    size = image_size(model) if task is not None and task.kind in TASK_JUDGED else None
    for record in document.get("variants") or []:
        result.comparisons.append(compare_variant(record, specs, expected, scored,
                                                  tolerance_steps, task, size, names))
    return result


def run_on_device(conn: Link, runner: str, home: str, timeout: float,
                  on_line: Callable[[str], None]) -> dict:
    """Run `qrun verify --json -` against the device's current release; the parsed document."""
    cmd = f"QDEPLOY_HOME={home} {runner} verify --json -"
    result = conn.run(cmd, on_stderr=on_line, timeout=timeout)
    if not result.ok:
        line = result.last_error_line()
        if "No such command" in line:
            raise UserError(f"{conn.name}: the device's qrun has no verify command (an older "
                            "runner of the same version); remove ~/qdeploy/venv on the device "
                            "so the push reinstalls it, or pass --no-verify")
        raise UserError(f"{conn.name}: qrun verify failed on the device ({line})")
    try:
        document = json.loads(result.stdout)
    except ValueError:
        raise UserError(f"{conn.name}: qrun verify printed no JSON ({result.stdout[:120]!r}); "
                        "check `qrun verify` on the device") from None
    return document
