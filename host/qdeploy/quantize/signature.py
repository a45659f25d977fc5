"""A converted model's tensors named as its source model names them, in the interpreter's order.

TFLiteConverter keeps the SavedModel's `serving_default` signature: its argument and
output names (the Keras input names and output layer names, as convert exports them)
mapped to tensor indices. The tensors' own names say little ("serving_default_image:0",
"StatefulPartitionedCall:1"), and the interpreter orders inputs and outputs its own way
(not the source's), so the manifest lists them in the interpreter's order under the
signature's names; a float and an int8 model of one source are matched by those names.
"""

from __future__ import annotations

from pathlib import Path

from qdeploy.modelfile import selfdescribe
from qrun.model.tensors import TensorSpec


def names(path: Path) -> tuple[dict, dict]:
    """(inputs, outputs): tensor index -> signature name; empty without a signature."""
    found = selfdescribe.signature(Path(path).read_bytes())
    if found is None:
        return {}, {}
    return ({i: n for n, i in found.inputs.items()}, {i: n for n, i in found.outputs.items()})


def specs(interpreter, path: Path) -> tuple[list, list]:
    """(inputs, outputs) as TensorSpecs in the interpreter's order, named by the signature
    where it names the tensor (else by the tensor's own name)."""
    ends = names(path)
    return tuple([named(TensorSpec.from_details(d), by_index)
                  for d in details]
                 for details, by_index in zip((interpreter.get_input_details(),
                                               interpreter.get_output_details()), ends))


def named(spec: TensorSpec, by_index: dict) -> TensorSpec:
    name = by_index.get(spec.index)
    if name:
        spec.name = name
    return spec


def matching(interpreter, path: Path, wanted: list, outputs: bool) -> list:
    """The interpreter's details dict for each spec of `wanted` (the manifest's inputs or
    outputs): the tensor the signature gives that name, else the one at the same position."""
    details = interpreter.get_output_details() if outputs else interpreter.get_input_details()
    by_name = {n: i for i, n in names(path)[1 if outputs else 0].items()}
    by_index = {d["index"]: d for d in details}
    return [by_index.get(by_name.get(spec.name), details[k]) for k, spec in enumerate(wanted)]
