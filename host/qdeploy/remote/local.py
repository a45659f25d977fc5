"""The `local` target: a `Link` whose commands run under /bin/sh on this machine."""

from __future__ import annotations

import subprocess
import threading
from typing import Optional

from qdeploy.remote.connection import (COMMAND_TIMEOUT_S, CommandResult, ConnectionLost,
                                       LineCallback, LineSplitter, Stdin, chunks)


class LocalConnection:
    """The `local` target: commands run under /bin/sh on this machine."""

    name = "local"
    is_local = True

    def __init__(self, command_timeout: float = COMMAND_TIMEOUT_S):
        self.command_timeout = command_timeout

    def open(self) -> "LocalConnection":
        return self

    def close(self) -> None:
        pass

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def run(self, command: str, stdin: Stdin = None, on_stderr: LineCallback = None,
            timeout: Optional[float] = None, what: str = "the command") -> CommandResult:
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = LineSplitter(None), LineSplitter(on_stderr)

        def pump(stream, sink):
            for block in iter(lambda: stream.read1(1 << 16), b""):
                sink.feed(block)

        readers = [threading.Thread(target=pump, args=(proc.stdout, out), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, err), daemon=True)]
        for t in readers:
            t.start()
        try:
            for chunk in chunks(stdin):
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the command stopped reading; its exit status and stderr say why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        try:
            status = proc.wait(timeout=timeout or self.command_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ConnectionLost(f"local: command timed out after "
                                 f"{timeout or self.command_timeout:.0f} s") from None
        for t in readers:
            t.join()
        err.close()
        return CommandResult(status, bytes(out.data), bytes(err.data))
