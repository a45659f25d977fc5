"""Write files so that a reader sees either the old content or the new, never half.

Everything is written to a temporary name in the destination's own directory
(so the final rename stays on one file system) and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from qrun.errors import UserError


def umask() -> int:
    """The process umask, read once: from /proc where there is one (no window in which the
    umask is changed), else by setting it to 0 and straight back."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                line = next(ln for ln in f if ln.startswith("Umask:"))
            _UMASK = int(line.split()[1], 8)
        except (OSError, StopIteration, ValueError, IndexError):
            _UMASK = os.umask(0)
            os.umask(_UMASK)
    return _UMASK


_UMASK = None


def check_writable(directory: Path, fix: str) -> None:
    """Refuse, before slow work, a directory where no file can be created: a real test file,
    since os.access says yes to root on a read-only mount. `fix` ends the error line."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".qdeploy-write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write in {directory} ({exc.strerror or exc}); {fix}") from None


def file_mode(path: Path) -> int:
    """The mode a rewrite of `path` gets: the existing file's, else 0o666 less the umask
    (what open() would give; mkstemp's temporary file is 0o600 whatever the umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~umask()


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, keeping its mode (a new file: as open() makes)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    """Atomically replace `path` with `text` (UTF-8)."""
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def staging_dir(dest: Path) -> Iterator[Path]:
    """A scratch directory inside `dest`, removed on exit whatever happens.

    Write every artifact of one step into it, then `publish` them: a failure
    before publishing leaves `dest` exactly as it was.
    """
    dest = Path(dest)
    stage = Path(tempfile.mkdtemp(prefix=".qdeploy-stage-", dir=dest))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, dest: Path, names: list[str]) -> None:
    """Rename `names` from `stage` into `dest`, in the order given.

    Put the manifest last: it is what makes the new set of files current.
    """
    for name in names:
        os.replace(Path(stage) / name, Path(dest) / name)
