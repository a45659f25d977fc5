"""Which task a model does, and which of its outputs plays which role: the one set of rules.

Pure functions of what any reader of a model can see (a `ModelView`: tensor shapes and
dtypes, the signature's output names, the ops in the graph and the outputs of
`TFLite_Detection_PostProcess`). The host builds the view from the flatbuffer
(qdeploy.modelfile.tasks), qrun from the interpreter (qrun.tasks.pipeline.model_view);
both get the same answer from the same rules. The task kinds, output roles and decoder
names are defined here; qrun.model.manifest and every decoder import them.

The four outputs of `TFLite_Detection_PostProcess` are found by the op's own output order
(boxes, classes, scores, count: the kernel defines it), then by the signature names
(`output_0` count, `output_1` scores, `output_2` classes, `output_3` boxes: Model Maker's
TF2 export) when the op's outputs are not the model's own; either way only when the
shapes agree (boxes [1, N, 4], scores and classes [1, N], count one value). Never by a
fixed output index: TF1 and TF2 exports order the outputs differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from qrun.errors import UserError

# Task kinds.
CLASSIFY, DETECT, SEGMENT, POSE, RAW = "classify", "detect", "segment", "pose", "raw"
TASK_KINDS = (CLASSIFY, DETECT, SEGMENT, POSE, RAW)

# Output roles: the keys of the manifest's task.outputs.
SCORES, BOXES, CLASSES, COUNT = "scores", "boxes", "classes", "count"
MASK, KEYPOINTS, HEAD = "mask", "keypoints", "head"

# Decoders: what turns a task's outputs into objects, class maps or keypoints.
SSD, YOLOV8, YOLOV5 = "ssd_postprocess", "yolov8", "yolov5"
CLASS_MAP, ARGMAX = "class_map", "argmax"
MOVENET = "movenet"
DECODERS = {DETECT: (SSD, YOLOV8, YOLOV5), SEGMENT: (CLASS_MAP, ARGMAX), POSE: (MOVENET,)}

POSTPROCESS = "TFLite_Detection_PostProcess"
POSTPROCESS_ROLES = (BOXES, CLASSES, SCORES, COUNT)  # the op's output order
SIGNATURE_ROLES = {"output_0": COUNT, "output_1": SCORES, "output_2": CLASSES,
                   "output_3": BOXES}
# A YOLO head's box units (task.params[BOX_UNITS]): fractions of the input's width and
# height (what convert makes of an ONNX head, as Ultralytics' TFLite exports are) or
# input pixels (torch's ONNX output). Without the record, a head whose candidates stay
# within 2 is read as normalised.
BOX_UNITS, NORMALISED, PIXELS = "boxes", "normalised", "pixels"
KEYPOINTS_SHAPE = [1, 1, 17, 3]  # MoveNet single pose: 17 COCO keypoints of (y, x, score)


@dataclass(frozen=True)
class ModelView:
    """What a reader of a model sees: shapes in the model's input/output order.

    Args:
      inputs, outputs: shapes (lists of ints), in the model's order.
      op_names: the names of the graph's ops (builtin or custom); empty when unknown.
      postprocess_outputs: output positions of the SSD op's outputs, in the op's order
        (None where an op output is not a model output); None without the op, or when
        the reader cannot see ops.
      signature_outputs: signature output name -> output position.
    """

    inputs: list
    outputs: list
    op_names: frozenset = frozenset()
    postprocess_outputs: Optional[tuple] = None
    signature_outputs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Roles:
    """A task's kind, the output position of each role, its decoder and parameters; from
    `infer`, also why (the rule that matched)."""

    kind: str
    outputs: dict
    decoder: Optional[str] = None
    params: dict = field(default_factory=dict)
    reason: str = ""


# --- the rules, one per head -----------------------------------------------------------

def image_size(view: ModelView) -> Optional[list]:
    """[H, W] of the first [1, H, W, C] input, or None."""
    return next((list(s)[1:3] for s in view.inputs if len(s) == 4 and s[0] == 1), None)


def is_mask(shape: list, image: Optional[list]) -> bool:
    """A [1, H, W] or [1, H, W, C] map within a factor of 2 of the input's size."""
    if not image or len(shape) not in (3, 4) or shape[0] != 1:
        return False
    return all(size / 2 <= side <= size * 2 for side, size in zip(shape[1:3], image))


def mask_decoder(shape: list) -> str:
    return ARGMAX if len(shape) == 4 and shape[3] > 1 else CLASS_MAP


