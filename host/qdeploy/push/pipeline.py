"""`qdeploy push` on one target: ship a deployment, bench it there, bring the report home.

`push_target` runs these steps in order, over one connection:
  1. probe the device's release state (one round trip),
  2. send the release: plan by sha256 and send only what changed into a new release, switch
     `current` (nothing to do when the manifests are equal),
  3. ensure the runner: the device's runner has the host's version (install the qrun wheel
     if not),
  4. bench: run `qrun bench --json -` there, stream its progress (with `--eval DIR`: then
     `qrun evaluate` there, qdeploy.push.evaluation, its figures added to the reports), store
     the report (`reports/<target>-<time>.json` and a row in the SQLite store),
  5. verify: `qrun verify --json -` there, the same int8 model here (qdeploy.push.crosscheck);
     the figures go into the store,
  6. undo: outputs that differ beyond the tolerance fail the push and switch `current` back
     to the release it replaced.
A failure is a `PushResult` with its error, never an exception. Many targets at once:
qdeploy.push.fleet.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from qdeploy.push import crosscheck, evaluation, release, transfer, wheel
from qdeploy.push.options import ProgressFn, PushOptions, PushResult, no_progress
from qdeploy.remote import targets
from qdeploy.remote.connection import Link
from qdeploy.remote.local import LocalConnection
from qdeploy.remote.ssh import Connection
from qrun import atomic
from qrun.model import manifest as qmanifest
from qrun.errors import UserError

NO_REFERENCE_NOTE = ("verify skipped: the deployment has no reference inputs; re-run qdeploy "
                     "convert to add them")


@dataclasses.dataclass
class TargetPush:
    """One target's push under way: its connection, the options, the result so far."""

    conn: Link  # open
    options: PushOptions
    result: PushResult
    progress: ProgressFn

    def tell(self, stage: str, detail: str = "", done: Optional[int] = None,
             total: Optional[int] = None) -> None:
        self.progress(self.result.target, stage, detail, done, total)


def push_target(target: targets.Target, deployment: transfer.Shipment,
                options: PushOptions, progress: ProgressFn = no_progress) -> PushResult:
    """Push to one target; failures come back in the result, never as an exception."""
    options = for_target(target, options)
    start = time.perf_counter()
    result = PushResult(target=target.name)
    try:
        host = host_side(deployment, options) if options.verifying else None
        progress(target.name, "connecting", "", None, None)
        with connect(target, options) as conn:
            push = TargetPush(conn, options, result, progress)
            state = release.probe(conn, options.remote_dir)
            send_release(push, deployment, state)
            ensure_runner(push, state)
            if options.bench:
                bench(push, deployment.manifest)
            outcome = verify(push, host) if options.verifying else None
            if outcome is not None and not outcome.ok:
                raise undo(push, outcome)
        result.ok = True
        progress(target.name, "done", "", None, None)
    except UserError as exc:
        name = target.name
        result.error = str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
        progress(name, "failed", str(exc), None, None)
    result.seconds = time.perf_counter() - start
    return result


# -- the steps, in order ----------------------------------------------------------------------

def send_release(push: TargetPush, deployment: transfer.Shipment, state) -> None:
    """Plan against the device's `state` by sha256, send what changed, switch `current`."""
    xfer = transfer.Transfer(push.conn, push.options.remote_dir,
                             device_python(push.conn, push.options))
    plan = xfer.plan(deployment, state)
    total = plan.bytes_to_send
    push.tell("unchanged" if plan.unchanged else "uploading",
              "" if plan.unchanged else f"{len(plan.send)} files", 0, total)
    sent = xfer.send(plan, lambda n: push.tell("uploading", "", n, total))
    r = push.result
    r.release_id, r.previous, r.old_previous = sent.release_id, sent.previous, sent.old_previous
    r.unchanged = plan.unchanged
    r.files_sent, r.files_skipped = sent.files_sent, sent.files_skipped
    r.bytes_sent, r.transfer_s = sent.bytes_sent, sent.seconds
    if sent.note:
        r.notes.append(sent.note)
        push.tell("note", sent.note)
    push.tell("uploaded", "", total, total)


def ensure_runner(push: TargetPush, state) -> None:
    """The device's runner at the host's version, the qrun wheel installed when it is not.

    On `local` the runner is this interpreter's qrun; with `runner=False` it is whatever the
    device has (no check, no install).
    """
    r, options = push.result, push.options
    if push.conn.is_local:
        from qrun import __version__

        r.runner_version = __version__
    elif not options.runner:
        r.runner_version = state.runner_version
    else:
        push.tell("runner", "checking")
        runner = wheel.ensure_runner(push.conn, options.remote_dir, options.python,
                                     options.wheelhouse, device_version=state.runner_version,
                                     on_line=lambda line: push.tell("runner", line),
                                     extras=options.extras)
        r.runner_version, r.runner_installed = runner.version, runner.installed


