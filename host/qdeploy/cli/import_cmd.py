"""`qdeploy import`: parse the options, call qdeploy.modelimport.importer, print what it made."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qdeploy.cli.ui import out, print_json

commands = typer.Typer()  # added to the qdeploy app by qdeploy.cli

IMPORT_HELP = (
    "Make a deployment directory from an existing .tflite model (Coral's zoo, Model Maker, "
    "the Object Detection API, Ultralytics' format=edgetpu, MoveNet, DeepLab, ...).\n\n"
    "MODEL may be a quantized CPU model, an _edgetpu model (its CPU twin X.tflite is found "
    "beside X_edgetpu.tflite, or give --cpu) or a float model (a float-only deployment). "
    "Labels, preprocessing and the task come from what the file says about itself (TFLite "
    "metadata, Ultralytics' temp_meta.txt or metadata.json, the graph); an option overrides "
    "them, with a note; a --labels file with a background line or COCO's 90 ids is mapped "
    "onto the scores by the model's own names. Reference inputs for push --verify are "
    "written too: --reference, else 8 seeded random inputs. Nothing is written when the "
    "import fails.")


@commands.command("import", help=IMPORT_HELP)
def import_command(
    model: Path = typer.Argument(..., help="The .tflite model: quantized, _edgetpu, or float."),
    edgetpu: Optional[Path] = typer.Option(None, "--edgetpu", help="The compiled twin "
                                           "(X_edgetpu.tflite) of a CPU MODEL."),
    cpu: Optional[Path] = typer.Option(None, "--cpu", help="The CPU twin of an _edgetpu MODEL "
                                       "(default: X.tflite beside X_edgetpu.tflite)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Labels file (one label per "
                                          "line, or 'id label' lines); beats the model's own."),
    task: str = typer.Option("auto", "--task", help="auto (inferred from the metadata and "
                             "the graph), classify, detect, segment, pose or raw."),
    preprocess: Optional[str] = typer.Option(
        None, "--preprocess", help="Pixels to model input: unit ([0,1], /255), symmetric "
        "([-1,1]), raw, or mean=M,std=S[,color=L|RGB]. Default: the model's metadata, else "
        "mean 128, std 128 (Coral's)."),
    reference: Optional[Path] = typer.Option(
        None, "--reference", help="Reference inputs for verify: an image, a folder of images "
        "(through the preprocessing), an .npy (one input) or an .npz (input_0, input_1, ...). "
        "Default: 8 seeded random inputs."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Directory to create (absent or "
                                           "empty). Default: ./qdeploy-out/<model name>."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as one JSON object."),
):
    """Import MODEL into a deployment directory (help: IMPORT_HELP)."""
    from qdeploy.modelimport.importer import import_model

    result = import_model(model, edgetpu=edgetpu, cpu=cpu, labels=labels, task=task,
                          preprocess=preprocess, reference=reference, out=out_dir)
    if as_json:
        print_json({"directory": str(result.out_dir), "notes": result.notes,
                    "manifest": result.manifest.to_dict()})
    else:
        print_import(result)


def print_import(result) -> None:
    from qdeploy.modelimport.importer import describe_spec

    m = result.manifest
    out.print(f"Imported {m.converter.source_model} into {result.out_dir}/", markup=False)
    for note in result.notes:
        out.print(f"note: {note}", markup=False)
    out.print(f"  {result.task_line}", markup=False)
    for role, art in m.artifacts.items():
        out.print(f"  {art.file:<28} {art.size:>12,} bytes  ({role})", markup=False)
    for end, specs in (("input", m.inputs), ("output", m.outputs)):
        for i, spec in enumerate(specs):
            out.print(f"  {end} {i} {spec.name}: {describe_spec(spec)}", markup=False)
    out.print(f"  {result.reference_line}", markup=False)
    out.print(f"next: qdeploy push {result.out_dir} --target HOST", markup=False)