def yolo_head(shape: list) -> Optional[tuple]:
    """(decoder, classes, anchors) of a raw Ultralytics head, or None.

    YOLOv8/v11 lay it [1, 4 + C, N] (boxes then class scores per anchor, fewer rows than
    anchors); YOLOv5 [1, N, 5 + C] (boxes, objectness, class scores).
    """
    if len(shape) != 3 or shape[0] != 1:
        return None
    _, a, b = shape
    if 5 <= a < b:
        return YOLOV8, a - 4, b
    if 6 <= b < a:
        return YOLOV5, b - 5, a
    return None


def boxes_normalised(params: dict, largest: float) -> bool:
    """Whether a YOLO head's boxes are fractions of the input: as the task's params record
    it, else guessed from the largest box value decoded (at most 2)."""
    units = params.get(BOX_UNITS)
    if units in (NORMALISED, PIXELS):
        return units == NORMALISED
    return largest <= 2.0


def yolo_text(decoder: str, classes: int, anchors: int) -> str:
    if decoder == YOLOV8:
        return f"YOLOv8/v11 layout [1, 4+C, N]: {classes} classes, {anchors} anchors"
    return f"YOLOv5 layout [1, N, 5+C]: {classes} classes, {anchors} anchors"


def ssd_shapes_fit(outputs: dict, shapes: list) -> bool:
    """True when boxes are [1, N, 4], scores and classes [1, N] and count has one value.

    A model file may leave the op's output shapes empty (the kernel sets them when the
    interpreter allocates): boxes, scores and classes of unknown shape are not refused.
    """
    if not set(POSTPROCESS_ROLES) <= set(outputs):
        return False
    boxes, count = list(shapes[outputs[BOXES]]), shapes[outputs[COUNT]]
    rows = [list(shapes[outputs[SCORES]]), list(shapes[outputs[CLASSES]])]
    values = 1
    for n in count:
        values *= n
    if not boxes:
        return values == 1 and all(not s or len(s) == 2 for s in rows)
    return (len(boxes) == 3 and boxes[-1] == 4 and values == 1
            and all(not s or s == boxes[:2] for s in rows))


def ssd_roles(view: ModelView) -> Optional[dict]:
    """boxes/classes/scores/count -> output position, by the op's outputs, else by the
    signature names; None when neither fits the shapes (two [1, N] outputs: scores and
    classes cannot be told apart by shape alone)."""
    found = view.postprocess_outputs
    if found is not None and None not in found:
        by_op = dict(zip(POSTPROCESS_ROLES, found))
        if ssd_shapes_fit(by_op, view.outputs):
            return by_op
    names = view.signature_outputs
    if set(SIGNATURE_ROLES) <= set(names):
        by_name = {SIGNATURE_ROLES[name]: names[name] for name in SIGNATURE_ROLES}
        if ssd_shapes_fit(by_name, view.outputs):
            return by_name
    return None


# --- every kind's roles -----------------------------------------------------------------

def classify_roles(view: ModelView) -> Roles:
    vectors = [i for i, s in enumerate(view.outputs) if len(s) == 2 and s[0] == 1]
    if len(vectors) != 1:
        raise UserError(f"--task classify needs one [1, classes] score output; the model's "
                        f"outputs are {view.outputs}; pass --task raw or the right task")
    return Roles(CLASSIFY, {SCORES: vectors[0]})


def detect_roles(view: ModelView) -> Roles:
    if POSTPROCESS in view.op_names or len(view.outputs) == 4:
        found = ssd_roles(view)
        if found is not None:
            return Roles(DETECT, found, SSD)
    for i, shape in enumerate(view.outputs):
        head = yolo_head(shape)
        if head:
            decoder, classes, anchors = head
            return Roles(DETECT, {HEAD: i}, decoder, {"classes": classes, "anchors": anchors})
    if POSTPROCESS in view.op_names:
        raise UserError(f"the {POSTPROCESS} op's outputs are not the model's boxes [1, N, 4], "
                        f"classes and scores [1, N] and count (the model's outputs are "
                        f"{view.outputs}); pass --task raw")
    raise UserError(f"no detection decoder fits this model's outputs {view.outputs} "
                    f"(detect reads {POSTPROCESS}'s four outputs, a YOLOv8 [1, 4+C, N] or a "
                    "YOLOv5 [1, N, 5+C] head); import it with qdeploy import --task raw and "
                    "run it with qrun bench or qrun verify")


