"""The programs qdeploy runs on a device, in one file: standard library only, Python >= 3.9.

The host reads this source (`importlib.resources`: package `qdeploy.push`, file `agent.py`) and
runs it with the device's interpreter as ``python3 -c SOURCE COMMAND ARGS``, before any runner
is installed there (so no qdeploy or qrun import). On the remote dir R (layout:
qdeploy.push.release): `receive` takes one push from stdin into a new release and switches
`current`, `rollback` switches it back, `discard` undoes a failed push while it is still
`current`, `locked` runs a shell command, `put` writes files into R/SUB. All but `put` hold
``R/.lock`` (flock, tried for --wait s; it holds the holder's pid: a stale one is named).

`receive`'s stdin: one JSON line ``{"release": ID, "files": [{"name", "size", "sha256",
"source"}, ...]}``, then the bytes of each file whose "source" is null, in header order. Files
with a "source" (a copy under R) are hard-linked and checked first: damaged or missing copies
are named before any byte is read. All goes into ``releases/.staging-<id>``, each sha256
checked, renamed into place; only then is `current` switched (a new symlink renamed over it)
and releases beyond --keep pruned. A failure before (a cut stream, stdin silent for --idle s,
a full disk, SIGTERM) removes the staging dir; after a SIGKILL the next lock holder does.
`put` reads ``[[name, size], ...]``, then those bytes.

An abandoned receiver (its host gone without closing: no FIN, no RST) must not block the
device until its idle timer ends. While it holds the lock it keeps a heartbeat beside it,
``R/.receiving`` (``{"pid", "staging"}``, touched as bytes arrive and as it works); a command
that finds the lock held by a receiver whose heartbeat is older than --abandoned s ends it
(SIGTERM, then SIGKILL), but only after checking that the pid is a process of the same user
whose command line is this agent's `receive` on the same remote dir; it removes that
receiver's staging dir, takes the lock and says so in the answer (``"note"``) and on stderr
(``qdeploy-agent: note: ...``). A receiver that gets bytes is never ended, so two live pushes
never interleave. While it waits for a lock, a command says so on stderr every few seconds.

The answer is ONE JSON line on stdout, on success (receive: ``{"release", "previous",
"old_previous"}``; rollback, discard: ``{"current", "previous"}``; put: ``{"put": names}``) as
on failure: ``{"error": KIND, "message": TEXT, ...}``, TEXT also on stderr for people; `locked`
passes the command's output through, adding the error line when it fails (its last stderr
line as TEXT). Exit statuses, named below for the host: 0 ok, 1 other failures, 2 usage,
3 no_previous/no_release, 4 not_current, 28 disk_full, 75 locked ("pid": the holder),
76 switched (`current` was switched, then a step failed), 77 damaged ("files"), and 90 venv,
91 pip: the runner install's command under `locked` exits with those.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time

FAILED_EXIT = 1
USAGE_EXIT = 2
NO_RELEASE_EXIT = 3
NOT_CURRENT_EXIT = 4
DISK_FULL_EXIT = 28  # ENOSPC
LOCKED_EXIT = 75  # EX_TEMPFAIL: the lock stayed taken
SWITCHED_EXIT = 76
DAMAGED_EXIT = 77
VENV_EXIT = 90
PIP_EXIT = 91
EXITS = {"usage": USAGE_EXIT, "no_previous": NO_RELEASE_EXIT, "no_release": NO_RELEASE_EXIT,
         "not_current": NOT_CURRENT_EXIT, "disk_full": DISK_FULL_EXIT, "locked": LOCKED_EXIT,
         "switched": SWITCHED_EXIT, "damaged": DAMAGED_EXIT, "venv": VENV_EXIT,
         "pip": PIP_EXIT}  # any other kind of failure: FAILED_EXIT
COMMAND_KINDS = {VENV_EXIT: "venv", PIP_EXIT: "pip"}  # by a `locked` command's exit status

KEEP_RELEASES = 5
LOCK_WAIT_S = 30.0
RECEIVE_IDLE_S = 120.0
ABANDONED_S = 5.0  # a lock-holding receiver silent this long is ended by the next command
HEARTBEAT = ".receiving"
BEAT_EVERY_S = 0.5
WAITING_SAY_S = 0.5  # while waiting for a lock, a stderr line this often (the host sees life)
END_GRACE_S = 2.0  # SIGTERM, then SIGKILL after this long
PROG = "qdeploy-agent"
# A test-only fault point: the agent stops itself (SIGSTOP) where this names, to be killed.
STOP_AT = os.environ.get("QDEPLOY_AGENT_STOP_AT", "")
BLOCK = 1 << 20
F_SETPIPE_SZ = 1031  # Linux fcntl: set a pipe's buffer size


class Failure(Exception):
    """A failure as the answer tells it: its kind, one line of text, more fields."""

    def __init__(self, kind, message, status=None, echo=True, **fields):
        super().__init__(message)
        self.kind, self.message, self.fields, self.echo = kind, message, fields, echo
        self.status = status if status is not None else EXITS.get(kind, FAILED_EXIT)


def answer(data):
    print(json.dumps(data), flush=True)


def report(failure):
    """Print `failure` as the JSON error line (and one stderr line); its exit status."""
    answer(dict(failure.fields, error=failure.kind, message=failure.message))
    if failure.echo:
        print("qdeploy-agent: " + failure.message, file=sys.stderr, flush=True)
    return failure.status


def stop_at(point):
    """Stop here (SIGSTOP) when QDEPLOY_AGENT_STOP_AT names `point`: the fault tests kill the
    agent at exact points of a push."""
    if STOP_AT == point:
        os.kill(os.getpid(), signal.SIGSTOP)


class Heartbeat:
    """A lock-holding receiver's sign of life: ``R/.receiving``, touched at most every
    BEAT_EVERY_S while bytes come in or it works."""

    def __init__(self, root, staging):
        self.path, self.last = os.path.join(root, HEARTBEAT), 0.0
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "staging": staging}, f)
        os.replace(tmp, self.path)

    def beat(self):
        now = time.monotonic()
        if now - self.last >= BEAT_EVERY_S:
            self.last = now
            try:
                os.utime(self.path)
            except OSError:
                pass

    def end(self):
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode("utf-8", "surrogateescape") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return None


def is_receiver(pid, root):
    """Whether `pid` is a process of our user running this agent's `receive` on `root`."""
    try:
        if os.stat("/proc/%d" % pid).st_uid != os.getuid():
            return False
    except OSError:
        return False
    argv = _cmdline(pid) or []
    at = next((i for i, a in enumerate(argv[1:], 1) if not a.startswith("-") or a == "-c"), 0)
    if not at or argv[at] != "-c" or len(argv) < at + 4:  # python [-options] -c SOURCE ...
        return False
    source, command, directory = argv[at + 1:at + 4]
    return ('PROG = "%s"' % PROG) in source and command == "receive" and \
        os.path.realpath(directory) == os.path.realpath(root)


