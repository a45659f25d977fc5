"""`qdeploy push --eval DIR`: the deployment's accuracy measured on the device, beside its
latency.

After the benchmark, DIR (labelled images in a layout qrun.measure.evaldata reads) goes to
`<remote_dir>/eval/<digest>/`, named by the sha256 of its file names and contents, so an
unchanged DIR is sent once (a `.complete` marker is written last: an interrupted upload is
sent again). pycocotools, the runner's `eval` extra, is installed into the device's venv
when the task needs it (detect, pose) and it is missing. Then `qrun evaluate --json` runs
there on every variant (the Edge TPU model when its delegate loads) and each variant's
figure is added to its benchmark report as `accuracy` (qrun.measure.report_contract), so
the store keeps it in the same row as the latency.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import Callable, Optional

from qdeploy.push import release
from qdeploy.remote.connection import Link
from qrun.errors import UserError
from qrun.measure import evaluate as task_evaluate

EVAL_DIR = "eval"  # under the remote dir: the data sets, one per digest
MARKER = ".complete"
NEEDS_COCO = ("detect", "pose")
EXTRA_PACKAGE = "pycocotools"


def check_data(data: Optional[Path], bench: bool) -> Optional[Path]:
    """--eval checked before connecting: a directory, and the benchmark it rides on."""
    if data is None:
        return None
    data = Path(data)
    if not data.is_dir():
        raise UserError(f"--eval {data} is not a directory; give the folder of labelled "
                        "images (COCO, YOLO or images/ + masks/)")
    if not bench:
        raise UserError("--eval stores accuracy beside the benchmark's latency; drop "
                        "--no-bench")
    return data


def files_of(data: Path) -> list:
    """Every file under `data` (hidden ones left out), sorted by relative path."""
    return sorted(p for p in Path(data).rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(data).parts))


def digest_of(data: Path) -> str:
    """sha256[:16] of the relative paths and contents of the files under `data`."""
    h = hashlib.sha256()
    for p in files_of(data):
        h.update(p.relative_to(data).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def send(conn: Link, data: Path, remote_dir: str, python: str,
         tell: Callable[[str], None]) -> tuple:
    """(the data's directory on the device, quoted for its shell; its digest); sent unless
    already there."""
    data = Path(data)
    if conn.is_local:
        return shlex.quote(str(data.resolve())), digest_of(data)
    digest = digest_of(data)
    sub = f"{EVAL_DIR}/{digest}"
    where = f"{release.shell_path(remote_dir)}/{sub}"
    if conn.run(f"test -f {where}/{MARKER}", what="the check for the eval data").ok:
        tell(f"data {digest} already on the device")
        return where, digest
    groups = {}
    for p in files_of(data):
        groups.setdefault(p.relative_to(data).parent.as_posix(), []).append(p)
    if not groups:
        raise UserError(f"--eval {data} holds no files")
    for parent, paths in sorted(groups.items()):
        tell(f"sending {len(paths)} file(s) of {parent}")
        target = sub if parent == "." else f"{sub}/{parent}"
        release.put_files(conn, python, remote_dir, target, paths, "the upload of the eval data")
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        marker = Path(scratch) / MARKER
        marker.write_text(digest + "\n")
        release.put_files(conn, python, remote_dir, sub, [marker], "the upload of the eval data")
    return where, digest


def ensure_extra(conn: Link, remote_dir: str, python: str, task: Optional[str],
                 wheelhouse: Optional[Path], tell: Callable[[str], None]) -> None:
    """pycocotools in the device's runner venv when the task needs it; with a `wheelhouse`
    (an offline device) its wheels from there, uploaded to `<remote_dir>/wheelhouse`."""
    if conn.is_local or task not in NEEDS_COCO:
        return
    venv_py = f"{release.shell_path(remote_dir)}/venv/bin/python"
    if conn.run(f"{venv_py} -c 'import pycocotools'", what="the eval extra check").ok:
        return
    tell(f"installing {EXTRA_PACKAGE} (the eval extra)")
    index = ""
    if wheelhouse is not None:
        wheels = sorted(Path(wheelhouse).glob(f"{EXTRA_PACKAGE}-*.whl"))
        if not wheels:
            raise UserError(f"--wheelhouse {wheelhouse} has no {EXTRA_PACKAGE} wheel for "
                            f"--eval of a {task} model; add it: pip download -d "
                            f"{wheelhouse} --only-binary=:all: --platform ... {EXTRA_PACKAGE}")
        release.put_files(conn, python, remote_dir, "wheelhouse", wheels,
                          "the upload of the eval extra")
        index = f"--no-index --find-links {release.shell_path(remote_dir)}/wheelhouse"
    result = conn.run(f"{venv_py} -m pip install --disable-pip-version-check --no-input "
                      f"--progress-bar off {index} {EXTRA_PACKAGE} 1>&2",
                      on_stderr=tell, timeout=1800.0, what="the eval extra install")
    if not result.ok:
        raise UserError(f"{conn.name}: pip could not install {EXTRA_PACKAGE} (the eval extra) "
                        f"on the device ({release.failure_text(result)}); connect it to the "
                        "internet or put its wheel in --wheelhouse")


def run(conn: Link, runner: str, remote_dir: str, where: str, timeout: float,
        tell: Callable[[str], None]) -> dict:
    """`qrun evaluate DIR --json` on the device's current release (`where`: DIR quoted for
    the device's shell): the parsed document."""
    cmd = f"QDEPLOY_HOME={release.shell_path(remote_dir)} {runner} evaluate {where} --json"
    document = release.qrun_json(conn, cmd, "qrun evaluate", timeout, tell)
    if document.get("kind") != task_evaluate.KIND:
        raise UserError(f"{conn.name}: qrun evaluate printed JSON that is not its document")
    return document


def attach(reports: list, document: dict, digest: str) -> int:
    """Add each variant's figure to its benchmark report as `accuracy`; how many got one."""
    metric = document["metric"]
    keys = task_evaluate.FIGURES[document["task"]]
    count = 0
    for report in reports:
        figures = document["variants"].get(report.get("model", {}).get("variant"))
        if figures is None:
            continue
        report["accuracy"] = {"metric": metric, "value": float(figures[metric]),
                              "images": int(document["data"]["images"]), "data": digest,
                              "against": document["data"]["against"],
                              "figures": {k: figures[k] for k in keys}}
        count += 1
    return count


def on_device(push, manifest, reports: list, runner: str) -> None:
    """Send --eval's data, install the extra when needed, run qrun evaluate on the device and
    add its figures to the benchmark `reports`; a note on the push says what it measured.

    `push` is the target's qdeploy.push.pipeline.TargetPush."""
    options, conn = push.options, push.conn
    tell = lambda line: push.tell("eval", line)  # noqa: E731
    tell("starting")
    where, digest = send(conn, options.eval_data, options.remote_dir, options.python, tell)
    ensure_extra(conn, options.remote_dir, options.python,
                 manifest.task.kind if manifest else None, options.wheelhouse, tell)
    document = run(conn, runner, options.remote_dir, where, options.command_timeout, tell)
    attach(reports, document, digest)
    label = task_evaluate.LABELS[document["metric"]]
    figures = ", ".join(f"{name} {f[document['metric']]:.4f}"
                        for name, f in document["variants"].items())
    push.result.notes.append(f"accuracy on {document['data']['images']} images: {label} "
                             f"{figures}")
