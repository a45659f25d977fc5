#!/usr/bin/env python3
"""`qrun evaluate` (what `qdeploy evaluate` and `push --eval` run) on N images of a
YOLOv8n-sized int8 detector, against a minimal script doing the same, side by side.

Target (issue 25): evaluating N images costs at most 1.2x the minimal script
(scripts/bench_evaluate_minimal.py): a loop of decode, letterbox, quantize, invoke, decode
of the head (scores >= 0.001, class-aware NMS at IoU 0.7, at most 300 per image, as
Ultralytics' val), then one pycocotools call.

The model is scripts/bench_qrun_detect.py's seeded stand-in (input [1, 640, 640, 3] int8,
output [1, 84, 8400] int8, or the same body at --size; built with TF once and cached under
~/.cache/qdeploy/bench/), imported as a deployment with 80 labels. The images are seeded
640x480 JPEGs (at --size S: S x 3S/4) of smooth colour blobs whose ground truth is the
model's own 5 best boxes per image (by the minimal script, here), moved by up to 4 px (so
mAP is neither 0 nor 1, and both paths must give the same figure). Both paths run the same
interpreter file with the same threads; the rounds alternate so drift on a noisy machine
hits both, and the best round of each is compared (as timeit does: noise only ever adds
time).

Here (default): both paths in this process, the loop timed (qrun's includes loading its
interpreter, the minimal script's does not).

--box: on the Pi in a box (scripts/pi-in-a-box: Debian arm64 under qemu-user). The model,
the deployment and the data are made here; the box is started in a scratch run directory,
`qdeploy push --no-bench --no-verify` installs the runner and the release there (pycocotools
then from the box's wheelhouse), the data and the minimal script go over SSH, and each path
runs in the box as the whole command a user types, timed in the box from start to exit:
`qrun evaluate DIR --json` against `python bench_evaluate_minimal.py MODEL DIR`, both with
the runtime's default threads, after one warm-up of each on one image. The box is stopped
and removed at the end. Emulation is ~100x slower than a Pi: the figures compare the two
paths, they are no Pi's speed.

    PYTHONPATH=host:device:. .venv/bin/python scripts/bench_evaluate.py [--images 40]
    PYTHONPATH=host:device:. .venv/bin/python scripts/bench_evaluate.py --box [--images 8]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "host"), str(ROOT / "device"), str(ROOT)]
TARGET_RATIO = 1.2
CLASSES = 80
MINIMAL = ROOT / "scripts" / "bench_evaluate_minimal.py"
PIBOX = ROOT / "scripts" / "pi-in-a-box"
BOX_START_SECONDS = 45 * 60  # a first start builds the rootfs: minutes
BOX_COMMAND_SECONDS = 3600  # one command in the box (an emulated evaluation of N images)
BOX_WORK = "bench-evaluate"  # in the box user's home: the data and the minimal script
BOX_HOME = "$HOME/qdeploy"  # push's default remote dir: current release and runner venv
BOX_PYTHON = f"{BOX_HOME}/venv/bin/python"


def load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def detect_bench():
    return load_script("bench_qrun_detect", ROOT / "scripts" / "bench_qrun_detect.py")


def minimal_script():
    """scripts/bench_evaluate_minimal.py as a module: its Minimal, the hand-written path."""
    return load_script("bench_evaluate_minimal", MINIMAL)


def image_size(minimal) -> tuple:
    """4:3 images as wide as the model's input: 640x480 at 640; at a smaller side as small,
    so qrun's JPEG draft decoding (a 1/2 scale decode of images twice the input) never makes
    its pixels differ from the minimal script's."""
    side = int(minimal.inp["shape"][1])
    return side, side * 3 // 4


def make_data(directory: Path, count: int, minimal) -> Path:
    """`count` seeded JPEGs in images/ and COCO annotations.json: each image's 5 best
    detections (by the minimal script), moved by up to 4 px, as its ground truth."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    (directory / "images").mkdir(parents=True)
    images, annotations = [], []
    for k in range(1, count + 1):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        size = image_size(minimal)
        img = Image.fromarray(small).resize(size, Image.BICUBIC).filter(ImageFilter.GaussianBlur(3))
        name = f"img{k:04d}.jpg"
        img.save(directory / "images" / name, quality=90)
        images.append({"id": k, "file_name": name, "width": size[0], "height": size[1]})
        for found in minimal.detections(directory / "images" / name, k)[:5]:
            x, y, w, h = (np.asarray(found["bbox"]) + rng.uniform(-4, 4, 4)).tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": k,
                                "category_id": found["category_id"], "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
    categories = [{"id": c, "name": f"class{c}"} for c in range(CLASSES)]
    (directory / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return directory


def make_deployment(tmp: Path, model: Path) -> Path:
    """The stand-in imported as a detect deployment with 80 labels."""
    from qdeploy.modelimport.importer import import_model

    labels = tmp / "labels.txt"
    labels.write_text("".join(f"{c} class{c}\n" for c in range(CLASSES)))
    # Ultralytics feeds pixels / 255 ("unit"); the bare stand-in has no metadata saying so
    return import_model(model, labels=labels, preprocess="unit", out=tmp / "dep").out_dir


def model_line(model: Path, minimal, images: int) -> str:
    shape = lambda d: list(map(int, d["shape"]))  # noqa: E731
    return (f"model: {model.name} (input {shape(minimal.inp)} int8, head "
            f"{shape(minimal.out)} int8); {images} images %dx%d JPEG" % image_size(minimal))


def verdict(ours: list, theirs: list, images: int, rounds: int, what: str) -> float:
    """Print each path's best round in images/s and their ratio; the ratio."""
    q, m = min(ours), min(theirs)  # best of the rounds, as timeit: the noise only adds
    print(f"qrun evaluate{what}: {q:.2f} s = {images / q:.2f} images/s (best of {rounds})")
    print(f"minimal script{what}: {m:.2f} s = {images / m:.2f} images/s")
    median_ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"ratio {q / m:.2f}x, of the medians {median_ratio:.2f}x (target <= {TARGET_RATIO}x)")
    return q / m


