"""`qdeploy quickstart`: the whole pipeline on the bundled MNIST demo, no arguments.

One function per step, run in order by `run`: train the tutorial's model on the
bundled data, convert it to full integer, evaluate what that cost on the held-out
images, compile it for the Edge TPU (or predict the compiler's verdict when the
compiler is not installed), and rehearse a deployment by pushing to the `local`
target, which benchmarks it on this machine. Each step reports through `ui`, which
the command line supplies, so this module decides what happens and the CLI only
prints; `classify_command` is the command it ends with: `qrun classify` on a bundled
held-out digit, with the deployment just made.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Optional, Protocol

import numpy as np

from qdeploy import demo
from qdeploy.quantize.convert import ConvertResult, convert
from qdeploy.quantize.evaluate import Evaluation, evaluate
from qrun.model.preprocess import parse_preprocess

TickFn = Callable[[int, int], None]  # tick(done, total): how far a step is


class UI(Protocol):
    def step(self, title: str, total: Optional[int] = None) -> ContextManager[TickFn]: ...

    def note(self, text: str) -> None: ...


@dataclass
class QuickstartResult:
    out_dir: Path
    conversion: ConvertResult
    evaluation: Evaluation
    compile_outcome: Optional[object] = None  # qdeploy.edgetpu.compiler.Outcome
    push_result: Optional[object] = None  # qdeploy.push.pipeline.PushResult
    remote_dir: Optional[Path] = None  # the push's release directory; None: where qrun looks
    sample: Optional[Path] = None  # a bundled held-out digit to classify (demo.sample_digit)


def run(out_dir: Path, ui: UI, epochs: Optional[int] = None,
        remote_dir: Optional[Path] = None, reports_dir: Optional[Path] = None,
        push: bool = True) -> QuickstartResult:
    """Train, convert, evaluate and compile the demo model into `out_dir`, then push it
    to the `local` target (release under `remote_dir`, report under `reports_dir`)."""
    recipe = demo.load_recipe()
    split = demo.load_split(recipe)
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="qdeploy-quickstart-") as work:
        work = Path(work)
        model_path = train_step(recipe, split, work, ui, epochs)
        conversion = convert_step(recipe, split, model_path, work, out_dir, ui)
        evaluation = evaluate_step(split, work, out_dir, ui)
    result = QuickstartResult(out_dir, conversion, evaluation, sample=demo.sample_digit(recipe))
    result.compile_outcome = compile_step(out_dir, ui)
    if push:
        result.remote_dir = Path(remote_dir) if remote_dir is not None else None
        result.push_result = push_step(out_dir, ui, remote_dir, reports_dir)
    return result


def classify_command(result: QuickstartResult, cwd: Optional[Path] = None) -> str:
    """The shell command that classifies the sample digit with the deployment `result`
    made, its paths relative to `cwd` (default: the working directory) when below it.

    After a push to the default release directory, qrun finds the deployment by itself
    (`current` under $QDEPLOY_HOME, else ~/qdeploy, as the push did); after a push under
    another directory the command names its `current`; without a push, the output
    directory. The program is the `qrun` installed beside this Python (`.venv/bin/qrun`),
    else `qrun` from PATH; without a sample, the image is IMAGE.
    """
    cwd = Path(cwd or Path.cwd()).absolute()
    qrun = Path(sys.executable).absolute().parent / "qrun"
    words = [shown(qrun, cwd, program=True) if qrun.is_file() else "qrun", "classify"]
    if result.push_result is None:
        words += ["--model", shown(result.out_dir, cwd)]
    elif result.remote_dir is not None:
        words += ["--model", shown(result.remote_dir / "current", cwd)]
    words.append(shown(result.sample, cwd) if result.sample is not None else "IMAGE")
    return " ".join(w if w == "IMAGE" else shlex.quote(w) for w in words)


def shown(path: Path, cwd: Path, program: bool = False) -> str:
    """`path` as a command line gives it in `cwd`: relative when below it, else absolute;
    a `program` always with a slash, so that the shell does not look it up on PATH."""
    path = Path(path).absolute()
    try:
        relative = path.relative_to(cwd)
    except ValueError:
        return str(path)
    return f"./{relative}" if program and len(relative.parts) == 1 else str(relative)


def train_step(recipe: demo.Recipe, split: demo.Split, work: Path, ui: UI,
               epochs: Optional[int] = None) -> Path:
    """Train the demo model and save it as a Keras file, the source model of convert."""
    from qdeploy.quantize.tfquiet import keras as import_keras

    keras = import_keras()

    epochs = epochs or recipe.data["train"]["epochs"]
    with ui.step(f"Training the demo model on {len(split.x_train)} MNIST images", epochs) as tick:
        class Tick(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                tick(epoch + 1, epochs)

        model = demo.train(recipe, split, epochs, callbacks=[Tick()])
    path = work / "mnist.keras"
    model.save(path)
    return path


def convert_step(recipe: demo.Recipe, split: demo.Split, model_path: Path, work: Path,
                 out_dir: Path, ui: UI) -> ConvertResult:
    """Full-integer conversion, calibrated on the first training images (and the next
    few held back for convert's fidelity gate)."""
    from qdeploy.quantize.fidelity import HELD_BACK

    settings = recipe.data["convert"]
    calib = work / "calibration.npy"
    np.save(calib, split.x_train[: settings["num_calib"] + HELD_BACK])
    labels = work / "labels.txt"
    labels.write_text("\n".join(recipe.data["labels"]) + "\n", encoding="utf-8")
    with ui.step("Calibrating and converting to full integer", settings["num_calib"]) as tick:
        result = convert(model_path, calib, out_dir, num_calib=settings["num_calib"],
                         io_type=settings["io"],
                         preprocess=parse_preprocess(settings["preprocess"]),
                         labels=labels, progress=tick,
                         calib_label=f"bundled MNIST, first {settings['num_calib']} "
                                     "training images")
    return result


def evaluate_step(split: demo.Split, work: Path, out_dir: Path, ui: UI) -> Evaluation:
    """Float vs int8 accuracy on the held-out images."""
    heldout = work / "heldout.npz"
    np.savez(heldout, x=split.x_heldout, y=split.y_heldout)
    with ui.step(f"Evaluating on {len(split.x_heldout)} held-out images",
                 2 * len(split.x_heldout)) as tick:
        done = [0]

        def both_models(i, total):
            done[0] += 1
            tick(done[0], 2 * total)

        return evaluate(out_dir, heldout, progress=both_models)


def compile_step(out_dir: Path, ui: UI):
    """Compile for the Edge TPU when edgetpu_compiler is installed, else run the preflight."""
    from qdeploy.edgetpu.compiler import compile_or_preflight

    with ui.step("Compiling for the Edge TPU (or predicting the compiler's verdict)"):
        return compile_or_preflight(out_dir)


def push_step(out_dir: Path, ui: UI, remote_dir: Optional[Path] = None,
              reports_dir: Optional[Path] = None):
    """Rehearse a deployment: push to the `local` target and benchmark there.

    Without `remote_dir` the release goes where this machine's `qrun` looks for the current
    deployment ($QDEPLOY_HOME, else ~/qdeploy), so `qrun classify IMAGE` works afterwards.
    """
    from qdeploy.push.pipeline import push_local

    with ui.step("Pushing to the local target and benchmarking"):
        return push_local(out_dir, Path(reports_dir or "reports"), remote_dir)
