"""The deadline watch thread (qdeploy.remote.deadline.Watch) with a stand-in transport: when a
step's deadline or a keepalive expires it closes the transport and names the step."""

from __future__ import annotations

import threading
import time

import pytest

from qdeploy.remote import deadline
from qdeploy.remote.connection import ConnectionLost, Stalled


class Transport:
    """What the watch uses of a paramiko Transport; `answer` says how keepalives go."""

    def __init__(self, answer: bool = True):
        self.closed = threading.Event()
        self.answer = answer
        self.requests = 0

    def close(self):
        self.closed.set()

    def is_active(self):
        return not self.closed.is_set()

    def global_request(self, kind, wait=True):
        assert kind == "keepalive@openssh.com" and wait
        self.requests += 1
        if not self.answer:
            self.closed.wait(10)  # a dead peer: no answer until the transport is closed
        return None


@pytest.fixture
def watches():
    made = []

    def make(transport, *args) -> deadline.Watch:
        watch = deadline.Watch(transport, *args)
        made.append(watch)
        return watch

    yield make
    for w in made:
        w.stop()


def test_a_silent_step_closes_the_transport_and_is_named(watches):
    t = Transport()
    watch = watches(t, 0)
    start = time.monotonic()
    with watch.step("waiting for qrun bench", 0.2, "command"):
        assert t.closed.wait(3)
    assert 0.2 <= time.monotonic() - start < 2
    assert watch.expired == ("waiting for qrun bench", 0.2, "command")
    err = watch.stalled("pi", "pi@box:22")
    assert isinstance(err, Stalled) and isinstance(err, ConnectionLost)
    assert str(err) == ("pi: no answer from pi@box:22 for 0.2 s (command timeout) while "
                        "waiting for qrun bench")


def test_signs_of_life_keep_a_step_going(watches):
    t = Transport()
    watch = watches(t, 0)
    with watch.step("sending to the receiver", 0.5, "command"):
        for _ in range(10):  # 1 s in all, never 0.5 s silent
            time.sleep(0.1)
            watch.touch()
    assert not t.closed.is_set() and watch.expired is None
    assert watch.stalled("pi", "box") is None


def test_steps_nest_and_no_step_means_no_deadline(watches):
    t = Transport()
    watch = watches(t, 0)
    with watch.step("outer", 5.0, "connect"):
        with watch.step("inner", 4.0, "command"):
            assert (watch.name, watch.limit, watch.kind) == ("inner", 4.0, "command")
        assert (watch.name, watch.limit, watch.kind) == ("outer", 5.0, "connect")
    assert watch.limit is None
    time.sleep(0.3)
    assert not t.closed.is_set()


def test_the_handshake_phase_names_the_step_and_each_change_counts_as_life(watches):
    t = Transport()
    watch = watches(t, 0)
    steps = iter(["exchanging keys", "authenticating"] * 100)
    current = {"step": deadline.BANNER_STEP}
    watch.phase = lambda: current["step"]
    watch.limit, watch.kind = 0.5, "connect"
    for _ in range(10):  # a new step every 0.1 s: 1 s without expiring
        time.sleep(0.1)
        current["step"] = next(steps)
    assert not t.closed.is_set()
    current["step"] = deadline.BANNER_STEP
    assert t.closed.wait(3)
    err = watch.stalled("pi", "box:22")
    assert "box:22 accepted the connection but sent no SSH banner within 0.5 s" in str(err)


def test_unanswered_keepalives_close_the_transport(watches):
    t = Transport(answer=False)
    watch = watches(t, 0.1, 2)
    watch.start_keepalives()
    assert t.closed.wait(3)
    assert watch.expired == ("idle", pytest.approx(0.2), "keepalive")
    assert "to keepalives for 0.2 s while idle (ServerAliveInterval x ServerAliveCountMax)" \
        in str(watch.stalled("pi", "box"))


def test_answered_keepalives_keep_a_silent_connection(watches):
    t = Transport(answer=True)
    watch = watches(t, 0.1, 2)
    watch.start_keepalives()
    time.sleep(0.8)
    assert t.requests >= 2 and not t.closed.is_set() and watch.asked is None


def test_no_keepalives_when_off_and_stop_ends_the_watch(watches):
    t = Transport(answer=False)
    watch = watches(t, 0, 3)
    watch.start_keepalives()
    watch.stop()
    watch.limit = 0.05
    time.sleep(0.3)
    assert t.requests == 0 and not t.closed.is_set() and watch.expired is None
