"""`qdeploy push`: ship a deployment to one or many targets, bench it there, bring the report home.

One target's push, in order, over one connection (`push_target`):
  1. probe the device's release state (one round trip),
  2. plan by sha256 and send only what changed into a new release, switch `current`
     (nothing to do when the manifests are equal),
  3. make sure the device's runner has the host's version (install the qrun wheel if not),
  4. run `qrun bench --json -` there, stream its progress, store the report
     (`reports/<target>-<time>.json` and a row in the SQLite store),
  5. verify (`qrun verify --json -` there, the same int8 model here, see qdeploy.push.crosscheck):
     the figures go into the store; outputs that differ beyond the tolerance fail the
     push and switch `current` back to the release it replaced.
A fleet (`push_many`) runs that per target in a bounded thread pool; a failed target is a
`PushResult` with its error, never an exception that stops the others.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import sys
import threading
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from qrun import atomic
from qrun.errors import UserError
from qdeploy.push import release
from qdeploy.remote import targets
from qdeploy.push import transfer
from qdeploy.push import wheel
from qdeploy.remote.ssh import Connection, LocalConnection
from qdeploy.reports.history import size_text
from qdeploy.push.crosscheck import DEFAULT_STEPS

DEFAULT_DIR = Path("qdeploy-out")
DEFAULT_REPORTS = Path("reports")
DEFAULT_JOBS = 8
BENCH_TIMEOUT_S = 1800.0

# progress(target, stage, detail, done_bytes, total_bytes)
Progress = Callable[[str, str, str, Optional[int], Optional[int]], None]


def _no_progress(target, stage, detail="", done=None, total=None):
    pass


@dataclass
class PushOptions:
    remote_dir: str = release.DEFAULT_REMOTE_DIR
    python: str = "python3"
    wheelhouse: Optional[Path] = None
    bench: bool = True
    runner: bool = True  # False: leave the device's runner alone (no check, no install)
    bench_runs: Optional[int] = None
    compare: bool = False
    reports_dir: Path = DEFAULT_REPORTS
    accept_new: bool = False
    identity: Optional[Path] = None
    known_hosts: Optional[Path] = None
    ssh_config: Optional[Path] = None
    connect_timeout: Optional[float] = None
    command_timeout: float = BENCH_TIMEOUT_S
    jobs: int = DEFAULT_JOBS
    verify: Optional[bool] = None  # None: verify when the bench runs; True: required
    verify_tolerance: float = DEFAULT_STEPS  # output quantization steps
    verify_against: Optional[Path] = None  # host side from this deployment instead

    @property
    def verifying(self) -> bool:
        return self.verify if self.verify is not None else self.bench


@dataclass
class PushResult:
    """What happened on one target; the CLI prints a table of these."""

    target: str
    ok: bool = False
    error: Optional[str] = None
    release_id: Optional[str] = None
    previous: Optional[str] = None  # `current` before this push, "releases/<id>"
    old_previous: Optional[str] = None  # `previous` before this push
    unchanged: bool = False
    files_sent: int = 0
    files_skipped: int = 0
    bytes_sent: int = 0
    transfer_s: float = 0.0
    runner_version: Optional[str] = None
    runner_installed: bool = False
    report_files: list = field(default_factory=list)
    report_ids: list = field(default_factory=list)
    reports: list = field(default_factory=list)  # qrun-bench report dicts
    verify: list = field(default_factory=list)  # qdeploy.push.crosscheck.Comparison per variant
    verify_skipped: list = field(default_factory=list)  # {"variant", "reason"}
    verify_note: Optional[str] = None  # why verify did not run
    seconds: float = 0.0


def connect(target: targets.Target, options: PushOptions):
    """An unopened connection for `target`: local, or SSH resolved through ~/.ssh/config."""
    if target.is_local:
        return LocalConnection(command_timeout=options.command_timeout)
    check_identity(options)
    config = targets.load_ssh_config(options.ssh_config)
    endpoint = targets.resolve(target, config, identity=options.identity,
                               known_hosts=options.known_hosts)
    return Connection(endpoint, accept_new=options.accept_new,
                      connect_timeout=options.connect_timeout,
                      command_timeout=options.command_timeout)


def check_identity(options: PushOptions) -> None:
    if options.identity is not None and not Path(options.identity).is_file():
        raise UserError(f"--identity {options.identity} does not exist; pass a private key file")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "target"


def _runner_command(conn, options: PushOptions) -> str:
    if conn.is_local:
        return f"{shlex.quote(sys.executable)} -m qrun"
    return f"{release.shell_path(options.remote_dir)}/venv/bin/qrun"


def run_bench(conn, options: PushOptions, on_line: Callable[[str], None]) -> dict:
    """Run `qrun bench --json -` against the device's current release; the parsed report."""
    args = ["bench", "--json", "-"]
    if options.compare:
        args.append("--compare")
    if options.bench_runs is not None:
        args += ["--runs", str(options.bench_runs)]
    cmd = (f"QDEPLOY_HOME={release.shell_path(options.remote_dir)} "
           f"{_runner_command(conn, options)} {' '.join(args)}")
    result = conn.run(cmd, on_stderr=on_line, timeout=options.command_timeout)
    if not result.ok:
        raise UserError(f"{conn.name}: qrun bench failed on the device "
                        f"({result.last_error_line()})")
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise UserError(f"{conn.name}: qrun bench printed no JSON report "
                        f"({result.stdout[:120]!r}); check `qrun bench` on the device") from None
    if not isinstance(report, dict):
        raise UserError(f"{conn.name}: qrun bench printed JSON that is not a report")
    return report


