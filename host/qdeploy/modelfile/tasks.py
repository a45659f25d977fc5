"""The manifest's `task` for a model file: which task, which output plays which role, why.

The rules are qrun.tasks.roles', the same ones qrun applies to a bare model on the
device; this module only shows them the flatbuffer (`model_view`: shapes, op names, the
outputs of the SSD post-processing op (roles.POSTPROCESS) as output positions, the signature's output
names) and turns their answer into a qrun.model.manifest.Task. `task_from_graph` is what
`--task auto` chooses; `task_of_kind` the task a user named with `--task`.
"""

from __future__ import annotations

from typing import Optional

from qrun.model import manifest as mf
from qrun.tasks import roles

from qdeploy.errors import UserError
from qdeploy.modelfile import selfdescribe, tflite_graph

TASK_CHOICES = ("auto",) + mf.TASK_KINDS  # --task values


def model_view(description: selfdescribe.Description,
               graph: tflite_graph.Graph) -> roles.ModelView:
    """What the flatbuffer shows of the model, for qrun.tasks.roles."""
    positions = {index: i for i, index in enumerate(graph.outputs)}
    op = next((op for op in graph.ops if op.name == roles.POSTPROCESS), None)
    signature = description.signature
    return roles.ModelView(
        inputs=[list(t.shape) for t in description.inputs],
        outputs=[list(t.shape) for t in description.outputs],
        op_names=description.op_names,
        postprocess_outputs=None if op is None else tuple(positions.get(t)
                                                          for t in op.outputs),
        signature_outputs={} if signature is None else {
            name: positions[index] for name, index in signature.outputs.items()
            if index in positions})


def task_from_graph(description: selfdescribe.Description, graph: tflite_graph.Graph,
                    labels: bool = False) -> mf.Task:
    """The task `--task auto` chooses, with the reason the rule that matched gave."""
    return to_task(roles.infer(model_view(description, graph)), labels, source="graph")


def task_of_kind(kind: str, description: selfdescribe.Description,
                 graph: tflite_graph.Graph, labels: bool = False, source: str = "option",
                 reason: Optional[str] = None) -> mf.Task:
    """A Task of `kind` with the output roles that kind reads; a UserError when the
    model has no output that could play them."""
    if kind not in mf.TASK_KINDS:
        raise UserError(f"--task {kind} is not a task; use one of {', '.join(TASK_CHOICES)}")
    found = roles.roles_of(kind, model_view(description, graph))
    return to_task(found, labels, source=source, reason=reason or f"--task {kind}")


def to_task(found: roles.Roles, labels: bool, source: str,
            reason: Optional[str] = None) -> mf.Task:
    return mf.Task(found.kind, labels=mf.LABELS if labels and found.kind != mf.RAW else None,
                   outputs=found.outputs, decoder=found.decoder, params=found.params,
                   source=source, reason=reason or found.reason)
