"""The bundled demo: the quantization tutorial's MNIST model, its data and its recipe.

The recipe is `models/mnist-demo.json` in the source checkout: which files hold the
data (with their sha256), how the bundled MNIST test split is divided into a training
part and a held-out part, the architecture and the training settings. Beside the data,
`models/mnist/samples/` holds one held-out digit per class as a PNG, its true label in
its name (`digit-7.png`): what to classify once quickstart has deployed the model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from qdeploy.quantize.datasets import read_idx
from qrun.errors import UserError
from qrun.model.manifest import sha256_file

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
RECIPE_NAME = "mnist-demo.json"
SAMPLES_DIR = "mnist/samples"  # under the models directory: digit-<label>.png
SAMPLE_LABEL = 7  # the digit quickstart suggests classifying


@dataclass
class Recipe:
    root: Path
    data: dict

    def file(self, key: str) -> Path:
        return self.root / self.data["files"][key]["path"]


@dataclass
class Split:
    x_train: np.ndarray  # uint8 [N, 28, 28]
    y_train: np.ndarray
    x_heldout: np.ndarray
    y_heldout: np.ndarray


def load_recipe(models_dir: Optional[Path] = None) -> Recipe:
    """Read the recipe and check the bundled data files against their sha256."""
    root = Path(models_dir or os.environ.get("QDEPLOY_MODELS_DIR") or MODELS_DIR)
    path = root / RECIPE_NAME
    if not path.is_file():
        raise UserError(f"the bundled demo recipe {path} is missing; run quickstart from a "
                        "source checkout installed with pip install -e")
    recipe = Recipe(root, json.loads(path.read_text(encoding="utf-8")))
    for key, entry in recipe.data["files"].items():
        f = recipe.file(key)
        if not f.is_file() or sha256_file(f) != entry["sha256"]:
            raise UserError(f"bundled demo file {f} is missing or changed; restore it from git")
    return recipe


def sample_digit(recipe: Recipe, label: int = SAMPLE_LABEL) -> Optional[Path]:
    """The bundled held-out digit of class `label` (`models/mnist/samples/digit-7.png`, a
    28x28 grayscale PNG); None when the models directory has none."""
    path = recipe.root / SAMPLES_DIR / f"digit-{label}.png"
    return path if path.is_file() else None


def load_split(recipe: Recipe) -> Split:
    """The training part and the held-out part of the bundled MNIST test split."""
    x = read_idx(recipe.file("images"))
    y = read_idx(recipe.file("labels")).astype(np.int64)
    n_train = recipe.data["split"]["train"]
    n_held = recipe.data["split"]["heldout"]
    return Split(x[:n_train], y[:n_train], x[-n_held:], y[-n_held:])


def build_model():
    """The tutorial's model: Reshape, Conv2D(12, 3x3, relu), MaxPool(2x2), Flatten, Dense(10)."""
    from qdeploy.quantize.tfquiet import keras as import_keras

    keras = import_keras()

    return keras.Sequential([
        keras.layers.Input((28, 28)),
        keras.layers.Reshape((28, 28, 1)),
        keras.layers.Conv2D(12, (3, 3), activation="relu"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])


def train(recipe: Recipe, split: Split, epochs: Optional[int] = None, callbacks=None):
    """Train the demo model on the training part, pixels scaled to [0, 1]."""
    from qdeploy.quantize.tfquiet import keras as import_keras

    keras = import_keras()

    settings = recipe.data["train"]
    keras.utils.set_random_seed(settings["seed"])
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(split.x_train.astype(np.float32) / 255.0, split.y_train,
              epochs=epochs or settings["epochs"], batch_size=settings["batch_size"],
              verbose=0, callbacks=callbacks or [])
    return model