def store_report(report: dict, target: str, reports_dir: Path,
                 manifest=None) -> tuple[Path, list]:
    """Write the report under `reports_dir` atomically, then add it to the SQLite store.

    With the deployment's `manifest`, the store also records each model's size and the
    accuracy `qdeploy evaluate` measured, so reports can show them beside latency.
    """
    from qdeploy.reports import store

    reports_dir = Path(reports_dir)
    try:
        reports_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the reports directory {reports_dir} "
                        f"({exc.strerror}); pass --reports DIR") from None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = reports_dir / f"{_safe(target)}-{stamp}.json"
    try:
        atomic.write_text(path, json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write the report to {reports_dir} ({exc.strerror}); pass "
                        "--reports DIR") from None
    with store.open_store(reports_dir) as s:
        ids = s.add_reports(report, target, path)
        if manifest is not None:
            s.add_manifest_facts(manifest)
    return path, ids


@dataclass
class HostSide:
    """What the host compares the device with: reference inputs, int8 model, preprocessing."""

    samples: object  # numpy array
    reference_sha256: str
    model: Path
    preprocess: object  # qrun.preprocess.Preprocess


def host_side(deployment: transfer.Deployment, options: PushOptions) -> Optional[HostSide]:
    """The host's half of verify, or None when the deployment has no reference inputs.

    `--verify` given explicitly makes missing reference inputs an error. With
    `verify_against`, the host runs that deployment's int8 model and preprocessing
    on the pushed deployment's reference inputs.
    """
    from qdeploy.push import crosscheck as verify
    from qrun import manifest as qmanifest
    from qrun import verify as device_verify

    reference = verify.reference_file(deployment.directory, deployment.manifest)
    if reference is None:
        if options.verify:
            raise UserError(f"--verify: {deployment.directory} has no reference inputs "
                            f"(reference_inputs.npy); {device_verify.RERUN_CONVERT}")
        return None
    directory, manifest = deployment.directory, deployment.manifest
    if options.verify_against is not None:
        directory = Path(options.verify_against)
        manifest = qmanifest.load(directory)
    return HostSide(samples=device_verify.load_reference(reference),
                    reference_sha256=deployment.manifest.artifacts["reference"].sha256,
                    model=verify.int8_model(directory, manifest),
                    preprocess=manifest.preprocess)


NO_REFERENCE_NOTE = ("verify skipped: the deployment has no reference inputs; re-run qdeploy "
                     "convert to add them")


def run_verify(conn, host: HostSide, name: str, options: PushOptions, progress: Progress):
    """`qrun verify` on the device, compared here; the figures stored. A VerifyResult."""
    from qdeploy.push import crosscheck as verify

    progress(name, "verify", "starting", None, None)
    document = verify.run_on_device(
        conn, _runner_command(conn, options), release.shell_path(options.remote_dir),
        options.command_timeout, lambda line: progress(name, "verify", line, None, None))
    outcome = verify.check(document, host.samples, host.model, host.preprocess,
                           options.verify_tolerance, host.reference_sha256)
    store_verification(outcome, name, options.reports_dir)
    return outcome