def bench(push: TargetPush, manifest: qmanifest.Manifest) -> None:
    """`qrun bench` on the device's current release; its report stored (file and store)."""
    push.tell("bench", "starting")
    report = run_bench(push.conn, push.options, lambda line: push.tell("bench", line))
    if push.options.eval_data is not None:  # --eval: accuracy on the device, in the same rows
        evaluation.on_device(push, manifest, reports_of(report),
                             _runner_command(push.conn, push.options))
    path, ids = store_report(report, push.result.target, push.options.reports_dir, manifest)
    push.result.report_files.append(path)
    push.result.report_ids.extend(ids)
    push.result.reports.extend(reports_of(report))


def verify(push: TargetPush, host: Optional[crosscheck.HostSide]):
    """`qrun verify` on the device, compared here, the figures stored: a VerifyResult.

    None, and a note in the result, when the deployment has no reference inputs.
    """
    if host is None:
        push.result.verify_note = NO_REFERENCE_NOTE
        return None
    options = push.options
    push.tell("verify", "starting")
    document = crosscheck.run_on_device(
        push.conn, _runner_command(push.conn, options), release.shell_path(options.remote_dir),
        options.command_timeout, lambda line: push.tell("verify", line))
    outcome = crosscheck.check(document, host.samples, host.model, host.preprocess,
                               options.verify_tolerance, host.reference_sha256, host.task,
                               host.names)
    store_verification(outcome, push.result.target, options.reports_dir)
    push.result.verify, push.result.verify_skipped = outcome.comparisons, outcome.skipped
    return outcome


def undo(push: TargetPush, outcome) -> UserError:
    """Switch back from a release that failed verify; the error that says what differed and
    what was undone."""
    undone = undo_switch(push.conn, push.result, push.options)
    return UserError(f"verify failed: {outcome.failure(push.options.verify_tolerance)}; "
                     f"{undone}")


def undo_switch(conn: Link, result: PushResult, options: PushOptions) -> str:
    """Point `current` and `previous` back where they were before this push and delete the
    failed release, so no later rollback can make it current; says what it did (for the
    error). Under the device's lock, and only while `current` is still this push's release."""
    if result.unchanged:
        return "current was already this release before the push and stays (fix and push again)"
    return release.discard(conn, options.remote_dir, device_python(conn, options),
                           result.release_id, result.previous, result.old_previous)


# -- the device's commands and what comes back --------------------------------------------------

def host_side(deployment: transfer.Shipment,
              options: PushOptions) -> Optional[crosscheck.HostSide]:
    """The host's half of verify for this push; None when the deployment has no reference
    inputs (an error with `--verify`)."""
    return crosscheck.host_side(deployment.directory, deployment.manifest,
                                against=options.verify_against, required=bool(options.verify))


def _runner_command(conn: Link, options: PushOptions) -> str:
    """The runner as a shell command: the venv's python with `-m qrun`, never pip's
    console-script trampoline (a #!/bin/sh script that does not quote the venv's path)."""
    if conn.is_local:
        return f"{shlex.quote(sys.executable)} -m qrun"
    return f"{release.shell_path(options.remote_dir)}/venv/bin/python -m qrun"


def run_bench(conn: Link, options: PushOptions, on_line: Callable[[str], None]) -> dict:
    """Run `qrun bench --json -` against the device's current release; the parsed report."""
    args = ["bench", "--json", "-"]
    if options.compare:
        args.append("--compare")
    if options.bench_runs is not None:
        args += ["--runs", str(options.bench_runs)]
    if options.bench_image is not None:
        args += ["--image", bench_file_on_device(conn, options, options.bench_image, "frame")]
    if options.bench_video is not None:
        args += ["--video", bench_file_on_device(conn, options, options.bench_video, "video")]
    cmd = (f"QDEPLOY_HOME={release.shell_path(options.remote_dir)} "
           f"{_runner_command(conn, options)} {' '.join(args)}")
    return release.qrun_json(conn, cmd, "qrun bench", options.command_timeout, on_line)


BENCH_DIR = "bench"  # under the remote dir: --bench-image and --bench-video, kept between pushes


def bench_file_on_device(conn: Link, options: PushOptions, image: Path, kind: str) -> str:
    """`--bench-image` (or `--bench-video`) as the device sees it, quoted for its shell: the
    file itself on `local`, else a copy in `<remote_dir>/bench/` named by its sha256, sent
    only when the device does not hold that name at that size already."""
    image = Path(image)
    if conn.is_local:
        return shlex.quote(str(image.resolve()))
    import hashlib
    import shutil
    import tempfile

    digest = hashlib.sha256()
    with open(image, "rb") as f:  # in blocks: a video may be large
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    suffix = re.sub(r"[^a-z0-9.]", "", image.suffix.lower())
    name = f"{kind}-{digest.hexdigest()[:16]}{suffix}"
    on_device = f"{release.shell_path(options.remote_dir)}/{BENCH_DIR}/{name}"
    held = conn.run(f"wc -c < {on_device} 2>/dev/null || true",
                    what=f"the check of the bench {kind}")
    if held.ok and held.stdout.strip() == str(image.stat().st_size).encode():
        return on_device  # sent by an earlier push
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / name
        shutil.copyfile(image, staged)
        release.put_files(conn, options.python, options.remote_dir, BENCH_DIR, [staged],
                          f"the upload of the bench {'image' if kind == 'frame' else kind}")
    return on_device


