"""The manifest's `task` for a model: which task, which output plays which role, why.

`task_from_graph` turns what a file says about itself (qdeploy.modelimport.selfdescribe)
into a qrun.manifest.Task: the kind `infer_task` found from the graph, and each role's
output position. The four outputs of `TFLite_Detection_PostProcess` are found by the
op's own output order (boxes, classes, scores, count: the kernel defines it), never by a
fixed output index: TF1 and TF2 exports order the model's outputs differently, and a TF2
SavedModel's signature names (output_0, ...) follow whatever its function returned
(Model Maker: count, scores, classes, boxes; a function returning the op's tuple:
boxes, classes, scores, count). The signature names are used only when the op's outputs
are not the model's own. `task_of_kind` builds the task a user named with `--task`.
"""

from __future__ import annotations

from typing import Optional

from qrun import manifest as mf

from qdeploy.edgetpu import tflite_graph
from qdeploy.errors import UserError
from qdeploy.modelimport import selfdescribe

POSTPROCESS = "TFLite_Detection_PostProcess"
POSTPROCESS_ROLES = (mf.BOXES, mf.CLASSES, mf.SCORES, mf.COUNT)  # the op's output order
SIGNATURE_ROLES = {"output_0": mf.COUNT, "output_1": mf.SCORES, "output_2": mf.CLASSES,
                   "output_3": mf.BOXES}
TASK_CHOICES = ("auto",) + mf.TASK_KINDS  # --task values


def task_from_graph(description: selfdescribe.Description, graph: tflite_graph.Graph,
                    labels: bool = False) -> mf.Task:
    """The task `--task auto` chooses, with the reason `infer_task` gave."""
    return task_of_kind(description.task, description, graph, labels, source="graph",
                        reason=description.reason)


def task_of_kind(kind: str, description: selfdescribe.Description,
                 graph: tflite_graph.Graph, labels: bool = False, source: str = "option",
                 reason: Optional[str] = None) -> mf.Task:
    """A Task of `kind` with the output roles that kind reads; a UserError when the
    model has no output that could play them."""
    if kind not in mf.TASK_KINDS:
        raise UserError(f"--task {kind} is not a task; use one of {', '.join(TASK_CHOICES)}")
    shapes = [list(t.shape) for t in description.outputs]
    outputs, decoder, params = ROLE_FINDERS[kind](description, graph, shapes)
    return mf.Task(kind, labels=mf.LABELS if labels and kind != mf.RAW else None,
                   outputs=outputs, decoder=decoder, params=params, source=source,
                   reason=reason or f"--task {kind}")


def classify_roles(description, graph, shapes) -> tuple:
    vectors = [i for i, s in enumerate(shapes) if len(s) == 2 and s[0] == 1]
    if len(vectors) != 1:
        raise UserError(f"--task classify needs one [1, classes] score output; the model's "
                        f"outputs are {shapes}; pass --task raw or the right task")
    return {mf.SCORES: vectors[0]}, None, {}


def detect_roles(description, graph, shapes) -> tuple:
    if POSTPROCESS in description.op_names:
        return postprocess_roles(description, graph), "ssd_postprocess", {}
    for i, shape in enumerate(shapes):
        layout = selfdescribe._yolo_layout(shape)
        if layout:
            yolov8 = shape[1] < shape[2]
            classes = shape[1] - 4 if yolov8 else shape[2] - 5
            anchors = shape[2] if yolov8 else shape[1]
            return ({mf.HEAD: i}, "yolov8" if yolov8 else "yolov5",
                    {"classes": classes, "anchors": anchors})
    raise UserError(f"--task detect needs a {POSTPROCESS} op or a raw [1, 4+C, N] / "
                    f"[1, N, 5+C] detection head; the model's outputs are {shapes}")


def postprocess_roles(description, graph) -> dict:
    """boxes/classes/scores/count -> output position for a model ending in the SSD op."""
    positions = {index: i for i, index in enumerate(graph.outputs)}
    op = next(op for op in graph.ops if op.name == POSTPROCESS)
    found = {role: positions.get(index) for role, index in zip(POSTPROCESS_ROLES, op.outputs)}
    if None not in found.values():
        return found
    signature = description.signature
    if signature and set(SIGNATURE_ROLES) <= set(signature.outputs):
        found = {SIGNATURE_ROLES[name]: positions.get(index)
                 for name, index in signature.outputs.items() if name in SIGNATURE_ROLES}
        if None not in found.values():
            return found
    raise UserError(f"the {POSTPROCESS} op's outputs are not all model outputs; "
                    "pass --task raw")


def segment_roles(description, graph, shapes) -> tuple:
    image = next((s[1:3] for s in (list(t.shape) for t in description.inputs)
                  if len(s) == 4 and s[0] == 1), None)
    for i, shape in enumerate(shapes):
        if image and selfdescribe._is_mask(shape, image):
            decoder = "argmax" if len(shape) == 4 and shape[3] > 1 else "class_map"
            return {mf.MASK: i}, decoder, {}
    raise UserError(f"--task segment needs a [1, H, W] or [1, H, W, C] output near the input "
                    f"size; the model's outputs are {shapes}")


def pose_roles(description, graph, shapes) -> tuple:
    if selfdescribe.KEYPOINTS in shapes:
        return {mf.KEYPOINTS: shapes.index(selfdescribe.KEYPOINTS)}, "movenet", {}
    raise UserError(f"--task pose needs MoveNet's [1, 1, 17, 3] keypoints output; the model's "
                    f"outputs are {shapes}")


def raw_roles(description, graph, shapes) -> tuple:
    return {}, None, {}


ROLE_FINDERS = {mf.CLASSIFY: classify_roles, mf.DETECT: detect_roles,
                mf.SEGMENT: segment_roles, mf.POSE: pose_roles, mf.RAW: raw_roles}
