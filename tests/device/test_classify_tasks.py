"""qrun classify on a manifest's task: the scores output it names, and tasks classify refuses."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from qrun.model import manifest as mf

from tests.fixtures.deployments import make_deployment
from tests.fixtures.multi_io_models import CLASS_NAMES, model_deployment
from tests.fixtures.runner import one_error
from tests.paths import CORAL

DEEPLAB = "deeplabv3_mnv2_dm05_pascal_quant.tflite"
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


@pytest.fixture
def solid(tmp_path):
    """solid("red") -> a PNG of one colour."""
    def make(name: str):
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (48, 40), COLOURS[name]).save(path)
        return path
    return make


@pytest.fixture
def two_head_deployment(tmp_path, two_head_classifier):
    heads = two_head_classifier
    assert heads["scores"] != 0, "the scores must not be output 0 for this test to tell"
    task = mf.Task(mf.CLASSIFY, labels=mf.LABELS, outputs={mf.SCORES: heads["scores"]})
    return model_deployment(tmp_path / "two-head", heads["model"], mf.INT8, task,
                            labels=heads["labels"])


@pytest.mark.parametrize("colour", sorted(COLOURS))
def test_classify_reads_the_output_the_task_names(run_qrun, two_head_deployment, solid,
                                                  two_head_classifier, colour):
    out = run_qrun("classify", solid(colour), "--model", two_head_deployment, "--top-k", "10",
                   "--json")
    assert out.code == 0, out.err
    data = json.loads(out.out)
    assert data["labels"][0] == colour and data["scores"][0] > 0.99  # logit 8 vs 0 and -8
    assert sorted(data["labels"]) == sorted(CLASS_NAMES)  # all 10 scores, not the 3 aux
    assert data["model"]["scores_output"] == two_head_classifier["scores"]


def test_a_bare_multi_output_file_keeps_reading_output_0(run_qrun, two_head_classifier, solid):
    """No manifest: output 0 is taken for the scores, as before (here the aux head)."""
    heads = two_head_classifier
    assert heads["aux"] == 0
    data = json.loads(run_qrun("classify", solid("red"), "--model", heads["model"], "--top-k",
                               "10", "--json").out)
    assert data["ids"][0] == 2 and len(data["ids"]) == 3  # aux (-4 R, 0, 4 R) of red
    assert data["model"]["scores_output"] == 0
    out = run_qrun("classify", solid("red"), "--model", heads["model"], "--labels",
                   heads["labels"])
    one_error(out, "colours.txt", "10", "3")  # ten labels do not fit the 3 aux values


def task_deployment(directory, task: mf.Task):
    """Coral's DeepLab deployed with `task` in its manifest."""
    make_deployment(directory, {mf.INT8: DEEPLAB}, labels="pascal_voc_segmentation_labels.txt")
    manifest = mf.load(directory)
    manifest.task = task
    mf.save(manifest, directory)
    return directory


@pytest.mark.parametrize("task, message", [
    (mf.Task(mf.SEGMENT, outputs={mf.MASK: 0}),
     ("error: this model's task is segment (manifest.json), not classify; run it with "
      "qrun segment")),
    (mf.Task(mf.POSE, outputs={mf.KEYPOINTS: 0}),
     "error: this model's task is pose (manifest.json), not classify; run it with qrun pose"),
    (mf.Task(mf.DETECT, outputs={mf.BOXES: 0}),
     ("error: this model's task is detect (manifest.json), not classify; run it with "
      "qrun detect")),
    (mf.Task(mf.RAW), "error: this model's task is raw: qrun bench and qrun verify run it"),
])
def test_other_tasks_are_refused_naming_the_command(run_qrun, tmp_path, task, message):
    folder = task_deployment(tmp_path / task.kind, task)
    out = run_qrun("classify", CORAL / "cat.bmp", "--model", folder)
    assert one_error(out) == message
    # The model file of that deployment is refused the same way.
    assert one_error(run_qrun("classify", CORAL / "cat.bmp", "--model", folder / DEEPLAB)) == \
        message


def test_deeplab_as_a_bare_file_is_still_refused_by_its_output_shape(run_qrun, tmp_path):
    import shutil

    alone = tmp_path / DEEPLAB
    shutil.copy(CORAL / DEEPLAB, alone)
    one_error(run_qrun("classify", CORAL / "cat.bmp", "--model", alone),
              "not one score per class")


def test_a_model_with_two_inputs_is_refused(run_qrun, two_input_model):
    one_error(run_qrun("classify", CORAL / "cat.bmp", "--model", two_input_model),
              "two_inputs_float.tflite has 2 inputs", "qrun bench and qrun verify")


def test_classify_task_of_a_coral_deployment_reads_output_0(deployment_dir):
    from qrun.tasks.classify import classify

    result = classify(CORAL / "cat.bmp", deployment_dir, top_k=2)
    assert result.output == 0
    assert {c.label for c in result.classes} == {"tiger cat", "Egyptian cat"}  # Coral's 283/286


def test_scores_output_of_a_manifest_without_a_scores_role(tmp_path):
    """A classify task that names no scores output (hand-written) reads output 0."""
    from qrun.model import deployment
    from qrun.tasks.classify import scores_output

    folder = task_deployment(tmp_path / "plain", mf.Task(mf.CLASSIFY))
    assert scores_output(deployment.resolve(folder)) == 0
    assert scores_output(deployment.resolve(CORAL / DEEPLAB)) == 0  # a bare file
