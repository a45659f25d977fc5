"""`qdeploy convert` and `qdeploy evaluate`, and how their results are printed."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qdeploy.cli.ui import console, out, print_json, progress_bar
from qdeploy.errors import UserError

DEFAULT_OUT = Path("qdeploy-out")

commands = typer.Typer()  # added to the qdeploy app by qdeploy.cli


@commands.command()
def convert(
    model: Path = typer.Argument(..., help="Float source model: a .keras/.h5 file, a "
                                 "SavedModel directory or an .onnx file (torch.onnx.export; "
                                 "needs the onnx extra), with one or several inputs and "
                                 "outputs."),
    calib: Path = typer.Option(..., "--calib", help="Representative dataset: a folder of "
                               "images (searched recursively), an .npy/.npz array, or MNIST "
                               "idx files. uint8 arrays are pixels; float arrays are model "
                               "inputs. A model with several inputs takes an .npz with one "
                               "array per input, named as the model names its inputs."),
    out_dir: Path = typer.Option(DEFAULT_OUT, "--out", help="Output directory."),
    num_calib: int = typer.Option(100, "--num-calib", help="Calibration samples to use."),
    io: str = typer.Option("uint8", "--io", help="Integer type of every input and (unless "
                           "--output-io says otherwise) every output: uint8 or int8."),
    output_io: Optional[str] = typer.Option(None, "--output-io", help="Type of every "
                                            "output: uint8, int8, or float32 for heads that "
                                            "must stay float (post-processing outputs, "
                                            "regression values); the ops stay int8 and a "
                                            "DEQUANTIZE ends each output. Default: --io."),
    preprocess: str = typer.Option("unit", "--preprocess", help="Pixels to float input: "
                                   "unit ([0,1], /255), symmetric ([-1,1]), raw, or "
                                   "mean=M,std=S[,color=L|RGB]. Stored in the manifest and "
                                   "applied unchanged on the device."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Labels file to ship with "
                                          "the model. Default: an ONNX file's own names "
                                          "(Ultralytics' metadata_props). One with a "
                                          "background line or COCO's 90 ids is mapped onto "
                                          "the scores by those names."),
    input_layout: Optional[str] = typer.Option(None, "--input-layout", help="ONNX only: "
                                               "the layout of --calib arrays, nchw (as the "
                                               "ONNX model takes them; transposed once) or "
                                               "nhwc (as the converted model takes them). "
                                               "Default: their shape tells. Images are "
                                               "always pixels."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="ONNX only: "
                                              "the input's shape in the ONNX layout, e.g. "
                                              "1,3,640,640, for a model exported with a "
                                              "dynamic image size (the Edge TPU needs it "
                                              "fixed)."),
    task: Optional[str] = typer.Option(None, "--task", help="classify, detect, segment, "
                                       "pose or raw (outputs left undecoded: qrun bench "
                                       "and verify). Default: found from the outputs."),
    strict: bool = typer.Option(False, "--strict", help="Fail, writing nothing, when the "
                                "int8 model loses what the float model tells on samples "
                                "held back from calibration (the fidelity gate; without "
                                "--strict a warning)."),
):
    """Quantize a float model to full integer (int8 ops, uint8 I/O) for the Edge TPU.

    Writes model_float.tflite, model_int8.tflite, reference inputs and manifest.json
    into --out. The batch is fixed to 1 and every op must have an int8 kernel, as the
    Edge TPU needs. An ONNX model goes through onnx2tf (NCHW becomes NHWC: the manifest,
    qrun and evaluate use NHWC) and its float TFLite is checked against ONNX Runtime on
    the calibration samples before quantizing. The manifest lists every input and output
    in the interpreter's order and the task: classify when one output is a [1, N] score
    vector, else what the graph shows (detect, segment, pose or raw). Up to 8 samples
    beyond --num-calib are held back: the float and int8 models run on them and are
    compared in the task's terms (top-1, detections, pixels, keypoints); a loss ends the
    convert with a warning naming the output, the figure and the likely cause.
    """
    from qdeploy.quantize.convert import convert as run_convert
    from qrun.model.preprocess import parse_preprocess

    pre = parse_preprocess(preprocess)
    task = check_task(task)
    with progress_bar("Calibrating on the representative dataset", num_calib) as tick:
        result = run_convert(model, calib, out_dir, num_calib=num_calib, io_type=io,
                             preprocess=pre, labels=labels, progress=tick,
                             output_io=output_io, input_layout=input_layout,
                             input_shape=input_shape, task_kind=task, strict=strict)
    print_conversion(result)
    for line in result.warnings:
        console.print(f"warning: {line}", markup=False, soft_wrap=True)


def check_task(task: Optional[str]) -> Optional[str]:
    """--task checked before any slow work; None for auto."""
    from qdeploy.modelfile.tasks import TASK_CHOICES
    from qrun.errors import UserError

    if task is not None and task not in TASK_CHOICES:
        raise UserError(f"--task {task} is not a task; use one of {', '.join(TASK_CHOICES)}")
    return None if task in (None, "auto") else task


def print_conversion(result) -> None:
    from qrun.model.manifest import FLOAT, INT8

    m = result.manifest
    float_size = m.artifacts[FLOAT].size
    int8_size = m.artifacts[INT8].size
    out.print(f"Converted {m.converter.source_model} into {result.out_dir}/")
    if m.converter.source_kind == "onnx":
        x = m.converter.extra
        moved = ", ".join(x.get("transposed_inputs", [])) or "none"
        out.print(f"  from ONNX opset {x.get('onnx_opset')} ({x.get('onnx_producer')}) with "
                  f"onnx2tf {x.get('onnx2tf')}: {x.get('source_layout')} -> "
                  f"{x.get('model_layout')} (inputs transposed: {moved})")
    if result.batch_fixed:
        batch = (m.converter.source_input_shape or [None])[0]
        was = "dynamic" if batch in (None, -1) else str(batch)
        fixed = (f"input {m.input.shape}" if len(m.inputs) == 1
                 else f"all {len(m.inputs)} inputs")
        out.print(f"  batch fixed to 1: {fixed} (the source model's batch was "
                  f"{was}); no dynamic-shape ops")
    else:
        shapes = " ".join(str(spec.shape) for spec in m.inputs)
        out.print(f"  input {shapes}, static shapes, no dynamic-shape ops")
    out.print(f"  model_float.tflite  {float_size:>10,} bytes")
    out.print(f"  model_int8.tflite   {int8_size:>10,} bytes  ({float_size / int8_size:.2f}x "
              f"smaller)")
    out.print(f"  {op_line(result)}")
    for end, specs in (("input ", m.inputs), ("output", m.outputs)):
        for k, spec in enumerate(specs):
            which = f"{end} {k} {spec.name}" if len(specs) > 1 else end
            quant = (f"scale {spec.scale:.6g}  zero point {spec.zero_point}" if spec.quantized
                     else "not quantized")
            out.print(f"  {which} {spec.dtype} {spec.shape}  {quant}")
    out.print(f"  task {describe_task(m)}")
    out.print(f"  calibrated on {result.calibration_samples} samples from "
              f"{m.calibration['source']}")
    if m.fidelity is not None:
        out.print(f"  fidelity {fidelity_line(m.fidelity)}", markup=False)
    for note in result.notes:
        out.print(f"  note: {note}")


def op_line(result) -> str:
    """The int8 model's ops in one line, those the Edge TPU compiler would leave on the
    CPU named (by the preflight; its verdict in full: qdeploy preflight)."""
    from qdeploy.edgetpu.preflight import preflight
    from qdeploy.quantize.summary import op_summary

    try:
        cpu = preflight(result.int8_path).cpu_ops
    except Exception:  # the summary must never cost the conversion
        cpu = []
    return op_summary(result.int8_ops, cpu)


def fidelity_line(f) -> str:
    """The fidelity gate's figure: "top-1 agreement 100% float vs int8 on 8 held-back
    samples"."""
    from qdeploy.quantize.fidelity import FIGURES

    value = (f"{f.value:.3f} of the input's size" if f.metric == "keypoint_distance"
             else f"{f.value:.0%}")
    where = "held-back" if f.held_back else "calibration"
    return (f"{FIGURES.get(f.metric, f.metric)} {value} float vs int8 on {f.samples} {where} "
            f"samples{'' if f.ok else ' (lost)'}")