def reports_of(document: dict) -> list:
    if document.get("kind") == "qrun-bench-compare":
        return list(document.get("reports") or [])
    return [document]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "target"


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


def store_verification(outcome, target: str, reports_dir: Path) -> None:
    """Add each variant's verify figures to the report store."""
    from qdeploy.reports import store

    with store.open_store(reports_dir) as s:
        for c in outcome.comparisons:
            agreement, scored = c.stored_figures()
            s.add_verification(store.Verification(
                target=target, model_sha256=c.model_sha256, variant=c.variant,
                device_used=c.device_used, samples=c.samples, agree=c.agree,
                agreement=agreement, max_abs_diff=c.max_abs_diff, max_steps=c.max_steps,
                worst_sample=c.worst_sample, tolerance_steps=c.tolerance_steps, ok=c.ok,
                reference_sha256=outcome.reference_sha256, timestamp=outcome.timestamp,
                scored=scored))


# -- reaching a target ------------------------------------------------------------------------

def for_target(target: targets.Target, options: PushOptions) -> PushOptions:
    """Options as they apply to `target`.

    The inventory's per-host settings (remote dir, python, key file) apply where the push
    left the option at its default. On `local` the default release directory is where this
    machine's `qrun` looks for the current deployment: $QDEPLOY_HOME when it is set (else
    ~/qdeploy, as on any device).
    """
    defaults = PushOptions()
    per_host = {k: v for k, v in (("remote_dir", target.remote_dir), ("python", target.python),
                                  ("identity", target.identity and Path(target.identity)))
                if v is not None and getattr(options, k) == getattr(defaults, k)}
    options = dataclasses.replace(options, **per_host) if per_host else options
    release.check_remote_dir(options.remote_dir)
    home = os.environ.get("QDEPLOY_HOME")
    if target.is_local and home and options.remote_dir == release.DEFAULT_REMOTE_DIR:
        return dataclasses.replace(options, remote_dir=home)
    return options


def connect(target: targets.Target, options: PushOptions) -> Link:
    """An unopened connection for `target`: local, or SSH resolved through ~/.ssh/config."""
    if target.is_local:
        return LocalConnection(command_timeout=options.command_timeout)
    check_identity(options)
    config = targets.load_ssh_config(options.ssh_config)
    endpoint = targets.resolve(target, config, identity=options.identity,
                               known_hosts=options.known_hosts)
    keepalive, count = keepalives(config, target, options)
    return Connection(endpoint, accept_new=options.accept_new,
                      connect_timeout=options.connect_timeout,
                      command_timeout=options.command_timeout,
                      keepalive=keepalive, keepalive_count=count)


def keepalives(config, target: targets.Target, options: PushOptions) -> tuple:
    """(interval s, count): --keepalive, else ServerAliveInterval / ServerAliveCountMax from
    the ssh config, else qdeploy's defaults (deadline.KEEPALIVE_S, deadline.KEEPALIVE_COUNT)."""
    found = config.lookup(target.host) if config is not None else {}
    where = getattr(config, "qdeploy_path", None) or "~/.ssh/config"
    interval, count = options.keepalive, None
    text = found.get("serveraliveinterval")
    if interval is None and text is not None:
        interval = targets.parse_time(text)
        if interval is None:
            raise UserError(f"ssh config {where}: ServerAliveInterval {text!r} for "
                            f"{target.host} is not a time; write seconds or e.g. 15s, 1m")
    text = found.get("serveralivecountmax")
    if text is not None:
        if not str(text).strip().isdigit() or int(text) < 1:
            raise UserError(f"ssh config {where}: ServerAliveCountMax {text!r} for "
                            f"{target.host} is not a count; write a whole number >= 1")
        count = int(text)
    return interval, count


def check_identity(options: PushOptions) -> None:
    if options.identity is not None and not Path(options.identity).is_file():
        raise UserError(f"--identity {options.identity} does not exist; pass a private key file")


def device_python(conn: Link, options: PushOptions) -> str:
    """The interpreter for the device-side helpers: on `local`, this one unless told otherwise."""
    if conn.is_local and options.python == PushOptions.python:
        return sys.executable
    return options.python


# -- the other entry points -------------------------------------------------------------------

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
    """Switch `target`'s `current` back to its previous release (or to release `to`)."""
    options = for_target(target, options)
    with connect(target, options) as conn:
        return release.rollback(conn, options.remote_dir, device_python(conn, options), to)
