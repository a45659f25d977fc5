"""Bad input to qrun: one `error: ...` line naming the problem and the fix, non-zero exit, no traceback."""

from __future__ import annotations

import pytest

from tests.fixtures.deployments import V1_025
from tests.fixtures.runner import one_error
from tests.paths import CORAL

MODEL = CORAL / f"{V1_025}.tflite"
CAT = CORAL / "cat.bmp"


def test_missing_image(run_qrun, tmp_path):
    one_error(run_qrun("classify", tmp_path / "nope.jpg", "--model", MODEL),
              "image not found", "nope.jpg")


def test_not_an_image(run_qrun):
    one_error(run_qrun("classify", CORAL / "imagenet_labels.txt", "--model", MODEL),
              "is not a readable image", "give a JPEG, PNG or BMP")


def test_truncated_model(run_qrun, tmp_path):
    broken = tmp_path / "truncated.tflite"
    broken.write_bytes(MODEL.read_bytes()[:4096])
    one_error(run_qrun("classify", CAT, "--model", broken),
              "truncated.tflite cannot be loaded as a TFLite model", "re-copy or re-convert")


def test_not_a_model(run_qrun):
    one_error(run_qrun("bench", "--model", CAT, "--runs", 1), "cannot be loaded as a TFLite model")


def test_missing_model(run_qrun, tmp_path):
    one_error(run_qrun("classify", CAT, "--model", tmp_path / "m.tflite"), "model not found")


def test_model_that_fails_when_run(run_qrun):
    one_error(run_qrun("bench", "--model", CORAL / "model_invoking_error.tflite", "--runs", 1),
              "model_invoking_error.tflite uses the custom op 'fake-op-double'")


def test_labels_that_do_not_fit(run_qrun):
    one_error(run_qrun("classify", CAT, "--model", MODEL, "--labels",
                       CORAL / "inat_bird_labels.txt"),
              "has 965 labels but the model outputs 1001 scores", "--labels")


def test_missing_labels(run_qrun, tmp_path):
    one_error(run_qrun("classify", CAT, "--model", MODEL, "--labels", tmp_path / "l.txt"),
              "labels file not found")


def test_segmentation_model_is_not_a_classifier(run_qrun):
    one_error(run_qrun("classify", CAT, "--model", CORAL / "deeplabv3_mnv2_dm05_pascal_quant.tflite"),
              "not one score per class", "classification model")


def test_segmentation_model_with_its_labels_blames_the_model_not_the_labels(run_qrun):
    """deeplab's own label file (21 classes) does not fit 513*513 outputs; the output's shape
    is the problem to report."""
    line = one_error(run_qrun("classify", CAT, "--model",
                              CORAL / "deeplabv3_mnv2_dm05_pascal_quant.tflite",
                              "--labels", CORAL / "pascal_voc_segmentation_labels.txt"),
                     "has shape [1, 513, 513]", "not one score per class")
    assert "labels" not in line


@pytest.mark.parametrize("args, needle", [
    (["--count", "0"], "--count must be at least 1"),
    (["--top-k", "0"], "--top-k must be at least 1"),
    (["--tpu", "usb0"], "--tpu 'usb0' is not an Edge TPU name"),
])
def test_bad_classify_options(run_qrun, args, needle):
    one_error(run_qrun("classify", CAT, "--model", MODEL, *args), needle)


@pytest.mark.parametrize("args, needle", [
    (["--runs", "0"], "--runs must be at least 1"),
    (["--warmup", "-1"], "--warmup must be 0 or more"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_bad_bench_options(run_qrun, args, needle):
    one_error(run_qrun("bench", "--model", MODEL, *args), needle)


def test_deployment_without_manifest(run_qrun, tmp_path):
    one_error(run_qrun("classify", CAT, "--model", tmp_path), "has no manifest.json")


def test_real_process_edgetpu_model_without_twin(qrun_process, lone_edgetpu_model):
    """The whole path in a real process: exit status 1, one line, no traceback."""
    out = qrun_process("classify", CAT, "--model", lone_edgetpu_model)
    line = one_error(out, "has no CPU twin")
    assert out.code == 1 and out.out == ""
    assert line.count("\n") == 0


def test_real_process_not_an_image(qrun_process):
    one_error(qrun_process("classify", CORAL / "COPYRIGHT.coral-test-data", "--model", MODEL),
              "is not a readable image")


def test_deployment_whose_model_file_is_gone(run_qrun, deployment_dir):
    for name in ("mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.25_128_quant_edgetpu.tflite"):
        (deployment_dir / name).unlink()
    one_error(run_qrun("classify", CAT, "--model", deployment_dir),
              "holds no model to run", "mobilenet_v1_0.25_128_quant.tflite", "which is missing",
              "push the deployment again")


def test_the_runtimes_delegate_announcement_is_dropped_and_its_errors_kept(tmp_path):
    """The runtime's C++ logger announces XNNPACK on fd 2 at the first interpreter; qrun
    drops that line, and only that line, from what reaches stderr."""
    import subprocess
    import sys

    script = tmp_path / "make.py"
    script.write_text(
        "import os, sys\n"
        "from qrun.model import runtime\n"
        "with runtime.announcements_dropped():\n"
        "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
        "    os.write(2, b'ERROR: something the runtime says\\n')\n"
        f"runtime.make_interpreter({str(CORAL / 'mobilenet_v1_0.25_128_quant.tflite')!r})\n"
        "print('made')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout == "made\n", done.stderr
    assert done.stderr == "ERROR: something the runtime says\n"