def segment_roles(view: ModelView) -> Roles:
    image = image_size(view)
    for i, shape in enumerate(view.outputs):
        if is_mask(shape, image):
            return Roles(SEGMENT, {MASK: i}, mask_decoder(shape))
    size = f"{image[0]}x{image[1]}" if image else "not an image"
    raise UserError(f"no output of this model is a per-pixel map (its outputs are "
                    f"{view.outputs}, its input {size}); segment reads a [1, H, W] class map "
                    "or [1, H, W, C] scores near the input's size. Import it with qdeploy "
                    "import --task raw and run it with qrun bench or qrun verify")


def pose_roles(view: ModelView) -> Roles:
    shapes = [list(s) for s in view.outputs]
    if KEYPOINTS_SHAPE in shapes:
        return Roles(POSE, {KEYPOINTS: shapes.index(KEYPOINTS_SHAPE)}, MOVENET)
    raise UserError(f"no output of this model is MoveNet's {KEYPOINTS_SHAPE} keypoints (its "
                    f"outputs are {view.outputs}); import it with qdeploy import --task raw "
                    "and run it with qrun bench or qrun verify")


def raw_roles(view: ModelView) -> Roles:
    return Roles(RAW, {})


ROLE_FINDERS = {CLASSIFY: classify_roles, DETECT: detect_roles, SEGMENT: segment_roles,
                POSE: pose_roles, RAW: raw_roles}


def roles_of(kind: str, view: ModelView) -> Roles:
    """The roles of task `kind` in the model; a UserError naming the shapes seen when the
    model has no output that could play them."""
    if kind not in ROLE_FINDERS:
        raise UserError(f"{kind!r} is not a task; use one of {', '.join(TASK_KINDS)}")
    return ROLE_FINDERS[kind](view)


def infer_kind(view: ModelView) -> tuple:
    """(kind, reason): the task the outputs point to, in this order: the SSD op (or four
    outputs that fit it), MoveNet keypoints, a per-pixel map near the input size, a raw
    YOLO head, one score vector; else raw. The roles themselves: `roles_of`."""
    shapes = [list(s) for s in view.outputs]
    if POSTPROCESS in view.op_names or (len(shapes) == 4 and ssd_roles(view) is not None):
        return DETECT, f"SSD: the graph ends in {POSTPROCESS}"
    if KEYPOINTS_SHAPE in shapes:
        return POSE, f"a {KEYPOINTS_SHAPE} keypoint tensor (MoveNet single pose)"
    image = image_size(view)
    for shape in shapes:
        if is_mask(shape, image):
            return SEGMENT, f"a {shape} per-pixel map for a {image[0]}x{image[1]} input"
    for shape in shapes:
        head = yolo_head(shape)
        if head:
            return DETECT, f"a raw {shape} detection head ({yolo_text(*head)})"
    if len(shapes) == 1 and len(shapes[0]) == 2 and shapes[0][0] == 1:
        return CLASSIFY, f"one {shapes[0]} score vector"
    return RAW, f"no known head among outputs {shapes}"


def infer(view: ModelView) -> Roles:
    """The roles of the task `infer_kind` finds, with its reason; a UserError where the
    kind is plain but its outputs do not fit (an SSD op whose outputs are not the
    model's)."""
    kind, reason = infer_kind(view)
    found = roles_of(kind, view)
    return Roles(found.kind, found.outputs, found.decoder, found.params, reason)


# --- checking roles a manifest names -----------------------------------------------------

def check_decoder(kind: str, decoder: Optional[str], allow_none: bool = False) -> None:
    """Refuse a manifest decoder the task's decoders do not include."""
    if decoder is None and allow_none:
        return
    if decoder not in DECODERS[kind]:
        raise UserError(f"the manifest's {kind} decoder is {decoder!r}; qrun {kind} knows "
                        f"{', '.join(DECODERS[kind])}")


def check_detect(decoder: str, outputs: dict, params: dict, shapes: list) -> None:
    """Refuse detect roles whose outputs do not have the shapes the decoder reads."""
    if decoder == SSD:
        if ssd_shapes_fit(outputs, shapes):
            return
    else:
        shape = shapes[outputs[HEAD]] if HEAD in outputs else []
        classes = params.get("classes")
        if len(shape) == 3 and shape[0] == 1:
            width = shape[1] if decoder == YOLOV8 else shape[2]
            extra = 4 if decoder == YOLOV8 else 5
            if classes is None or width == classes + extra:
                return
    raise UserError(f"the {decoder} decoder cannot read this model's outputs {shapes} "
                    f"(roles {outputs}); import it again with qdeploy import, or with "
                    "--task raw and run it with qrun bench or qrun verify")