def abandoned_receiver(root, holder, silent_s):
    """The heartbeat of the lock holder `holder` (a pid text) when it is a receiver silent
    for more than `silent_s` seconds, else None."""
    path = os.path.join(root, HEARTBEAT)
    try:
        with open(path) as f:
            beat = json.load(f)
        age = time.time() - os.stat(path).st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(beat, dict) or str(beat.get("pid")) != holder or age <= silent_s:
        return None
    pid = int(holder)
    if not is_receiver(pid, root):
        return None
    return dict(beat, pid=pid, silent=age)


def end_receiver(root, beat):
    """End the abandoned receiver `beat` names (SIGTERM, SIGKILL after END_GRACE_S, each only
    while it is still that receiver); the note saying so."""
    pid = beat["pid"]
    for sig, grace in ((signal.SIGTERM, END_GRACE_S), (signal.SIGKILL, END_GRACE_S)):
        if not is_receiver(pid, root):
            break
        try:
            os.kill(pid, sig)
        except OSError:
            break
        end = said = time.monotonic() + grace
        while time.monotonic() < end and is_receiver(pid, root):
            if time.monotonic() - said >= WAITING_SAY_S:  # the host's deadline sees us
                said = time.monotonic()
                print("%s: ending the abandoned receiver pid %d" % (PROG, pid),
                      file=sys.stderr, flush=True)
            time.sleep(0.05)
    staging = beat.get("staging")
    if isinstance(staging, str) and staging.startswith(".staging-") and "/" not in staging:
        shutil.rmtree(os.path.join(root, "releases", staging), ignore_errors=True)
    return ("ended the receiver of an abandoned push (pid %d, silent for %.0f s) and removed "
            "its staging directory" % (pid, beat["silent"]))