# --- here: both paths in this process ------------------------------------------------------

def bench_here(args, model: Path) -> float:
    from qrun.measure import evaluate as ev

    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        tmp = Path(tmp)
        dep = make_deployment(tmp, model)
        minimal = minimal_script().Minimal(dep / "model_int8.tflite", args.threads)
        data = make_data(tmp / "data", args.images, minimal)
        ev_threads = ev.deployment.load
        # the same threads for both: evaluate's interpreters get --threads too
        ev.deployment.load = lambda choice, threads=None: ev_threads(choice, args.threads)
        ours, theirs, figures = [], [], None
        minimal.evaluate(data)  # warm-up (file cache, allocator), both paths
        ev.evaluate(dep, data, limit=2)
        for _ in range(args.rounds):
            start = time.perf_counter()
            doc = ev.evaluate(dep, data)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            figures = (doc["variants"]["int8"]["map50_95"], minimal.evaluate(data))
            theirs.append(time.perf_counter() - start)
    print(f"{model_line(model, minimal, args.images)}; here, {args.threads} threads")
    ratio = verdict(ours, theirs, args.images, args.rounds, "")
    print(f"mAP50-95 {figures[0]:.5f} vs {figures[1]:.5f}")
    return ratio


# --- in the Pi in a box ----------------------------------------------------------------------

class BoxFault(Exception):
    """A step in or around the box failed: one line for the user."""


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def pibox(run_dir: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PIBOX), "--run-dir", str(run_dir), *args],
                          capture_output=True, text=True, timeout=timeout)


