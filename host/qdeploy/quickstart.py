"""`qdeploy quickstart`: the whole pipeline on the bundled MNIST demo, no arguments.

One function per step, run in order by `run`: train the tutorial's model on the
bundled data, convert it to full integer, evaluate what that cost on the held-out
images, then the later steps of the pipeline. Each step reports through `ui`, which
the command line supplies, so this module decides what happens and the CLI only
prints.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Optional, Protocol

import numpy as np

from qdeploy import demo
from qdeploy.convert import ConvertResult, convert
from qdeploy.evaluate import Evaluation, evaluate
from qrun.preprocess import parse_preprocess

Progress = Callable[[int, int], None]


class UI(Protocol):
    def step(self, title: str, total: Optional[int] = None) -> ContextManager[Progress]: ...

    def note(self, text: str) -> None: ...


@dataclass
class QuickstartResult:
    out_dir: Path
    conversion: ConvertResult
    evaluation: Evaluation
    extra: dict = field(default_factory=dict)


def run(out_dir: Path, ui: UI, epochs: Optional[int] = None) -> QuickstartResult:
    """Train, convert and evaluate the demo model into `out_dir`."""
    recipe = demo.load_recipe()
    split = demo.load_split(recipe)
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="qdeploy-quickstart-") as work:
        work = Path(work)
        model_path = train_step(recipe, split, work, ui, epochs)
        conversion = convert_step(recipe, split, model_path, work, out_dir, ui)
        evaluation = evaluate_step(split, work, out_dir, ui)
    return QuickstartResult(out_dir, conversion, evaluation)


def train_step(recipe: demo.Recipe, split: demo.Split, work: Path, ui: UI,
               epochs: Optional[int] = None) -> Path:
    """Train the demo model and save it as a Keras file, the source model of convert."""
    from qdeploy.tfquiet import keras as import_keras

    keras = import_keras()

    epochs = epochs or recipe.data["train"]["epochs"]
    with ui.step(f"Training the demo model on {len(split.x_train)} MNIST images", epochs) as tick:
        class Tick(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                tick(epoch + 1, epochs)

        model = demo.train(recipe, split, epochs, callbacks=[Tick()])
    path = work / "mnist_seed.keras"
    model.save(path)
    return path


def convert_step(recipe: demo.Recipe, split: demo.Split, model_path: Path, work: Path,
                 out_dir: Path, ui: UI) -> ConvertResult:
    """Full-integer conversion, calibrated on the first training images."""
    settings = recipe.data["convert"]
    calib = work / "calibration.npy"
    np.save(calib, split.x_train[: settings["num_calib"]])
    labels = work / "labels.txt"
    labels.write_text("\n".join(recipe.data["labels"]) + "\n", encoding="utf-8")
    with ui.step("Calibrating and converting to full integer", settings["num_calib"]) as tick:
        result = convert(model_path, calib, out_dir, num_calib=settings["num_calib"],
                         io_type=settings["io"],
                         preprocess=parse_preprocess(settings["preprocess"]),
                         labels=labels, progress=tick)
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