def _try_flock(f):
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def take_lock(root, wait, abandoned=ABANDONED_S, notes=None):
    """`root`/.lock, held (flock) with our pid in it; after `wait` seconds of another holder,
    Failure "locked" naming that holder's pid. A holder that is a receiver silent for more
    than `abandoned` seconds is ended first (a note in `notes`)."""
    f = open(os.path.join(root, ".lock"), "a+")
    start = time.monotonic()
    end, said = start + wait, start
    while not _try_flock(f):
        f.seek(0)
        pid = f.read().strip() or "unknown"
        beat = abandoned_receiver(root, pid, abandoned) if pid.isdigit() else None
        if beat is not None:
            note = end_receiver(root, beat)
            if notes is not None:
                notes.append(note)
            print("%s: note: %s" % (PROG, note), file=sys.stderr, flush=True)
            continue
        now = time.monotonic()
        if now >= end:
            f.close()
            raise Failure("locked", "%s is held by pid %s" % (f.name, pid), pid=pid)
        if now - said >= WAITING_SAY_S:
            said = now
            print("%s: waiting for %s, held by pid %s (%.0f s)" % (PROG, f.name, pid,
                  now - start), file=sys.stderr, flush=True)
        time.sleep(0.1)
    f.truncate(0)  # "a+": the write goes to the (new) end
    f.write(str(os.getpid()))
    f.flush()
    return f


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def switch(root, name, dest):
    """Point link `root`/`name` at `dest`: a new symlink renamed over the old one."""
    link, tmp = os.path.join(root, name), os.path.join(root, "." + name + ".tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(dest, tmp)
    os.replace(tmp, link)


def pointed(root, name):
    """Where link `root`/`name` points ("releases/<id>"), or None."""
    path = os.path.join(root, name)
    return os.readlink(path).rstrip("/") if os.path.islink(path) else None


def release_id(dest):
    return dest and dest.rsplit("/", 1)[-1]


def has_release(root, dest):
    return os.path.isfile(os.path.join(root, dest, "manifest.json"))


def links(root):
    return {name: release_id(pointed(root, name)) for name in ("current", "previous")}


class Input:
    """The host's stream: an fd (each wait for bytes bounded by `idle` seconds) or a binary
    file; `ended` is what a stream that stops early is told as."""

    def __init__(self, source, idle=None, ended="upload interrupted: the stream ended early",
                 beat=lambda: None):
        self.source, self.idle, self.ended, self.buf = source, idle, ended, b""
        self.beat = beat
        try:  # a bigger pipe: fewer wake-ups between sshd and us (Linux)
            fcntl.fcntl(source, F_SETPIPE_SZ, 1 << 20)
        except (OSError, TypeError, ValueError):
            pass  # not a pipe, or not an fd

    def _more(self, n):
        if not isinstance(self.source, int):
            b = self.source.read(n)
        elif self.idle is None or select.select([self.source], [], [], self.idle)[0]:
            b = os.read(self.source, n)
        else:
            raise Failure("idle", "no data from the host for %g s; the push was abandoned"
                          % self.idle)
        if not b:
            raise Failure("interrupted", self.ended)
        self.beat()
        return b

    def take(self, n):  # up to `n` bytes, at least one
        if self.buf:
            b, self.buf = self.buf[:n], self.buf[n:]
            return b
        return self._more(n)

    def readline(self):
        while b"\n" not in self.buf:
            self.buf += self._more(1 << 16)
        line, _, self.buf = self.buf.partition(b"\n")
        return line


def _hash_blocks(digest, blocks):
    for b in iter(blocks.get, None):
        digest.update(b)


def write_from(inp, path, size, digest, sync=False):
    """Write the next `size` bytes of `inp` to `path`, hashed into `digest` on a second thread
    (hashlib drops the GIL) while this one reads and writes."""
    blocks = queue.Queue(8)
    hasher = threading.Thread(target=_hash_blocks, args=(digest, blocks))
    hasher.start()
    try:
        with open(path, "wb") as out:
            left = size
            while left:
                b = inp.take(min(left, BLOCK))
                out.write(b)
                blocks.put(b)
                left -= len(b)
            if sync:
                out.flush()
                os.fsync(out.fileno())
    finally:
        blocks.put(None)
        hasher.join()


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(BLOCK), b""):
            digest.update(b)
    return digest.hexdigest()