def store_verification(outcome, target: str, reports_dir: Path) -> None:
    """Add each variant's verify figures to the report store."""
    from qdeploy.reports import store

    with store.open_store(reports_dir) as s:
        for c in outcome.comparisons:
            s.add_verification(store.Verification(
                target=target, model_sha256=c.model_sha256, variant=c.variant,
                device_used=c.device_used, samples=c.samples, agree=c.agree,
                agreement=c.agreement, max_abs_diff=c.max_abs_diff, max_steps=c.max_steps,
                worst_sample=c.worst_sample, tolerance_steps=c.tolerance_steps, ok=c.ok,
                reference_sha256=outcome.reference_sha256, timestamp=outcome.timestamp))


def undo_switch(conn, result: PushResult, options: PushOptions) -> str:
    """Point `current` and `previous` back where they were before this push and delete the
    failed release, so no later rollback can make it current; says what it did (for the
    error). Under the device's lock, and only while `current` is still this push's release."""
    if result.unchanged:
        return "current was already this release before the push and stays (fix and push again)"
    return release.discard(conn, options.remote_dir, device_python(conn, options),
                           result.release_id, result.previous, result.old_previous)


def reports_of(document: dict) -> list:
    if document.get("kind") == "qrun-bench-compare":
        return list(document.get("reports") or [])
    return [document]


def for_target(target: targets.Target, options: PushOptions) -> PushOptions:
    """Options as they apply to `target`.

    On `local` the default release directory is where this machine's `qrun` looks for the
    current deployment: $QDEPLOY_HOME when it is set (else ~/qdeploy, as on any device).
    """
    release.check_remote_dir(options.remote_dir)
    home = os.environ.get("QDEPLOY_HOME")
    if target.is_local and home and options.remote_dir == release.DEFAULT_REMOTE_DIR:
        return dataclasses.replace(options, remote_dir=home)
    return options


def push_target(target: targets.Target, deployment: transfer.Deployment,
                options: PushOptions, progress: Progress = _no_progress) -> PushResult:
    """Push to one target; failures come back in the result, never as an exception."""
    options = for_target(target, options)
    start = time.perf_counter()
    result = PushResult(target=target.name)
    name = target.name
    try:
        host = host_side(deployment, options) if options.verifying else None
        progress(name, "connecting", "", None, None)
        with connect(target, options) as conn:
            state = release.probe(conn, options.remote_dir)
            xfer = transfer.Transfer(conn, options.remote_dir, device_python(conn, options))
            plan = xfer.plan(deployment, state)
            total = plan.bytes_to_send
            progress(name, "unchanged" if plan.unchanged else "uploading",
                     "" if plan.unchanged else f"{len(plan.send)} files", 0, total)
            sent = xfer.send(plan, lambda n: progress(name, "uploading", "", n, total))
            result.release_id, result.previous = sent.release_id, sent.previous
            result.old_previous = sent.old_previous
            result.unchanged = plan.unchanged
            result.files_sent, result.files_skipped = sent.files_sent, sent.files_skipped
            result.bytes_sent, result.transfer_s = sent.bytes_sent, sent.seconds
            progress(name, "uploaded", "", total, total)
            if conn.is_local:
                from qrun import __version__
                result.runner_version = __version__
            elif not options.runner:
                result.runner_version = state.runner_version
            else:
                progress(name, "runner", "checking", None, None)
                runner = wheel.ensure_runner(
                    conn, options.remote_dir, options.python, options.wheelhouse,
                    device_version=state.runner_version,
                    on_line=lambda line: progress(name, "runner", line, None, None))
                result.runner_version, result.runner_installed = runner.version, runner.installed
            if options.bench:
                progress(name, "bench", "starting", None, None)
                report = run_bench(conn, options,
                                   lambda line: progress(name, "bench", line, None, None))
                path, ids = store_report(report, name, options.reports_dir,
                                         deployment.manifest)
                result.report_files.append(path)
                result.report_ids.extend(ids)
                result.reports.extend(reports_of(report))
            if options.verifying:
                if host is None:
                    result.verify_note = NO_REFERENCE_NOTE
                else:
                    outcome = run_verify(conn, host, name, options, progress)
                    result.verify, result.verify_skipped = outcome.comparisons, outcome.skipped
                    if not outcome.ok:
                        undone = undo_switch(conn, result, options)
                        raise UserError(f"verify failed: "
                                        f"{outcome.failure(options.verify_tolerance)}; {undone}")
        result.ok = True
        progress(name, "done", "", None, None)
    except UserError as exc:
        result.error = str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
        progress(name, "failed", str(exc), None, None)
    result.seconds = time.perf_counter() - start
    return result


