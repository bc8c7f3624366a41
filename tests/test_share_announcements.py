"""Share-state calls (partial share, progress and completion ``have``, ``unshare``) reach
the tracker in order, and never hold up a download's end: the queue on its own, then a
real Client and Download against a hand-made peer and a stand-in tracker."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from p2p.errors import ProtocolError, RemoteError
from p2p.pieces import PIECE_SIZE, piece_sha1
from peers.client import COMPLETION_GRACE, Client
from peers.share_announcements import ShareAnnouncements
from peers.tracker_client import TrackerClient
from peers.transfers import Notify
from tests.files_support import StandIn, client_without_trackers
from tests.procs import wait_for
from tests.test_download_cancel import DATA, Peer

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
    others = set(threading.enumerate())  # other tests' clients may still be closing
    queue = ShareAnnouncements(wire.send)
    [thread] = [t for t in threading.enumerate()
                if t.name == "share-announcements" and t not in others]
    queue.submit(("g", "first.bin"), "have", {}, "t")
    wait_for(wire.holding.is_set, 5, "the call to be out")
    waiting = queue.submit(KEY, "have", {}, "t")
    started = time.monotonic()
    queue.close(0.1)  # the call out has not been answered
    assert time.monotonic() - started < 2
    assert settled(waiting, queue.submit(KEY, "have", {}, "t")) == [
        "not_logged_in", "not_logged_in"]
    wire.release.set()
    thread.join(5)
    assert not thread.is_alive(), "the thread did not end"


# --- a real client and download ---------------------------------------------------------

HOLD_FOR = 1.0  # a held call waits this long for an unshare that may overtake it


class ListingTracker(StandIn):
    """A tracker that lists what bob's session shares, as a real one does (a ``have``
    lists its sender again), and records the share-state calls in the order it takes
    them.  The first call of ``hold`` is slow: it is taken only once an ``unshare`` has
    arrived, or after HOLD_FOR (then an unshare that overtook it would be undone)."""

    def __init__(self, real: TrackerClient, peer: str, hold: str | None = None,
                 hang: bool = False) -> None:
        super().__init__(real)
        self.peer, self.hold, self.hang = peer, hold, hang
        self.listed: set[tuple[str, str]] = set()
        self.taken: list[str] = []  # share-state ops of f.bin, in the order taken
        self.holding = threading.Event()
        self.unshared = threading.Event()
        self.answer = threading.Event()  # with ``hang``: no share-state call is answered
        self._lock = threading.Lock()

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        args = args or {}
        if op == "file_info":
            return {"group": "g", "name": "f.bin", "size": len(DATA),
                    "sha1": hashlib.sha1(DATA).hexdigest(), "pieces": HASHES,
                    "peers": [{"user": "alice", "addr": self.peer, "have": None,
                               "ticket": "t"}]}
        if op not in ("share", "have", "unshare"):
            return None  # login, ping, logout
        if self.hang:
            assert self.answer.wait(20)
            raise RemoteError("no tracker answered", "no_tracker")
        if op == self.hold and not self.holding.is_set():
            self.holding.set()
            self.unshared.wait(HOLD_FOR)
        key = (args["group"], args["name"])
        with self._lock:
            self.taken.append(op)
            if op == "unshare":
                self.unshared.set()
                if key not in self.listed:
                    raise RemoteError(f"{key[1]} is not shared", "not_shared")
                self.listed.discard(key)
            else:
                self.listed.add(key)
        return None


HASHES = b"".join(piece_sha1(DATA[i:i + PIECE_SIZE]) for i in range(0, len(DATA), PIECE_SIZE))


def serving(peers: list[Peer], pieces: set[int]) -> Peer:
    """A peer (alice) that has and serves ``pieces`` of f.bin."""
    peer = Peer(has=pieces, serves=frozenset(pieces))
    peer.start()
    assert peer.ready.wait(5)
    peers.append(peer)
    return peer


def bob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peer: Peer, *,
        hold: str | None = None, hang: bool = False, notify: Notify | None = None
        ) -> tuple[Client, ListingTracker, Path]:
    """A real client (not logged in yet) whose tracker is a ListingTracker that lists
    ``peer`` (``hold`` and ``hang`` as there), and the directory it downloads into."""
    client = client_without_trackers(tmp_path, monkeypatch, notify)
    tracker = ListingTracker(client.tracker, peer.addr, hold, hang)
    client.tracker = tracker  # type: ignore[assignment]
    dest = tmp_path / "dl"
    dest.mkdir()
    return client, tracker, dest


@pytest.mark.parametrize("hold", ["share", "have"])
def test_stop_share_leaves_the_file_unlisted_whatever_was_on_its_way(
        hold: str, peers: list[Peer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """bob's download has one piece of two: its partial share, then its progress note,
    go to a slow tracker.  stop_share while the share is out (the note waiting behind
    it), or while the note is out: the tracker takes the unshare last, and nothing
    after it lists the file again."""
    client, tracker, dest = bob(tmp_path, monkeypatch, serving(peers, {0}), hold=hold)
    try:
        client.login("bob", "pw")
        client.download_file("g", "f.bin", str(dest))
        wait_for(tracker.holding.is_set, 10, f"bob's {hold} to be out")
        before = len(tracker.taken)
        outcome: list[BaseException | None] = []

        def stop_share() -> None:
            try:
                client.stop_share("g", "f.bin")
                outcome.append(None)
            except BaseException as exc:  # the test looks at it
                outcome.append(exc)

        stopping = threading.Thread(target=stop_share)
        stopping.start()
        stopping.join(10)
        assert outcome == [None]
        client.downloads.pause_all()  # whatever it still had to send has gone
        assert tracker.taken[before:] == [hold, "unshare"], tracker.taken
        assert KEY not in tracker.listed
        assert client.registry.get(KEY) is None
    finally:
        client.close(logout=False)


def test_a_completed_download_is_announced_at_once_while_the_tracker_hangs(
        peers: list[Peer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No share-state call is answered (as with every tracker down): the download
    completes, and its notice and ``wait`` come at once, not after those calls."""
    events: list[tuple[str, float]] = []
    client, tracker, dest = bob(
        tmp_path, monkeypatch, serving(peers, {0, 1}), hang=True,
        notify=lambda name, data: events.append((name, time.monotonic())))
    try:
        client.login("bob", "pw")
        client.download_file("g", "f.bin", str(dest))
        verified = wait_for(lambda: client.show_downloads()[0]["progress"] == 1.0
                            and time.monotonic(), 20, "every piece verified")
        # What `wait` waits for, with a deadline (`wait` itself has none).
        [download] = client.downloads.find("g", "f.bin")
        ended = download.wait(COMPLETION_GRACE + 5)
        returned = time.monotonic() - verified
        assert ended, "wait did not return within 5 s of the last piece's check"
        assert returned < COMPLETION_GRACE + 1.0, returned
        assert [d["state"] for d in client.wait("g", "f.bin")] == ["complete"]
        assert (dest / "f.bin").read_bytes() == DATA
        notices = [at - verified for name, at in events if name == "download_complete"]
        assert len(notices) == 1 and notices[0] < COMPLETION_GRACE + 1.0, notices
    finally:
        tracker.answer.set()
        client.close(logout=False)