def link_known(root, stage, files, beat=lambda: None):
    """Link (or copy) into `stage` the files the device has; the names of damaged or gone ones."""
    damaged = []
    for f in (f for f in files if f.get("source")):
        beat()
        src, dst = os.path.join(root, f["source"]), os.path.join(stage, f["name"])
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            stop_at("link")
            if file_sha256(dst) == f["sha256"]:
                continue
        except FileNotFoundError:
            pass
        damaged.append(f["name"])
    return damaged


def receive_file(inp, stage, f):
    dst, digest = os.path.join(stage, f["name"]), hashlib.sha256()
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    write_from(inp, dst, f["size"], digest, sync=True)
    if digest.hexdigest() != f["sha256"]:
        raise Failure("bad_hash", "sha256 of %s on the device differs from the manifest"
                      % f["name"])


def switch_to(root, rid, keep):
    """Make release `rid` current (the old one previous), prune to `keep` older releases."""
    new, releases = "releases/" + rid, os.path.join(root, "releases")
    old, old_prev = pointed(root, "current"), pointed(root, "previous")
    switch(root, "current", new)
    try:  # `current` is switched: a failure from here on must say so
        stop_at("switched")
        if old and old != new:
            switch(root, "previous", old)
        fsync_dir(root)
        # the old `previous` is kept too: undoing this push (a failed verify) points back at it
        kept = {os.path.basename(d) for d in (new, old, old_prev) if d}
        older = sorted(n for n in os.listdir(releases) if not n.startswith(".") and n not in kept)
        for n in older[:max(0, len(older) - keep)]:
            shutil.rmtree(os.path.join(releases, n), ignore_errors=True)
    except Exception as exc:
        raise Failure("switched", str(exc)) from None
    return {"release": rid, "previous": old, "old_previous": old_prev}


def _terminated(signum, frame):
    raise Failure("ended", "ended by another push (SIGTERM): this one was silent too long")