def push_many(target_list: list, directory: Path, options: PushOptions,
              progress: Progress = _no_progress) -> list:
    """Push one deployment to every target, `options.jobs` at a time; results in target order."""
    if not target_list:
        raise UserError("no target: pass --target [user@]host[:port] (repeatable), "
                        "--inventory FILE, or --target local")
    names = [t.name for t in target_list]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"target {dupes[0]} is given twice; list each target once")
    check_identity(options)
    release.check_remote_dir(options.remote_dir)
    deployment = transfer.load_deployment(directory)
    if options.verifying:
        host_side(deployment, options)  # a missing reference or model: one error, not per target
    if len(target_list) == 1:
        return [push_target(target_list[0], deployment, options, progress)]
    workers = max(1, min(options.jobs, len(target_list)))
    if "fork" not in multiprocessing.get_all_start_methods():
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qdeploy-push") as pool:
            futures = [pool.submit(push_target, t, deployment, options, progress)
                       for t in target_list]
            return [f.result() for f in futures]
    # One process per running target: paramiko encrypts in Python, so threads would share
    # one core through the GIL; processes use them all. Progress comes back over a queue.
    ctx = multiprocessing.get_context("fork")
    events = ctx.Queue()
    pump = threading.Thread(target=_pump_events, args=(events, progress), daemon=True)
    pump.start()
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                 initializer=_init_worker, initargs=(events,)) as pool:
            futures = [pool.submit(_push_in_worker, t, deployment, options)
                       for t in target_list]
            results = []
            for t, f in zip(target_list, futures):
                try:
                    results.append(f.result())
                except Exception as exc:  # a worker died: that target failed, not the fleet
                    results.append(PushResult(target=t.name, error=f"{t.name}: push process "
                                              f"failed ({type(exc).__name__}: {exc})"))
            return results
    finally:
        events.put(None)
        pump.join(timeout=5)


_worker_events = None


def _init_worker(events) -> None:
    global _worker_events
    _worker_events = events


def _queue_progress(target, stage, detail="", done=None, total=None):
    _worker_events.put((target, stage, detail, done, total))


def _push_in_worker(target, deployment, options) -> PushResult:
    return push_target(target, deployment, options, _queue_progress)


def _pump_events(events, progress: Progress) -> None:
    for event in iter(events.get, None):
        try:
            progress(*event)
        except Exception:  # a display problem must not stop the push
            pass


def push_local(directory: Path, reports_dir: Path, remote_dir: Optional[Path] = None,
               bench_runs: Optional[int] = None) -> PushResult:
    """Push to the `local` target (no SSH): the rehearsal quickstart ends with.

    Without `remote_dir`, the release goes where this machine's qrun looks ($QDEPLOY_HOME,
    else ~/qdeploy).
    """
    options = PushOptions(reports_dir=Path(reports_dir), bench_runs=bench_runs)
    if remote_dir is not None:
        options.remote_dir = str(remote_dir)
    deployment = transfer.load_deployment(directory)
    return push_target(targets.Target("local", "local"), deployment, options)


def rollback_target(target: targets.Target, options: PushOptions, to: Optional[str] = None) -> dict:
    options = for_target(target, options)
    with connect(target, options) as conn:
        return release.rollback(conn, options.remote_dir, device_python(conn, options), to)


def device_python(conn, options: PushOptions) -> str:
    """The interpreter for the device-side helpers: on `local`, this one unless told otherwise."""
    if conn.is_local and options.python == PushOptions.python:
        return sys.executable
    return options.python


# -- presenting -----------------------------------------------------------------------------

def _ms(us) -> str:
    return f"{us / 1000:.2f} ms" if isinstance(us, (int, float)) else "-"


def _latency(median, p99) -> str:
    """`1.27/1.29`: median and p99 in ms in one cell, so the table fits 80 columns."""
    if not all(isinstance(v, (int, float)) for v in (median, p99)):
        return "-"
    return f"{median / 1000:.2f}/{p99 / 1000:.2f}"


def device_text(report: dict) -> str:
    used = (report.get("device") or {}).get("used", "?")
    return {"edgetpu": "Edge TPU", "cpu": "CPU"}.get(used, str(used))