def describe_task(m) -> str:
    """The task and its output roles, e.g. "classify (scores: output 0 scores)"."""
    roles = ", ".join(f"{role}: output {k} {m.outputs[k].name}"
                      for role, k in m.task.outputs.items())
    reason = f" - {m.task.reason}" if m.task.reason else ""
    return f"{m.task.kind}" + (f" ({roles})" if roles else "") + reason


@commands.command()
def evaluate(
    directory: Path = typer.Argument(DEFAULT_OUT, help="A qdeploy convert or import output "
                                     "directory."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled data. Classifiers: a "
                                        "folder with one sub-folder per class, an .npz with "
                                        "arrays x and y, or an idx image file (or a folder "
                                        "holding an idx image/label pair); a model with several "
                                        "inputs takes an .npz with one array per input name and "
                                        "y. Detectors: COCO (annotations.json, images in DIR or "
                                        "DIR/images) or YOLO (images/ + labels/*.txt, names in "
                                        "data.yaml). Segmenters: images/ + masks/*.png (class "
                                        "ids, 255 ignored). Pose: COCO person keypoints. With "
                                        "--layers: any samples (labels unused); default the "
                                        "recorded representative dataset, else the reference "
                                        "inputs."),
    against: Optional[str] = typer.Option(None, "--against", help="float: no labels needed; "
                                          "score int8 against the float model's own outputs "
                                          "(detect, segment, pose)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="The idx label file, when "
                                          "--data is an idx image file whose label file is "
                                          "not beside it."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N samples."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    layers: bool = typer.Option(False, "--layers", help="Which layer loses the accuracy in "
                                "int8, and why: one row per quantized tensor (scale, zero "
                                "point, range, per-layer and cumulative error against the "
                                "float model), worst first, causes flagged; kept in the "
                                "report store (--reports)."),
    float_model: Optional[Path] = typer.Option(None, "--float", help="--layers: the float "
                                               ".tflite to compare with (an imported "
                                               "deployment has none of its own)."),
    compare: Optional[str] = typer.Option(None, "--compare", help="--layers: per-tensor "
                                          "converts once more with per-tensor weights and "
                                          "shows its per-layer error beside."),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE.png", help="--layers: "
                                        "bar chart of the error by layer, flagged in red."),
    html: Optional[Path] = typer.Option(None, "--html", metavar="FILE.html", help="--layers: "
                                        "the table and the plot in one page."),
    reports: Path = typer.Option(Path("reports"), "--reports", metavar="DIR", help="--layers: "
                                 "the report store's directory (qdeploy report reads it)."),
):
    """Accuracy of each variant on labelled data, in the metric of the model's task.

    All run through the device runtime with the manifest's preprocessing. Classifiers:
    top-1 of float and int8 (a model with several outputs is scored on the output its
    task names as the scores). Detectors: COCO mAP50-95 and mAP50 (pycocotools; detections
    kept at 0.001, at most 300 per image) and AP per class, classes matched by name.
    Segmenters: mIoU, pixel accuracy, IoU per class. Pose: OKS AP. The figures are stored
    in manifest.json for later reports.

    With --layers: where int8 loses, layer by layer (per-layer error by TF's
    QuantizationDebugger when the source model is still where convert recorded it;
    cumulative error against the float model's tensor of the same name), and why.
    """
    from qdeploy.cli import layers_view  # the layer report
    from qdeploy.quantize import taskeval

    if layers_view.wanted(layers, float=float_model, compare=compare, plot=plot, html=html):
        return layers_view.run(directory, data, float_model, limit, compare, json_out, plot,
                               html, reports)
    if data is None:
        raise UserError("--data is needed: labelled data to score the variants on (or, "
                        "with --against float, images alone)")
    from qdeploy.quantize.evaluate import evaluate as run_evaluate

    if against is not None or taskeval.is_task_model(directory):
        with progress_bar("Evaluating every variant", None) as tick:
            document = taskeval.evaluate(directory, data, against, limit, progress=tick)
        if json_out:
            print_json(document)
            return
        from qdeploy.cli.evaluate_view import print_task_evaluation

        return print_task_evaluation(document)

    with progress_bar("Evaluating float and int8 models") as tick:
        result = run_evaluate(directory, data, labels=labels, limit=limit, progress=tick)
    if json_out:
        print_json(result.to_dict())
    else:
        print_evaluation(result)


def print_evaluation(e) -> None:
    from rich.table import Table

    table = Table(title=f"float vs int8 on {e.samples} samples", title_justify="left")
    for col in ("", "float", "int8", "change"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("top-1 accuracy", f"{e.float_accuracy:.2%}", f"{e.int8_accuracy:.2%}",
                  f"{e.delta_pp:+.2f} pp")
    table.add_row("size", f"{e.float_size:,} B", f"{e.int8_size:,} B",
                  f"{e.size_ratio:.2f}x smaller")
    table.add_row("top-1 agreement", "", f"{e.agreement:.2%}", "")
    out.print(table)
    if getattr(e, "fidelity", None):
        from qrun.model.manifest import Fidelity

        out.print(f"convert's fidelity gate: {fidelity_line(Fidelity.from_dict(e.fidelity))}",
                  markup=False)
    for note in e.notes:
        out.print(f"note: {note}")
