"""`qrun pose`: the 17 COCO keypoints of one person, in the original image's pixels.

MoveNet single pose, as libcoral's movenet test runs it: the image is resized (stretched,
LANCZOS) to the input size, and the output [1, 1, 17, 3] holds (y, x, score) per keypoint,
normalised to the input; so x times the image's width and y times its height are its
pixels. The output is found by the manifest's KEYPOINTS role, else by its shape (the
`_edgetpu` twin has no signature, so names are never used).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from qrun.model import deployment
from qrun.tasks import pipeline
from qrun.errors import UserError
from qrun.model.manifest import Task
from qrun.tasks import roles
from qrun.tasks.roles import KEYPOINTS, MOVENET
from qrun.model.preprocess import dequantize

KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                  "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                  "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
                  "right_ankle")


class Keypoint(NamedTuple):
    name: str
    x: float
    y: float
    score: float


def keypoints_output(interpreter, task: Optional[Task]) -> int:
    """The position of the [1, 1, 17, 3] keypoints output: the manifest task's, else by
    qrun.tasks.roles."""
    if task is not None and KEYPOINTS in task.outputs:
        roles.check_decoder(roles.POSE, task.decoder, allow_none=True)
        return task.outputs[KEYPOINTS]
    return roles.pose_roles(pipeline.model_view(interpreter)).outputs[KEYPOINTS]


def keypoints(values: np.ndarray, size: tuple) -> list:
    """Keypoints from MoveNet's [.., 17, 3] (y, x, score) values, normalised, scaled to the
    image's (w, h)."""
    rows = np.asarray(values, dtype=np.float64).reshape(-1, 3)
    if len(rows) != len(KEYPOINT_NAMES):
        raise UserError(f"the keypoints output holds {len(rows)} keypoints, not MoveNet's 17")
    w, h = size
    return [Keypoint(name, float(x * w), float(y * h), float(score))
            for name, (y, x, score) in zip(KEYPOINT_NAMES, rows)]


@dataclass
class PoseResult:
    keypoints: list
    threshold: float
    timing_ms: dict
    device: dict
    model: dict
    image: dict
    annotated: Optional[str] = None
    fell_back: bool = False

    def to_dict(self) -> dict:
        return {"kind": "qrun-pose", "schema_version": 1,
                "keypoints": [k._asdict() for k in self.keypoints],
                "threshold": self.threshold, "image": self.image,
                "annotated": self.annotated, "timing_ms": self.timing_ms,
                "device": self.device, "model": self.model}


def pose(image: Path, model: Optional[Path] = None, out: Optional[Path] = None,
         threshold: float = 0.3, device: str = "auto", tpu: str = "",
         threads: Optional[int] = None) -> PoseResult:
    """Find the keypoints of the person in `image` with the model `--model` names.

    Args:
      image: a JPEG, PNG or BMP file.
      model: model file or deployment directory; the current deployment when None.
      out: where to write the image with the skeleton drawn (keypoints >= threshold).
      threshold: the lowest keypoint score drawn and printed.
      device, tpu, threads: as qrun classify takes them.
    Returns:
      A PoseResult with all 17 keypoints.
    """
    pipeline.check_fraction(threshold, "--threshold")
    out = pipeline.check_out(out, "--out")
    watch = pipeline.Stopwatch()
    opened = pipeline.open_model(model, "pose", device, tpu, threads, watch)
    steps = pose_finder(opened)
    picture, size, found = pipeline.timed_frame(opened, steps, image, watch)
    position = steps.position
    if out is not None:
        from qrun.tasks import draw

        pipeline.save_png(draw.draw_pose(picture, found, threshold), out)
    return PoseResult(found, threshold, watch.timing_ms(), opened.device(),
                      {**opened.model(), "decoder": MOVENET,
                       "outputs": {KEYPOINTS: position}},
                      {"path": str(image), "width": size[0], "height": size[1]},
                      str(out) if out else None, opened.choice.fell_back)


@dataclass(frozen=True)
class PoseFinder:
    """What qrun pose does to one decoded image, set up once per model: resize and quantize
    it (`preprocess`), the 17 keypoints in the image's pixels (`postprocess`)."""

    position: int  # of the keypoints output
    spec: object  # the input's TensorSpec
    table: np.ndarray  # pixel value -> input value (pipeline.lookup_table)
    color: str
    draft_size: Optional[tuple] = None

    def preprocess(self, picture, size: tuple) -> tuple:
        """(input data, the image's (w, h)): stretched (LANCZOS) to the input, quantized."""
        return pipeline.stretched(picture, self.spec, self.table), size

    def postprocess(self, interpreter, size: tuple) -> list:
        raw, out_spec = pipeline.output(interpreter, self.position)
        return keypoints(dequantize(raw, out_spec.scale, out_spec.zero_point), size)


def pose_finder(opened: pipeline.Opened) -> PoseFinder:
    """Set qrun pose up for an opened model: the keypoints output and the input table."""
    interpreter = opened.interpreter
    spec = pipeline.input_spec(interpreter)
    pre = deployment.preprocess_of(opened.dep)
    return PoseFinder(keypoints_output(interpreter, opened.task), spec,
                      pipeline.lookup_table(pre, spec), pipeline.image_color(spec, pre))
