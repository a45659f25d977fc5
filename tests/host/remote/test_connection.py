"""The `Link` protocol both connections satisfy, the stream helpers they share, and the
`local` target's connection (qdeploy.remote.connection, qdeploy.remote.local)."""

from __future__ import annotations

import pytest

from qdeploy.remote import targets
from qdeploy.remote.connection import (CommandResult, ConnectionLost, LineSplitter, Link,
                                       chunks)
from qdeploy.remote.local import LocalConnection
from qdeploy.remote.ssh import Connection


def test_both_connections_are_links():
    endpoint = targets.Endpoint(name="pi", hostname="pi.local", port=22, user="pi")
    for conn in (LocalConnection(), Connection(endpoint)):
        assert isinstance(conn, Link)
        assert isinstance(conn.name, str) and isinstance(conn.is_local, bool)
    assert LocalConnection().is_local and not Connection(endpoint).is_local
    assert not isinstance(object(), Link)


def test_line_splitter_feeds_whole_lines_and_keeps_everything():
    lines = []
    s = LineSplitter(lines.append)
    for block in (b"one\r\ntw", b"o\n", b"", b"thr", b"ee"):
        s.feed(block)
    assert lines == ["one", "two"]
    s.close()
    assert lines == ["one", "two", "three"]
    assert bytes(s.data) == b"one\r\ntwo\nthree"
    quiet = LineSplitter(None)
    quiet.feed(b"a\nb")
    quiet.close()
    assert bytes(quiet.data) == b"a\nb"


def test_chunks():
    assert list(chunks(None)) == []
    assert list(chunks(b"ab")) == [b"ab"] and list(chunks(bytearray(b"ab"))) == [b"ab"]
    assert list(chunks(iter([b"a", b"b"]))) == [b"a", b"b"]


def test_command_result():
    assert CommandResult(0, b"", b"").ok
    failed = CommandResult(3, b"", b"warning\n  the reason  \n\n")
    assert not failed.ok and failed.last_error_line() == "the reason"
    assert CommandResult(3, b"", b"").last_error_line() == "exit status 3"


def test_local_connection_feeds_stdin_and_streams_stderr():
    lines = []
    with LocalConnection() as conn:
        result = conn.run("cat; echo err1 >&2; echo err2 >&2; exit 4",
                          stdin=iter([b"x" * 100000, b"end"]), on_stderr=lines.append)
    assert result.exit_status == 4 and result.stdout == b"x" * 100000 + b"end"
    assert lines == ["err1", "err2"] and result.stderr == b"err1\nerr2\n"


def test_local_connection_command_that_stops_reading_is_not_an_error():
    result = LocalConnection().run("exit 0", stdin=iter([b"y" * (1 << 20)] * 4))
    assert result.ok


def test_local_connection_timeout_is_connection_lost():
    with pytest.raises(ConnectionLost, match="local: command timed out after 1 s"):
        LocalConnection(command_timeout=60).run("sleep 30", timeout=1)