def receive(root, stream, keep=KEEP_RELEASES, wait=LOCK_WAIT_S, idle=RECEIVE_IDLE_S,
            abandoned=ABANDONED_S):
    """Take one push from `stream` (an fd or a binary file) into a new release and switch
    `current` to it; the answer."""
    root = os.path.expanduser(root)
    releases = os.path.join(root, "releases")
    try:
        os.makedirs(releases, exist_ok=True)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
        raise Failure("remote_dir", "cannot create %s (%s)" % (releases, exc.strerror)) from None
    notes = []
    with take_lock(root, wait, abandoned, notes):
        for n in os.listdir(releases):
            if n.startswith(".staging-"):
                shutil.rmtree(os.path.join(releases, n), ignore_errors=True)
        heart = Heartbeat(root, None)
        main = threading.current_thread() is threading.main_thread()
        before = signal.signal(signal.SIGTERM, _terminated) if main else None
        try:
            inp = Input(stream, idle, beat=heart.beat)
            head = json.loads(inp.readline())
            rid = head["release"]
            stage = os.path.join(releases, ".staging-" + rid)
            heart = Heartbeat(root, os.path.basename(stage))
            os.mkdir(stage)
            try:
                damaged = link_known(root, stage, head["files"], heart.beat)
                if damaged:
                    raise Failure("damaged", "the device's copies of %s are damaged or missing"
                                  % ", ".join(damaged), files=damaged)
                for f in head["files"]:
                    if not f.get("source"):
                        receive_file(inp, stage, f)
                fsync_dir(stage)
                stop_at("fsynced")
                final = os.path.join(releases, rid)
                if os.path.exists(final):
                    shutil.rmtree(final)
                os.rename(stage, final)
                fsync_dir(releases)
                stop_at("renamed")
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
            answer = switch_to(root, rid, keep)
        finally:
            heart.end()
            if main:
                signal.signal(signal.SIGTERM, before)
    return dict(answer, note=notes[0]) if notes else answer


def _existing(root):
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise Failure("no_previous", "no previous release under %s" % root)
    return root


def rollback(root, to=None, wait=LOCK_WAIT_S, abandoned=ABANDONED_S):
    """Switch `current` to `previous` (or to release `to`); the links after."""
    root = _existing(root)
    with take_lock(root, wait, abandoned):
        old = pointed(root, "current")
        dest = "releases/" + to if to else pointed(root, "previous")
        if not dest:
            raise Failure("no_previous", "no previous release under %s" % root)
        if not has_release(root, dest):
            raise Failure("no_release", "release %s does not exist under %s" % (dest, root))
        switch(root, "current", dest)
        if old and old != dest:
            switch(root, "previous", old)
        return links(root)


def discard(root, failed, back_to=None, previous=None, wait=LOCK_WAIT_S,
            abandoned=ABANDONED_S):
    """Undo the push of release `failed` if it is still current: `current` back to `back_to`
    (removed when None), `previous` to `previous`, the failed release deleted so it can never
    become current again; the links after."""
    root = _existing(root)
    with take_lock(root, wait, abandoned):
        dest = "releases/" + failed
        old = pointed(root, "current")
        if old != dest:
            raise Failure("not_current", "current is %s, not the failed release %s: another "
                          "push switched it meanwhile" % (release_id(old) or "unset", failed))
        if back_to and not has_release(root, back_to):
            raise Failure("no_release", "release %s to go back to is gone under %s"
                          % (back_to, root))
        if back_to:
            switch(root, "current", back_to)
        else:
            os.unlink(os.path.join(root, "current"))
        if previous and has_release(root, previous):
            switch(root, "previous", previous)
        elif os.path.lexists(os.path.join(root, "previous")):
            os.unlink(os.path.join(root, "previous"))
        shutil.rmtree(os.path.join(root, dest), ignore_errors=True)
        return links(root)


def relay(pipe):
    """Copy a child's stderr to ours as it comes (the host streams it); its last non-empty line."""
    last, pending = b"", b""
    for block in iter(lambda: os.read(pipe.fileno(), 1 << 16), b""):
        sys.stderr.buffer.write(block)
        sys.stderr.buffer.flush()
        *lines, pending = (pending + block).split(b"\n")
        last = next((ln for ln in reversed(lines) if ln.strip()), last)
    if pending.strip():
        last = pending
    return last.decode("utf-8", "replace").strip()


