"""`qdeploy push` to a fleet: one deployment to many targets, `jobs` at a time.

Each running target has a forked process of its own for qdeploy.push.pipeline.push_target:
paramiko encrypts in Python, so threads would share one core through the GIL, where
processes use them all. The workers' progress comes back over a
queue that a thread of this process pumps into the caller's progress function. Where fork
is not available, the targets run in a thread pool instead. A failed target, even a worker
that died, is a `PushResult` with its error, never an exception that stops the others.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from qdeploy.push import release, transfer
from qdeploy.push.options import ProgressFn, PushOptions, PushResult, no_progress
from qdeploy.push.pipeline import check_identity, host_side, push_target
from qrun.errors import UserError

THREAD_PREFIX = "qdeploy-push"


def push_many(target_list: list, directory: Path, options: PushOptions,
              progress: ProgressFn = no_progress) -> list:
    """Push one deployment to every target, `options.jobs` at a time; results in target order."""
    check_targets(target_list)
    check_identity(options)
    release.check_remote_dir(options.remote_dir)
    deployment = transfer.load_deployment(directory)
    if options.verifying:
        host_side(deployment, options)  # a missing reference or model: one error, not per target
    if len(target_list) == 1:
        return [push_target(target_list[0], deployment, options, progress)]
    workers = max(1, min(options.jobs, len(target_list)))
    if "fork" not in multiprocessing.get_all_start_methods():
        return in_threads(target_list, deployment, options, progress, workers)
    return in_processes(target_list, deployment, options, progress, workers)


def check_targets(target_list: list) -> None:
    """At least one target, and each given once."""
    if not target_list:
        raise UserError("no target: pass --target [user@]host[:port] (repeatable), "
                        "--inventory FILE, or --target local")
    names = [t.name for t in target_list]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"target {dupes[0]} is given twice; list each target once")


def in_threads(target_list: list, deployment, options: PushOptions, progress: ProgressFn,
               workers: int) -> list:
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=THREAD_PREFIX) as pool:
        futures = [pool.submit(push_target, t, deployment, options, progress)
                   for t in target_list]
        return [f.result() for f in futures]


def in_processes(target_list: list, deployment, options: PushOptions, progress: ProgressFn,
                 workers: int) -> list:
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


# -- in a worker process ----------------------------------------------------------------------

_worker_events = None


def _init_worker(events) -> None:
    global _worker_events
    _worker_events = events


def _queue_progress(target, stage, detail="", done=None, total=None):
    _worker_events.put((target, stage, detail, done, total))


def _push_in_worker(target, deployment, options) -> PushResult:
    return push_target(target, deployment, options, _queue_progress)


# -- in this process --------------------------------------------------------------------------

def _pump_events(events, progress: ProgressFn) -> None:
    for event in iter(events.get, None):
        try:
            progress(*event)
        except Exception:  # a display problem must not stop the push
            pass
