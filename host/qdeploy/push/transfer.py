"""What to send and sending it: a deployment directory against a device's releases.

`load_deployment` reads a convert/compile output directory and checks every artifact against
its manifest (sha256, with a stat cache so an unchanged 64 MiB model is not re-hashed on every
push). `Transfer(conn).plan(...)` compares it with the manifests the device already has
(current and previous release), by sha256: equal manifests mean nothing to do; otherwise a file
the device has is hard-linked there and only the rest is streamed. `Transfer.send` streams the
new files over one command (`receive` of the device agent, qdeploy.push.agent) and reports
bytes, files and time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from qrun import atomic
from qrun.model import manifest as qmanifest
from qrun.errors import UserError
from qdeploy.push import release
from qdeploy.remote.connection import ConnectionLost, Link

CHUNK = 1 << 20
HASH_CACHE_VERSION = 1


@dataclass(frozen=True)
class LocalFile:
    name: str  # relative to the deployment directory, POSIX
    path: Path
    size: int
    sha256: str


@dataclass
class Shipment:
    """What one push ships: a checked deployment directory, its manifest and its files
    (qrun.model.deployment.Deployment is the same directory as the device resolves it)."""

    directory: Path
    manifest: qmanifest.Manifest
    manifest_bytes: bytes
    files: list  # LocalFile, manifest.json last

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qdeploy" / "sha256-cache.json"


class HashCache:
    """sha256 of files keyed by path and stat (size, mtime, ctime, inode), like git's index."""

    def __init__(self, path: Optional[Path] = None):
        self.path = path or _cache_path()
        self.entries: dict = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") == HASH_CACHE_VERSION:
                self.entries = data.get("entries", {})
        except (OSError, ValueError, AttributeError):
            pass

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        hit = self.entries.get(key)
        if hit and hit[:4] == stamp:
            return hit[4]
        digest = qmanifest.sha256_file(path)
        self.entries[key] = stamp + [digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(self.path, json.dumps({"version": HASH_CACHE_VERSION,
                                                     "entries": self.entries}))
        except OSError:
            pass  # a cache: failing to write it only costs a re-hash next time
        self.dirty = False


def _safe_name(name: str, directory: Path) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or "\\" in name:
        raise UserError(f"{directory}/manifest.json names artifact file {name!r} outside its "
                        "directory; re-run qdeploy convert")
    return str(p)


def load_deployment(directory: Path, cache: Optional[HashCache] = None) -> Shipment:
    """Read and verify a deployment directory; refuse one changed since its manifest."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory; pass a qdeploy convert output "
                        "directory (default ./qdeploy-out)")
    manifest = qmanifest.load(directory)
    if not manifest.artifacts:
        raise UserError(f"{directory}/manifest.json lists no artifacts; re-run qdeploy convert")
    cache = cache or HashCache()
    files, bad = [], []
    for role, art in manifest.artifacts.items():
        name = _safe_name(art.file, directory)
        path = directory / name
        if not path.is_file():
            bad.append(f"{art.file} ({role}) is missing")
            continue
        if path.stat().st_size != art.size or cache.sha256(path) != art.sha256:
            bad.append(f"{art.file} ({role}) changed since the manifest was written")
            continue
        if all(f.name != name for f in files):
            files.append(LocalFile(name, path, art.size, art.sha256))
    cache.save()
    if bad:
        raise UserError(f"{directory}: {'; '.join(bad)}; refusing to push: re-run qdeploy "
                        "convert (or compile) so the manifest matches the files")
    manifest_path = directory / qmanifest.MANIFEST_NAME
    data = manifest_path.read_bytes()
    files.append(LocalFile(qmanifest.MANIFEST_NAME, manifest_path, len(data),
                           hashlib.sha256(data).hexdigest()))
    return Shipment(directory, manifest, data, files)


def new_release_id(deployment: Shipment) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{deployment.manifest_sha256[:8]}"


@dataclass
class Plan:
    deployment: Shipment
    unchanged: bool
    release_id: Optional[str]
    send: list = field(default_factory=list)  # LocalFile
    link: dict = field(default_factory=dict)  # name -> source path relative to remote dir
    current: Optional[str] = None  # the device's current release id before this push

    @property
    def bytes_to_send(self) -> int:
        return sum(f.size for f in self.send)

    def sending(self, names) -> "Plan":
        """This plan with the files `names` sent rather than linked from the device's copy."""
        link = {n: src for n, src in self.link.items() if n not in names}
        send = [f for f in self.deployment.files if f.name not in link]
        return Plan(self.deployment, self.unchanged, self.release_id, send, link, self.current)


@dataclass
class TransferResult:
    release_id: Optional[str]
    files_sent: int
    files_skipped: int
    bytes_sent: int
    seconds: float
    previous: Optional[str] = None  # what `current` pointed at before ("releases/<id>")
    old_previous: Optional[str] = None  # what `previous` pointed at before
    note: Optional[str] = None  # what the receiver did besides (ended an abandoned push)


def _remote_files(state: release.RemoteState) -> dict:
    """sha256 -> path (relative to the remote dir) of every artifact in current/previous."""
    found = {}
    for which in ("previous", "current"):
        rid = getattr(state, which)
        data = state.manifest_dict(which)
        artifacts = data.get("artifacts") if isinstance(data.get("artifacts"), dict) else {}
        for art in artifacts.values():
            if isinstance(art, dict) and isinstance(art.get("sha256"), str) \
                    and isinstance(art.get("file"), str) and rid:
                found[art["sha256"]] = f"releases/{rid}/{art['file']}"
    return found


class Transfer:
    """Moves a deployment onto one target through its connection."""

    def __init__(self, conn: Link, remote_dir: str = release.DEFAULT_REMOTE_DIR,
                 python: str = "python3"):
        self.conn = conn
        self.remote_dir = remote_dir
        self.python = python

    def plan(self, deployment: Shipment, state: release.RemoteState) -> Plan:
        if state.current_manifest is not None and \
                hashlib.sha256(state.current_manifest).hexdigest() == deployment.manifest_sha256:
            return Plan(deployment, unchanged=True, release_id=state.current)
        have = _remote_files(state)
        plan = Plan(deployment, unchanged=False, release_id=new_release_id(deployment),
                    current=state.current)
        for f in deployment.files:
            if f.name != qmanifest.MANIFEST_NAME and f.sha256 in have:
                plan.link[f.name] = have[f.sha256]
            else:
                plan.send.append(f)
        return plan

    def _stream(self, plan: Plan, progress: Callable[[int], None]):
        header = {"release": plan.release_id,
                  "files": [{"name": f.name, "size": f.size, "sha256": f.sha256,
                             "source": plan.link.get(f.name)} for f in plan.deployment.files]}
        yield (json.dumps(header) + "\n").encode()
        sent = 0
        for f in plan.deployment.files:
            if f.name in plan.link:
                continue
            left = f.size
            with open(f.path, "rb") as fh:
                while left:
                    block = fh.read(min(CHUNK, left))
                    if not block:
                        raise UserError(f"{f.path} shrank while it was being pushed; "
                                        "push again once nothing writes to it")
                    left -= len(block)
                    sent += len(block)
                    yield block
                    progress(sent)

    def send(self, plan: Plan, progress: Callable[[int], None] = lambda n: None,
             retry: bool = True) -> TransferResult:
        """Upload `plan` into a new release and switch `current` to it; all or nothing.

        Files the device should have had but whose copy there is damaged or gone are sent
        instead of linked, in one more attempt.
        """
        start = time.perf_counter()
        files = len(plan.deployment.files)
        if plan.unchanged:
            return TransferResult(plan.release_id, 0, files, 0, time.perf_counter() - start)
        cmd = release.receive_command(self.python, self.remote_dir)
        try:
            result = self.conn.run(cmd, stdin=self._stream(plan, progress), what="the receiver")
        except ConnectionLost as exc:
            raise ConnectionLost(f"{exc}; {interrupted(plan, exc.phase)}") from None
        answer = release.agent_answer(result)
        failure = answer.get("error")
        if failure == "disk_full":
            raise UserError(f"{self.conn.name}: the device's disk is full under "
                            f"{self.remote_dir} ({answer.get('message')}); nothing was "
                            "switched, the partial release was removed: free space there "
                            "(or pass --remote-dir on a bigger disk) and push again")
        if result.exit_status == 127 or b"not found" in result.stderr and not result.stdout:
            raise UserError(f"{self.conn.name}: {self.python!r} was not found on the device "
                            f"({result.last_error_line()}); install Python 3 there or pass "
                            "--python PATH")
        if failure == "remote_dir":
            raise UserError(f"{self.conn.name}: the device cannot use --remote-dir "
                            f"{self.remote_dir!r} ({answer.get('message')}); pass a "
                            "directory its file system can hold")
        if failure == "switched":
            raise UserError(f"{self.conn.name}: the device switched `current` to release "
                            f"{plan.release_id}, then failed: {answer.get('message')}; "
                            f"check {self.remote_dir} there")
        if failure == "damaged":
            damaged = [n for n in answer.get("files") or [] if isinstance(n, str)]
            if retry and damaged and set(damaged) <= set(plan.link):
                again = self.send(plan.sending(damaged), progress, retry=False)
                again.seconds = time.perf_counter() - start
                return again
            raise UserError(f"{self.conn.name}: {answer.get('message')} under "
                            f"{self.remote_dir}; `current` is unchanged: push again")
        if failure == "locked":
            raise release.locked_error(self.conn, self.remote_dir, result)
        if not result.ok:
            raise UserError(f"{self.conn.name}: the device refused the release "
                            f"({release.failure_text(result)}); `current` is unchanged")
        if "release" not in answer:
            raise UserError(f"{self.conn.name}: unexpected answer from the device's release "
                            f"receiver: {result.stdout[:200]!r}")
        note = answer.get("note")
        return TransferResult(plan.release_id, len(plan.send), len(plan.link),
                              plan.bytes_to_send, time.perf_counter() - start,
                              previous=answer.get("previous"),
                              old_previous=answer.get("old_previous"),
                              note=note if isinstance(note, str) else None)


def interrupted(plan: Plan, phase: str) -> str:
    """What a push cut or stalled at `phase` left on the device, for its error line."""
    kept = f"release {plan.current}" if plan.current else "no release"
    if phase != "waiting":
        return (f"the push was interrupted, `current` on the device is unchanged (the device "
                f"kept {kept}): push again")
    return (f"the push was interrupted after the upload: `current` on the device is {kept} "
            f"or, if the device finished first, release {plan.release_id}, each complete: "
            "push again")
