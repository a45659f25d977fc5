"""What a push is asked to do (`PushOptions`), what it did on one target (`PushResult`), and
how it tells its progress (`ProgressFn`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from qdeploy.push import release
from qdeploy.push.crosscheck import DEFAULT_STEPS

DEFAULT_DIR = Path("qdeploy-out")
DEFAULT_REPORTS = Path("reports")
DEFAULT_JOBS = 8
BENCH_TIMEOUT_S = 1800.0

# progress(target, stage, detail, done_bytes, total_bytes)
ProgressFn = Callable[[str, str, str, Optional[int], Optional[int]], None]


def no_progress(target, stage, detail="", done=None, total=None):
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
    bench_image: Optional[Path] = None  # qrun bench --image: whole frames of the task
    bench_video: Optional[Path] = None  # qrun bench --video: a video through the pipeline
    runner_extras: tuple = ()  # the runner's extras to install (qrun[video])
    eval_data: Optional[Path] = None  # --eval DIR: qrun evaluate on the device after bench
    reports_dir: Path = DEFAULT_REPORTS
    accept_new: bool = False
    identity: Optional[Path] = None
    known_hosts: Optional[Path] = None
    ssh_config: Optional[Path] = None
    connect_timeout: Optional[float] = None
    command_timeout: float = BENCH_TIMEOUT_S
    # s; None: ServerAliveInterval, else qdeploy.remote.deadline.KEEPALIVE_S; 0: off
    keepalive: Optional[float] = None
    jobs: int = DEFAULT_JOBS
    verify: Optional[bool] = None  # None: verify when the bench runs; True: required
    verify_tolerance: float = DEFAULT_STEPS  # output quantization steps
    verify_against: Optional[Path] = None  # host side from this deployment instead

    @property
    def extras(self) -> tuple:
        """The runner extras this push needs: those asked for, video for --bench-video."""
        return tuple(sorted(set(self.runner_extras) | ({"video"} if self.bench_video else set())))

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
    notes: list = field(default_factory=list)  # what the device did besides (ended a stale push)
    seconds: float = 0.0
    outcome: Optional[str] = None  # the ansible engine's: rolled back / failed / not attempted