def render_table(results: list):
    """A rich Table: one row per target (and per variant of a compare run)."""
    from rich.table import Table

    table = Table(title="qdeploy push (latency in ms)", title_justify="left", pad_edge=False)
    table.add_column("target", min_width=10, overflow="fold")
    for col in ("result", "files", "bytes", "time", "device", "median/p99", "verify"):
        table.add_column(col, justify="left" if col in ("result", "device") else "right",
                         no_wrap=True)
    for r in results:
        if not r.ok:
            table.add_row(r.target, "[red]failed[/red]", "-", "-", "-", "-", "-", "-")
            continue
        base = [r.target, "[green]unchanged[/green]" if r.unchanged else "[green]pushed[/green]",
                f"{r.files_sent}/{r.files_skipped}", size_text(r.bytes_sent), f"{r.transfer_s:.2f} s"]
        by_variant = {c.variant: c for c in r.verify}
        if not r.reports:
            table.add_row(*base, "not run", "-", verify_cell(r.verify[0] if r.verify else None))
        for i, rep in enumerate(r.reports):
            lat = rep.get("latency_us") or {}
            variant = (rep.get("model") or {}).get("variant")
            dev = device_text(rep) + (f" ({variant})" if variant and len(r.reports) > 1 else "")
            table.add_row(*(base if i == 0 else [""] * len(base)), dev,
                          _latency(lat.get("median"), lat.get("p99")),
                          verify_cell(by_variant.get(variant)))
    return table


def verify_cell(comparison) -> str:
    """`3/3 Δ0`: top-1 agreements / reference inputs and max |Δ| in output steps."""
    if comparison is None:
        return "-"
    text = f"{comparison.agree}/{comparison.samples} Δ{comparison.max_steps:g}"
    return text if comparison.ok else f"[red]{text}[/red]"


def result_notes(results: list, errors: bool = True) -> list:
    """One line per target under the table: release, runner, why that device (or the error)."""
    notes = []
    for r in results:
        if not r.ok:
            if errors:
                notes.append(f"error: {r.error}")
            continue
        runner = f"runner {r.runner_version}" + (" (installed)" if r.runner_installed else "")
        line = f"{r.target}: release {r.release_id}; {runner}"
        for rep in r.reports:
            dev = rep.get("device") or {}
            if dev.get("reason"):
                line += f"; {device_text(rep)}: {dev['reason']}"
        for c in r.verify:
            line += f"; verify {c.text()}"
        for s in r.verify_skipped:
            line += f"; verify skipped {s.get('variant')}: {s.get('reason')}"
        if r.verify_note:
            line += f"; {r.verify_note}"
        notes.append(line)
    return notes


def print_table(results: list, console=None, errors: bool = True) -> None:
    """Print the result table and the notes under it (`errors`: failed targets' errors too)."""
    from rich.console import Console

    console = console or Console()
    console.print(render_table(results))
    for note in result_notes(results, errors):
        console.print(note, markup=False, highlight=False)


class LineProgress:
    """Progress as plain lines on stderr (logs, CI): stage changes and bench progress."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()
        self.last: dict = {}

    def __call__(self, target, stage, detail="", done=None, total=None):
        if stage == "failed":
            return  # the error line follows the table
        if stage == "uploading" and done is not None and self.last.get(target) == stage:
            return
        self.last[target] = stage
        text = f"{target}: {stage}" + (f": {detail}" if detail else "")
        if stage == "uploading" and total:
            text += f" ({size_text(total)})"
        with self.lock:
            print(text, file=self.stream, flush=True)


class RichProgress:
    """One progress bar per target (bytes while uploading), its stage as the description."""

    def __init__(self, names: list, console=None):
        from rich.progress import (BarColumn, DownloadColumn, Progress as RProgress,
                                   TextColumn, TimeElapsedColumn)

        self.progress = RProgress(TextColumn("{task.fields[target]:<20}"), BarColumn(),
                                  DownloadColumn(), TimeElapsedColumn(),
                                  TextColumn("{task.description}"), console=console,
                                  transient=False)
        self.tasks = {n: self.progress.add_task("waiting", target=n, total=None)
                      for n in names}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def __call__(self, target, stage, detail="", done=None, total=None):
        task = self.tasks.get(target)
        if task is None:
            return
        desc = stage + (f": {detail}" if detail else "")
        kwargs = {"description": desc[:60]}
        if total is not None:
            kwargs["total"] = total or 1
        if done is not None:
            kwargs["completed"] = done if total != 0 else 1
        if stage == "done":
            t = self.progress.tasks[task]
            kwargs["completed"] = t.total or 1
            kwargs["total"] = t.total or 1
        self.progress.update(task, **kwargs)
