"""`qdeploy push` and `qdeploy rollback`: parse options, call qdeploy.push (fleet, pipeline),
show the outcome (qdeploy.cli.push_view)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from qdeploy.cli.push_view import LineProgress, RichProgress, print_table
from qrun.errors import UserError

commands = typer.Typer()  # added to the qdeploy app by qdeploy.cli

TARGET_HELP = ("\\[user@]host[:port] or a ~/.ssh/config Host alias; 'local' for this machine "
               "(no SSH). Repeatable.")
REMOTE_DIR_HELP = ("Release directory on the device (releases/, current, venv/). Default: "
                   "~/qdeploy; on the local target $QDEPLOY_HOME when set.")


def _targets(target: List[str], inventory: Optional[Path]):
    from qdeploy.remote import inventory as inv
    from qdeploy.remote.targets import parse_target

    found = [parse_target(t) for t in target]
    if inventory is not None:
        found += [t for t in inv.load(inventory) if t not in found]
    return found


def check_eval(data: Optional[Path], bench: bool) -> Optional[Path]:
    """--eval checked before connecting (qdeploy.push.evaluation.check_data)."""
    from qdeploy.push.evaluation import check_data

    return check_data(data, bench)


def native_only(engine: str, **given) -> None:
    """The options the exported playbook does not carry: refused under --engine ansible
    rather than silently dropped."""
    used = [f"--{name.replace('_', '-')}" for name, value in given.items() if value]
    if engine == "ansible" and used:
        named = " and ".join(used)
        raise UserError(f"{named} {'runs' if len(used) == 1 else 'run'} with the native "
                        "engine only (the exported playbook does not carry "
                        f"{'it' if len(used) == 1 else 'them'}); drop --engine ansible, or "
                        f"push without {named}")


def _bench_image(path: Optional[Path]) -> Optional[Path]:
    """--bench-image checked before connecting: a readable image file."""
    if path is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except FileNotFoundError:
        raise UserError(f"--bench-image {path} does not exist; give a JPEG, PNG or BMP file") \
            from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UserError(f"--bench-image {path} is not an image ({exc.__class__.__name__}); "
                        "give a JPEG, PNG or BMP file") from None
    return Path(path)


def _runner_extras(extras: List[str]) -> Optional[tuple]:
    from qdeploy.push.wheel import check_extras

    return check_extras(e.strip() for part in extras for e in part.split(",") if e.strip()) \
        or None


def _bench_video(path: Optional[Path]) -> Optional[Path]:
    """--bench-video checked before connecting: a file (its frames are decoded on the device,
    which says when they cannot be)."""
    if path is not None and not Path(path).is_file():
        raise UserError(f"--bench-video {path} does not exist; give a video file (MP4, MKV, "
                        "AVI, ...)")
    return path


def _options(**kw):
    from qdeploy.push.options import PushOptions

    return PushOptions(**{k: v for k, v in kw.items() if v is not None})


@commands.command()
def push(
    directory: Path = typer.Argument(Path("qdeploy-out"),
                                     help="A qdeploy convert/import/compile output directory, "
                                     "or a bare .tflite model (imported into a cache "
                                     "directory first, as qdeploy import would)."),
    target: List[str] = typer.Option([], "--target", "-t", help=TARGET_HELP),
    inventory: Optional[Path] = typer.Option(
        None, "--inventory", "-i",
        help="File with one target per line (or an Ansible INI inventory's host lines)."),
    remote_dir: Optional[str] = typer.Option(None, "--remote-dir", help=REMOTE_DIR_HELP),
    python: str = typer.Option("python3", "--python",
                               help="The device's Python, for the runner venv."),
    wheelhouse: Optional[Path] = typer.Option(
        None, "--wheelhouse",
        help="Directory of dependency wheels for the device (offline devices: pip uses only "
             "these)."),
    bench: bool = typer.Option(True, "--bench/--no-bench",
                               help="Run qrun bench on the device after the push."),
    bench_runs: Optional[int] = typer.Option(None, "--bench-runs", min=1,
                                             help="Timed runs for qrun bench (its default: 100)."),
    compare: bool = typer.Option(False, "--compare",
                                 help="Bench every variant (float, int8, edgetpu) and store each."),
    bench_image: Optional[Path] = typer.Option(
        None, "--bench-image",
        help="Also time whole frames of the model's task on this image (qrun bench --image: "
             "preprocess, invoke, postprocess); qdeploy report shows frames per second."),
    bench_video: Optional[Path] = typer.Option(
        None, "--bench-video", metavar="FILE",
        help="Also run this video's frames through qrun's pipeline on the device (qrun bench "
             "--video: frames per second, each stage's median and p99); sent once per "
             "content, installs the runner's video extra (PyAV); qdeploy report shows stream "
             "fps."),
    runner_extras: List[str] = typer.Option(
        [], "--runner-extras", metavar="EXTRA",
        help="Install the runner with this extra (video: PyAV, for qrun detect|classify|"
             "segment|pose on videos, cameras and streams). Repeatable."),
    eval_data: Optional[Path] = typer.Option(
        None, "--eval", metavar="DIR",
        help="After the benchmark, evaluate every variant on the device on these labelled "
             "images (COCO, YOLO or images/ + masks/, as qdeploy evaluate takes them; sent "
             "once, by content): mAP, mIoU or OKS AP stored beside the latency (installs "
             "pycocotools, the eval extra, there when needed). With --compare every variant "
             "gets its figure in the store."),
    reports: Path = typer.Option(Path("reports"), "--reports",
                                 help="Where reports and the SQLite store go."),
    identity: Optional[Path] = typer.Option(None, "--identity",
                                            help="Private key file (besides agent and ~/.ssh/id_*)."),
    known_hosts: Optional[Path] = typer.Option(None, "--known-hosts",
                                               help="known_hosts file (default ~/.ssh/known_hosts)."),
    accept_new: bool = typer.Option(False, "--accept-new",
                                    help="Record an unknown host's key (a changed key is still "
                                         "refused)."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config",
                                              help="ssh config file (default ~/.ssh/config)."),
    connect_timeout: Optional[float] = typer.Option(
        None, "--connect-timeout", min=0.1,
        help="Seconds to wait for a device to answer (default: ConnectTimeout from the ssh "
             "config, else 10)."),
    command_timeout: float = typer.Option(
        1800.0, "--command-timeout", min=1.0,
        help="Seconds a device command (upload, runner install's steps, bench, verify) may "
             "stay silent before the push to it fails, naming the step."),
    keepalive: Optional[float] = typer.Option(
        None, "--keepalive", min=0.0, metavar="SECONDS",
        help="Send an SSH keepalive after this many silent seconds; a device that answers "
             "none for 3 in a row (ServerAliveCountMax) is gone. Default: ServerAliveInterval "
             "from the ssh config, else 5; 0: off."),
    jobs: int = typer.Option(8, "--jobs", "-j", min=1, help="Targets pushed at once."),
    verify: Optional[bool] = typer.Option(
        None, "--verify/--no-verify",
        help="Run the deployment's reference inputs on the device and compare its outputs "
             "with the host's int8 model (top-1 agreement, max |Δ|). Default: when the bench "
             "runs. A failed verify fails the push and switches current back."),
    verify_tolerance: Optional[float] = typer.Option(
        None, "--verify-tolerance", min=0.0, metavar="STEPS",
        help="Largest output difference allowed, in output quantization steps "
             "(default: qdeploy.push.crosscheck.DEFAULT_STEPS, 16)."),
    verify_against: Optional[Path] = typer.Option(
        None, "--verify-against", metavar="DIR",
        help="Compute the host's outputs with this deployment's int8 model and preprocessing "
             "(e.g. the one you validated) instead of DIRECTORY's."),
    engine: str = typer.Option("native", "--engine",
                               help="native (qdeploy's own process pool) or ansible (the "
                                    "exported playbook through ansible-runner; needs "
                                    "--inventory and qdeploy[ansible])."),
    serial: str = typer.Option("100%", "--serial", help="--engine ansible: rolling batches, "
                               "e.g. 1,10%,50% (Ansible's serial)."),
    max_fail: str = typer.Option("100%", "--max-fail", help="--engine ansible: failure budget "
                                 "per batch, e.g. 10%; later batches do not start once a "
                                 "batch exceeds it."),
):
    """Push DIRECTORY to the targets, install the runner, benchmark and verify there, store
    the reports."""
    from rich.console import Console

    from qdeploy.modelimport import cache
    from qdeploy.push.fleet import push_many

    native_only(engine, eval=eval_data, bench_image=bench_image, bench_video=bench_video,
                runner_extras=runner_extras)
    found = _targets(target, inventory) if engine != "ansible" else []
    cached = cache.bare_file_import(directory)
    if cached is not None:  # a bare model file: pushed as its cached import
        for line in cached.lines(directory):
            typer.echo(line, err=True)
        directory = cached.directory
    options = _options(remote_dir=remote_dir, python=python, wheelhouse=wheelhouse,
                       bench=bench, bench_runs=bench_runs, compare=compare,
                       bench_image=_bench_image(bench_image), reports_dir=reports,
                       bench_video=_bench_video(bench_video),
                       runner_extras=_runner_extras(runner_extras),
                       eval_data=check_eval(eval_data, bench),
                       identity=identity, known_hosts=known_hosts, accept_new=accept_new,
                       ssh_config=ssh_config, connect_timeout=connect_timeout,
                       command_timeout=command_timeout, keepalive=keepalive, jobs=jobs,
                       verify=verify,
                       verify_tolerance=verify_tolerance, verify_against=verify_against)
    err = Console(stderr=True)
    run, names = (lambda p: push_many(found, directory, options, p)), [t.name for t in found]
    if engine == "ansible":
        run, names = ansible_engine(directory, inventory, target, options, serial, max_fail)
    elif engine != "native":
        raise UserError(f"--engine {engine!r} is not an engine; pass native or ansible")
    if err.is_terminal:
        with RichProgress(names, console=err) as progress:
            results = run(progress)
    else:
        results = run(LineProgress())
    failed = [r for r in results if not r.ok]
    if len(results) == 1 and failed:
        raise UserError(failed[0].error)
    out = Console()
    print_table(results, out if out.is_terminal else Console(width=160), errors=False)
    for r in results:
        for path in r.report_files:
            typer.echo(f"{r.target}: report {path}")
        for note in r.notes:
            print(f"note: {r.target}: {note}", file=sys.stderr)
    for r in failed:
        print(f"error: {r.error}", file=sys.stderr)
    if failed:
        raise typer.Exit(1)


def ansible_engine(directory, inventory, target, options, serial, max_fail):
    """The ansible engine's push (a function of the progress view) and its host names."""
    from qdeploy.ansible import export, runner

    if inventory is None or target:
        raise UserError("--engine ansible pushes the hosts of --inventory FILE (not --target); "
                        "pass an Ansible inventory")
    export.parse_serial(serial)
    export.parse_max_fail(max_fail)
    runner.require_ansible()
    names = runner.inventory_hosts(inventory)
    return (lambda p: runner.push_fleet(directory, inventory, options, serial, max_fail, p,
                                        hosts=names), names)