class Box:
    """The Pi in a box, started in `run_dir` (the default cache: built there when missing);
    `with Box(...)` stops it and removes its rootfs at the end, whatever happened."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.info: dict = {}

    def __enter__(self) -> "Box":
        print("starting the Pi in a box (scripts/pi-in-a-box start) ...", file=sys.stderr)
        try:
            started = pibox(self.run_dir, "start", timeout=BOX_START_SECONDS)
            if started.returncode != 0:
                raise BoxFault(f"scripts/pi-in-a-box start failed: {last_line(started.stderr)}")
            self.info = json.loads((self.run_dir / "pibox.json").read_text())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        stopped = pibox(self.run_dir, "stop", "--remove", timeout=300)
        if stopped.returncode != 0:
            print(f"warning: scripts/pi-in-a-box stop failed: {last_line(stopped.stderr)}",
                  file=sys.stderr)

    def run(self, command: str, what: str, stdin: bytes = b"") -> str:
        """`command` in the box's shell over SSH; its stdout. A failure is a BoxFault."""
        done = subprocess.run(["ssh", "-F", self.info["ssh_config"], "pibox", command],
                              input=stdin, capture_output=True, timeout=BOX_COMMAND_SECONDS)
        if done.returncode != 0:
            raise BoxFault(f"{what} failed in the box (exit {done.returncode}): "
                           f"{last_line(done.stderr.decode(errors='replace'))}")
        return done.stdout.decode(errors="replace")

    def timed(self, command: str, what: str) -> tuple:
        """(seconds from start to exit measured in the box, the command's stdout)."""
        out = self.run(f"cd {BOX_WORK} && s=$(date +%s.%N) && {{ {command} >out.txt "
                       f"2>err.txt; rc=$?; }}; e=$(date +%s.%N); "
                       f"if [ $rc -ne 0 ]; then tail -n 3 err.txt >&2; exit $rc; fi; "
                       f"echo \"$s $e\"; cat out.txt", what)
        first, _, rest = out.partition("\n")
        s, e = (float(v) for v in first.split())
        return e - s, rest

    def push(self, dep: Path, scratch: Path) -> None:
        """The release and the runner via `qdeploy push` (no bench, no verify)."""
        (scratch / "empty-ssh-config").write_text("")
        i = self.info
        argv = [sys.executable, "-m", "qdeploy", "push", str(dep),
                "--target", f"{i['user']}@{i['host']}:{i['port']}", "--identity", i["key"],
                "--known-hosts", i["known_hosts"], "--ssh-config",
                str(scratch / "empty-ssh-config"), "--reports", str(scratch / "reports"),
                "--no-bench", "--no-verify"]
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "host"), str(ROOT / "device"),
                                             env.get("PYTHONPATH", "")])
        done = subprocess.run(argv, capture_output=True, text=True, env=env,
                              timeout=BOX_COMMAND_SECONDS)
        if done.returncode != 0:
            raise BoxFault(f"qdeploy push to the box failed: "
                           f"{last_line(done.stderr or done.stdout)}")

    def send(self, data: Path) -> None:
        """The data set and the minimal script into ~/BOX_WORK, as one tar over SSH."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(data, arcname="data")
            tar.add(MINIMAL, arcname=MINIMAL.name)
        self.run(f"rm -rf {BOX_WORK} && mkdir {BOX_WORK} && tar -xf - -C {BOX_WORK}",
                 "the upload of the data and the minimal script", stdin=buffer.getvalue())


def bench_box(args, model: Path) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-box-") as tmp:
        tmp = Path(tmp)
        dep = make_deployment(tmp, model)
        minimal = minimal_script().Minimal(dep / "model_int8.tflite", args.threads)
        data = make_data(tmp / "data", args.images, minimal)
        (tmp / "run").mkdir()
        with Box(tmp / "run") as box:
            print("qdeploy push: the release and the runner ...", file=sys.stderr)
            box.push(dep, tmp)
            box.run(f"{BOX_PYTHON} -m pip install --quiet --no-index "
                    "--disable-pip-version-check pycocotools",
                    "pip install pycocotools (the eval extra, from the box's wheelhouse)")
            box.send(data)
            about = box.run(f"uname -m; nproc; {BOX_PYTHON} -c 'from importlib.metadata "
                            "import version; print(version(\"ai-edge-litert\"))'",
                            "the box's facts").split()
            qrun = f"QDEPLOY_HOME={BOX_HOME} {BOX_PYTHON} -m qrun evaluate data --json"
            hand = (f"{BOX_PYTHON} {MINIMAL.name} {BOX_HOME}/current/model_int8.tflite data")
            print("warm-up: each path on one image ...", file=sys.stderr)
            warm = (box.timed(f"{qrun} --limit 1", "qrun evaluate (warm-up)")[0],
                    box.timed(f"{hand} --limit 1", "the minimal script (warm-up)")[0])
            print(f"warm-up on one image: qrun evaluate {warm[0]:.1f} s, the minimal script "
                  f"{warm[1]:.1f} s", file=sys.stderr)
            ours, theirs, loops = [], [], []
            for k in range(args.rounds):
                print(f"round {k + 1}/{args.rounds} ...", file=sys.stderr)
                seconds, out = box.timed(qrun, "qrun evaluate")
                ours.append(seconds)
                ours_map = json.loads(out)["variants"]["int8"]["map50_95"]
                seconds, out = box.timed(hand, "the minimal script")
                theirs.append(seconds)
                hand_doc = json.loads(out)
                loops.append(hand_doc["seconds"])
    print(f"{model_line(model, minimal, args.images)}; in the Pi in a box: {about[0]} under qemu-user "
          f"on this machine's {about[1]} cores, ai-edge-litert {about[2]} "
          f"(its default threads)")
    ratio = verdict(ours, theirs, args.images, args.rounds,
                    " (the whole command, in the box)")
    print(f"(the minimal script's loop alone, without Python's start and imports: "
          f"{min(loops):.2f} s = {args.images / min(loops):.2f} images/s)")
    print(f"mAP50-95 {ours_map:.5f} vs {hand_doc['map50_95']:.5f}")
    return ratio


def interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # so the box is stopped and removed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None,
                        help="images in the data set (default: 40 here, 8 in the box)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="qrun/minimal runs, alternating (default: 3 here, 2 in the box)")
    parser.add_argument("--threads", type=int, default=2,
                        help="interpreter threads here (the box: the runtime's default)")
    parser.add_argument("--size", type=int, default=640,
                        help="the stand-in's input side (640: YOLOv8n's; smaller ones cost "
                             "less, for the slow emulated box)")
    parser.add_argument("--box", action="store_true",
                        help="run both paths in the Pi in a box (scripts/pi-in-a-box; root, "
                             "qemu-user): its images/s, not a Pi's")
    args = parser.parse_args()
    args.images = args.images or (8 if args.box else 40)
    args.rounds = args.rounds or (2 if args.box else 3)

    signal.signal(signal.SIGTERM, interrupted)
    model, _, _ = detect_bench().cached_inputs(side=args.size)
    try:
        ratio = bench_box(args, model) if args.box else bench_here(args, model)
    except BoxFault as fault:
        print(f"error: {fault}", file=sys.stderr)
        return 2
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
