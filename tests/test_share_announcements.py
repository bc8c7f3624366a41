"""Share-state calls (partial share, progress and completion ``have``, ``unshare``) reach
the tracker in order: the queue on its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from p2p.errors import ProtocolError
from peers.share_announcements import ShareAnnouncements
from tests.procs import wait_for

pytestmark = pytest.mark.timeout(60)

KEY = ("g", "f.bin")
OTHER = ("g", "other.bin")


# --- the queue on its own -------------------------------------------------------------

class Wire:
    """What the queue sends: recorded in order; a call for ``hold_name`` waits for
    ``release`` (a tracker that has not answered yet)."""

    def __init__(self, hold_name: str | None = None) -> None:
        self.sent: list[tuple[str, str, str]] = []  # (token, op, name)
        self.hold_name = hold_name
        self.holding = threading.Event()
        self.release = threading.Event()

    def send(self, token: str, op: str, args: dict[str, Any]) -> Any:
        if args["name"] == self.hold_name and not self.holding.is_set():
            self.holding.set()
            assert self.release.wait(10)
        self.sent.append((token, op, args["name"]))
        return op


@pytest.fixture
def wire() -> Iterator[Wire]:
    wire = Wire(hold_name="first.bin")
    yield wire
    wire.release.set()


def settled(*results: Future[Any]) -> list[Any]:
    """Each future's result, or the code of its ProtocolError."""
    out = []
    for result in results:
        try:
            out.append(result.result(10))
        except ProtocolError as exc:
            out.append(exc.code)
    return out


def test_calls_go_out_in_the_order_queued(wire: Wire) -> None:
    queue = ShareAnnouncements(wire.send)
    try:
        results = [queue.submit(("g", name), op, {}, "t")
                   for name, op in [("a", "share"), ("b", "have"), ("a", "have"),
                                    ("a", "unshare")]]
        assert settled(*results) == ["share", "have", "have", "unshare"]
        assert wire.sent == [("t", "share", "a"), ("t", "have", "b"), ("t", "have", "a"),
                             ("t", "unshare", "a")]
    finally:
        queue.close(5)


def test_withdraw_drops_what_waits_for_the_file_and_goes_after_what_is_out(
        wire: Wire) -> None:
    queue = ShareAnnouncements(wire.send)
    try:
        out = queue.submit(("g", "first.bin"), "have", {"have": b"\x80"}, "t")
        wait_for(wire.holding.is_set, 5, "the first call to be out")
        queued = [queue.submit(("g", "first.bin"), "have", {"have": None}, "t"),
                  queue.submit(OTHER, "have", {"have": None}, "t")]
        unshare = queue.withdraw(("g", "first.bin"), "t")
        # The one waiting is dropped at once; the one out is answered first.
        assert settled(queued[0]) == ["not_shared"]
        assert not unshare.done()
        wire.release.set()
        assert settled(out, queued[1], unshare) == ["have", "have", "unshare"]
        assert wire.sent == [("t", "have", "first.bin"), ("t", "have", "other.bin"),
                             ("t", "unshare", "first.bin")]
    finally:
        queue.close(5)


def test_a_call_no_longer_wanted_when_its_turn_comes_is_not_sent(wire: Wire) -> None:
    queue = ShareAnnouncements(wire.send)
    sharing = True
    try:
        queue.submit(("g", "first.bin"), "have", {}, "t")
        wait_for(wire.holding.is_set, 5, "the first call to be out")
        late = queue.submit(KEY, "have", {}, "t", lambda: sharing)
        sharing = False  # stop_share came while it waited
        wire.release.set()
        assert settled(late) == ["not_shared"]
        assert ("t", "have", "f.bin") not in wire.sent
    finally:
        queue.close(5)


def test_calls_of_an_ended_session_are_not_sent(wire: Wire) -> None:
    queue = ShareAnnouncements(wire.send)
    try:
        queue.submit(("g", "first.bin"), "have", {}, "t")
        wait_for(wire.holding.is_set, 5, "the first call to be out")
        waiting = queue.submit(KEY, "have", {}, "t")
        queue.drop_pending("the session has ended")
        assert settled(waiting, queue.submit(KEY, "have", {}, None)) == [
            "not_logged_in", "not_logged_in"]
        wire.release.set()
        wait_for(lambda: len(wire.sent) == 1, 5, "the call that was out")
    finally:
        queue.close(5)


def test_close_is_bounded_and_the_thread_ends_with_the_call_out(wire: Wire) -> None:
    queue = ShareAnnouncements(wire.send)
    queue.submit(("g", "first.bin"), "have", {}, "t")
    wait_for(wire.holding.is_set, 5, "the call to be out")
    waiting = queue.submit(KEY, "have", {}, "t")
    started = time.monotonic()
    queue.close(0.1)  # the call out has not been answered
    assert time.monotonic() - started < 2
    assert settled(waiting, queue.submit(KEY, "have", {}, "t")) == [
        "not_logged_in", "not_logged_in"]
    wire.release.set()
    wait_for(lambda: not [t for t in threading.enumerate()
                          if t.name == "share-announcements"], 5, "the thread to end")