@commands.command()
def rollback(
    target: List[str] = typer.Option([], "--target", "-t", help=TARGET_HELP),
    inventory: Optional[Path] = typer.Option(None, "--inventory", "-i",
                                             help="File with one target per line."),
    to: Optional[str] = typer.Option(None, "--to",
                                     help="Release id to switch to (default: the previous)."),
    remote_dir: Optional[str] = typer.Option(None, "--remote-dir", help=REMOTE_DIR_HELP),
    python: str = typer.Option("python3", "--python", help="The device's Python."),
    identity: Optional[Path] = typer.Option(None, "--identity", help="Private key file."),
    known_hosts: Optional[Path] = typer.Option(None, "--known-hosts", help="known_hosts file."),
    accept_new: bool = typer.Option(False, "--accept-new", help="Record an unknown host's key."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", help="ssh config file."),
    connect_timeout: Optional[float] = typer.Option(
        None, "--connect-timeout", min=0.1,
        help="Seconds to wait for a device to answer (default: ConnectTimeout from the ssh "
             "config, else 10)."),
):
    """Switch each target's `current` release back to the previous one (or --to RELEASE)."""
    from qdeploy.push.pipeline import rollback_target

    found = _targets(target, inventory)
    if not found:
        raise UserError("no target: pass --target [user@]host[:port] or --inventory FILE")
    options = _options(remote_dir=remote_dir, python=python, identity=identity,
                       known_hosts=known_hosts, accept_new=accept_new, ssh_config=ssh_config,
                       connect_timeout=connect_timeout)
    failed = []
    for t in found:
        try:
            links = rollback_target(t, options, to)
        except UserError as exc:
            failed.append(exc)
            print(f"error: {exc}", file=sys.stderr)
            continue
        typer.echo(f"{t.name}: current -> {links['current']} (previous: {links['previous']})")
    if failed:
        raise typer.Exit(1)