def test_stop_share_while_a_completed_download_decides_to_share_lasts(
        peers: list[Peer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stop_share comes just as bob's download completes, after it found the file still
    shared and before it starts serving it: the file is neither served nor shared again
    at the next login."""
    client, tracker, dest = bob(tmp_path, monkeypatch, serving(peers, {0, 1}))
    deciding, stopped = threading.Event(), threading.Event()
    share_downloaded = client._share_downloaded

    def slow_share(download: Any) -> Any:
        deciding.set()
        stopped.wait(2)  # a stop_share that can run now gets the time to finish
        return share_downloaded(download)

    monkeypatch.setattr(client, "_share_downloaded", slow_share)
    try:
        client.login("bob", "pw")
        client.download_file("g", "f.bin", str(dest))
        wait_for(deciding.is_set, 20, "the download to complete")
        client.stop_share("g", "f.bin")
        stopped.set()
        assert [d["state"] for d in client.wait("g", "f.bin")] == ["complete"]
        assert (dest / "f.bin").read_bytes() == DATA
        assert client.registry.get(KEY) is None
        assert [s for s in client.registry.saved() if (s.group, s.name) == KEY] == []
        client.downloads.pause_all()
        assert KEY not in tracker.listed
    finally:
        stopped.set()
        client.close(logout=False)