def locked(root, command, wait=LOCK_WAIT_S, abandoned=ABANDONED_S):
    """Run shell `command` holding `root`'s lock; a failing command is a Failure whose kind is
    COMMAND_KINDS[its status] ("failed" otherwise), its exit status kept."""
    root = os.path.expanduser(root)
    os.makedirs(root, exist_ok=True)
    with take_lock(root, wait, abandoned):
        child = subprocess.Popen(["/bin/sh", "-c", command], stderr=subprocess.PIPE)
        last = relay(child.stderr)
        status = child.wait()
    if status:
        raise Failure(COMMAND_KINDS.get(status, "failed"), last or "exit status %d" % status,
                      status=status, echo=False)


def put(root, sub, stream):
    """Write the files of `stream` into `root`/`sub` (each via a .part file); the answer."""
    directory = os.path.join(os.path.expanduser(root), sub)
    os.makedirs(directory, exist_ok=True)
    inp = Input(stream, ended="upload interrupted")
    names = []
    for name, size in json.loads(inp.readline()):
        tmp = os.path.join(directory, "." + name + ".part")
        write_from(inp, tmp, size, hashlib.sha256())
        os.replace(tmp, os.path.join(directory, name))
        names.append(name)
    return {"put": names}


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise Failure("usage", "%s (see %s --help)" % (message, self.prog))


def parser():
    p = Parser(prog=PROG, description="qdeploy's programs on a device (see the "
               "docstring of qdeploy/push/agent.py)")
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name, text, run, *names, lock=True):
        c = commands.add_parser(name, help=text, description=text)
        for n in ("remote_dir",) + names:
            c.add_argument(n)
        if lock:
            c.add_argument("--wait", type=float, default=LOCK_WAIT_S,
                           help="seconds to wait for the remote dir's lock")
            c.add_argument("--abandoned", type=float, default=ABANDONED_S,
                           help="end a lock-holding receiver silent this many seconds")
        c.set_defaults(run=run)
        return c

    c = command("receive", "take one push from stdin into a new release, switch `current`",
                lambda a, stdin: receive(a.remote_dir, stdin, a.keep, a.wait, a.idle,
                                             a.abandoned))
    c.add_argument("--keep", type=int, default=KEEP_RELEASES, help="older releases kept")
    c.add_argument("--idle", type=float, default=RECEIVE_IDLE_S,
                   help="seconds without a byte from the host before giving up")
    command("rollback", "switch `current` to `previous` (or to release --to)",
            lambda a, stdin: rollback(a.remote_dir, a.to, a.wait, a.abandoned)
            ).add_argument("--to")
    c = command("discard", "undo the push of `release` while it is `current`",
                lambda a, stdin: discard(a.remote_dir, a.release, a.back_to, a.previous, a.wait,
                                     a.abandoned),
                "release")
    c.add_argument("--back-to", help="where `current` goes back to (removed without)")
    c.add_argument("--previous", help="where `previous` goes back to (removed without)")
    command("locked", "run shell command `cmd` holding the remote dir's lock",
            lambda a, stdin: locked(a.remote_dir, a.cmd, a.wait, a.abandoned), "cmd")
    command("put", "write the files on stdin into remote_dir/sub",
            lambda a, stdin: put(a.remote_dir, a.sub, stdin), "sub", lock=False)
    return p


def main(argv, stdin=0):
    """Run one command (`stdin`: an fd or a binary file); its exit status."""
    try:
        args = parser().parse_args(argv)
        result = args.run(args, stdin)
        if result is not None:
            answer(result)
        return 0
    except Failure as failure:
        return report(failure)
    except OSError as exc:
        return report(Failure("disk_full" if exc.errno == errno.ENOSPC else "failed", str(exc)))
    except Exception as exc:
        return report(Failure("failed", str(exc) or type(exc).__name__))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
