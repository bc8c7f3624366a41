"""The piece server in-process: cancelled and orphaned requests are not served, Hello must
name the shared file's SHA1, a ticket is trusted only for a few seconds (an open connection
too), and a non-member learns nothing about what is shared.

Served at 512 KiB/s (one piece a second after a one-piece burst), so a request the
server wrongly kept would show up as a piece about a second later.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from p2p import codec
from p2p.errors import LocalError
from p2p.messages import piece as msg
from p2p.pieces import PIECE_SIZE, Bitfield, piece_count, piece_sha1
from peers import piece_server, ticket_checks
from peers.piece_server import PieceServer
from peers.shares import ShareRegistry, Source
from peers.storage import PartialDownload
from tests.procs import free_port, wait_for

pytestmark = pytest.mark.timeout(30)

KEY = ("g", "f.bin")
COUNT = 6


def one_by_one(check: Callable[[str, str, str], bool]) -> ticket_checks.TicketsCheck:
    """A tracker that answers each ticket of a call with ``check``; an error fails the call."""
    return lambda asked: [check(*credentials) for credentials in asked]


class Served:
    """A PieceServer sharing one file of COUNT pieces (and a short one of ``tail``
    bytes) at one piece a second."""

    def __init__(self, tmp_path: Path, limit: float | None = PIECE_SIZE, tail: int = 0) -> None:
        self.data = bytes(range(256)) * (COUNT * PIECE_SIZE // 256) + bytes(tail)
        self.count = piece_count(len(self.data))
        path = tmp_path / "f.bin"
        path.write_bytes(self.data)
        hashes = b"".join(piece_sha1(self.data[i:i + PIECE_SIZE])
                          for i in range(0, len(self.data), PIECE_SIZE))
        self.sha1 = hashlib.sha1(self.data).hexdigest()
        self.registry = ShareRegistry(tmp_path / "client")
        self.registry.active = True
        self.registry.put(Source(KEY, len(self.data), hashes, path, sha1=self.sha1))
        self.port = free_port()
        self.server = PieceServer("127.0.0.1", self.port, self.registry,
                                  lambda asked: [True] * len(asked), upload_limit=limit)
        self.sockets: list[zmq.Socket[Any]] = []

    def connect(self, **options: int) -> zmq.Socket[Any]:
        """A DEALER connected to the server, closed with it; nothing opened yet.
        ``options`` are socket options set before connecting (``RCVHWM=1``)."""
        sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        sock.connect(f"tcp://127.0.0.1:{self.port}")
        self.sockets.append(sock)
        return sock

    def downloader(self) -> zmq.Socket[Any]:
        """A DEALER that has opened the file (its bitfield reply is consumed)."""
        sock = self.connect()
        have = hello(sock, self.sha1)
        assert isinstance(have, msg.Have) and have.bits is not None, have
        assert Bitfield.from_bytes(self.count, have.bits).complete
        return sock

    @property
    def served(self) -> int:
        return self.registry.served[KEY]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(0)
        self.server.stop()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    s.server.start()
    try:
        yield s
    finally:
        s.close()


def send(sock: zmq.Socket[Any], request: msg.Hello | msg.Get | msg.Cancel) -> None:
    sock.send(codec.encode(request.to_wire()))


def reply(sock: zmq.Socket[Any], timeout: float) -> msg.Reply | None:
    if not sock.poll(int(timeout * 1000)):
        return None
    return msg.parse_reply(sock.recv_multipart())


def hello(sock: zmq.Socket[Any], sha1: str) -> msg.Reply | None:
    send(sock, msg.Hello(*KEY, sha1, "bob", "ticket"))
    return reply(sock, 5)


def piece_index(sock: zmq.Socket[Any], timeout: float) -> int | None:
    got = reply(sock, timeout)
    if got is None:
        return None
    assert isinstance(got, msg.Piece), got
    return got.index


def test_cancelled_requests_are_not_served(served: Served) -> None:
    a, b = served.downloader(), served.downloader()
    for index in range(COUNT):
        send(a, msg.Get(*KEY, index))
    send(b, msg.Get(*KEY, 2))
    assert piece_index(a, 3) == 0  # the burst; the rest wait about a second each
    send(a, msg.Cancel(*KEY, 0))  # too late: already sent; harmless
    for index in range(1, COUNT - 1):
        send(a, msg.Cancel(*KEY, index))  # a keeps 5 only
    send(a, msg.Cancel("g", "other.bin", 5))  # not what a asked for: nothing happens
    assert piece_index(a, 3) == 5  # next in line, about a second later: 1..4 are gone
    # a's cancel of its own piece 2 did not touch b's request for the same piece.
    assert piece_index(b, 3) == 2
    assert piece_index(a, 1.5) is None
    assert served.served == 3


def test_a_short_last_piece_is_charged_only_its_bytes(tmp_path: Path) -> None:
    s = Served(tmp_path, tail=1)
    s.server.start()
    try:
        a = s.downloader()
        send(a, msg.Get(*KEY, 0))
        assert piece_index(a, 3) == 0  # the one-second burst, all used
        send(a, msg.Get(*KEY, COUNT))  # one byte: a whole piece would wait a second
        assert piece_index(a, 0.5) == COUNT
    finally:
        s.close()


def test_requests_of_a_downloader_that_went_away_are_dropped(served: Served) -> None:
    a = served.downloader()
    for index in range(COUNT):
        send(a, msg.Get(*KEY, index))
    assert piece_index(a, 3) == 0  # the burst; the other five wait about a second each
    a.close(0)  # gone without a cancel (killed)
    b = served.downloader()
    send(b, msg.Get(*KEY, 3))
    # At most one of a's pieces is tried (and found undeliverable) before b's turn;
    # keeping a's whole queue would make b wait five seconds.
    assert piece_index(b, 3.5) == 3
    # The server counts a piece just after sending it: a reply to a later request comes
    # after that count (one thread serves both, in order).
    assert isinstance(hello(b, served.sha1), msg.Have)
    assert served.served == 2  # nothing counted for a piece that could not be sent
    assert not served.server._queue


def test_hello_must_name_the_shared_files_sha1(served: Served) -> None:
    sock = served.connect()
    for wrong in ("0" * 40, served.sha1.upper(), ""):
        refused = hello(sock, wrong)
        assert isinstance(refused, msg.Refused) and refused.code == "not_shared", refused
        assert refused.index is None and refused.error == "f.bin is not shared here"
    send(sock, msg.Get(*KEY, 0))  # nothing was opened
    refused = reply(sock, 5)
    assert isinstance(refused, msg.Refused) and refused.code == "not_member", refused
    have = hello(sock, served.sha1)
    assert isinstance(have, msg.Have) and have.bits is not None
    send(sock, msg.Get(*KEY, 1))
    assert piece_index(sock, 3) == 1


def test_a_complete_source_needs_its_sha1(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Source(KEY, 1, b"\0" * 20, tmp_path / "f.bin")


def test_a_piece_several_downloaders_ask_for_is_read_once_and_then_let_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    read = Source.read

    def counted(source: Source, index: int) -> bytes | None:
        reads.append(index)
        return read(source, index)

    monkeypatch.setattr(Source, "read", counted)
    s = Served(tmp_path, limit=None)
    s.server.start()
    second = s.data[PIECE_SIZE:2 * PIECE_SIZE]
    try:
        alone = s.downloader()
        for _ in range(2):
            send(alone, msg.Get(*KEY, 0))
            assert piece_index(alone, 5) == 0
        assert reads == [0, 0]  # nobody else opened the file: nothing kept
        downloaders = [alone, s.downloader(), s.downloader()]
        for sock in downloaders:
            send(sock, msg.Get(*KEY, 1))
            got = reply(sock, 5)
            assert isinstance(got, msg.Piece) and got.index == 1 and got.data == second
        assert reads == [0, 0, 1]
        assert len(s.server._recent) == 0  # each of the three has had it
    finally:
        s.close()


def test_pieces_are_not_kept_for_a_downloader_gone_without_a_word(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing tells the server that a downloader closed its connection, so each past
    # download of a seeded file stays among those that opened it: the pieces read for
    # the one downloader left must not be kept for them.
    now, s, _checks = _asking(tmp_path, monkeypatch, {"bob": True})
    try:
        gone = s.downloader()
        send(gone, msg.Get(*KEY, 0))
        assert piece_index(gone, 5) == 0
        gone.close(0)
        now[0] += piece_server.ASKING_WITHIN  # a while later, another downloads it alone
        alone = s.downloader()
        for index in range(COUNT):
            send(alone, msg.Get(*KEY, index))
            assert piece_index(alone, 5) == index
        assert len(s.server._recent) == 0
    finally:
        s.close()


def test_a_downloader_that_asks_and_never_reads_holds_up_only_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a bound, zmq would hold every piece such a downloader asked for.
    monkeypatch.setattr(piece_server, "MAX_UNSENT_PER_USER", 2)
    monkeypatch.setattr(piece_server, "MAX_QUEUED_PER_USER", 30)
    s = Served(tmp_path, limit=None)
    s.server.start()
    try:
        # takes nothing more in while one reply waits, with a small kernel buffer
        flooder = s.connect(RCVHWM=1, RCVBUF=4096)
        assert isinstance(hello(flooder, s.sha1), msg.Have)
        for index in range(40):
            send(flooder, msg.Get(*KEY, index % 5))
        carol = s.connect()
        send(carol, msg.Hello(*KEY, s.sha1, "carol", "ticket"))
        assert isinstance(reply(carol, 5), msg.Have)
        send(carol, msg.Get(*KEY, 5))
        assert piece_index(carol, 5) == 5  # served past the flooder's waiting requests
        sent = s.served - 1  # read before what waits: a send in between only lowers the sum
        waiting = len(s.server._queue)
        # 2 unsent in zmq and a few in the kernel's socket buffers: not the 30 it may
        # have waiting, nor the 40 asked for; at most 30 wait, the rest were ignored
        assert sent < 20, sent
        assert waiting <= 30
        for _ in range(sent + waiting):  # once it reads, what waited goes out too
            assert piece_index(flooder, 5) in range(5)
    finally:
        s.close()


def _close_unstarted(s: Served) -> None:
    for sock in s.sockets:
        sock.close(0)
    s.server._sock.close(0)
    s.server._notices.close(0)


def test_a_short_piece_counts_among_the_unsent_like_a_whole_one(tmp_path: Path) -> None:
    # pyzmq copies a frame under its copy_threshold (64 KiB) even with copy=False and
    # returns a tracker that is done at once: a member asking for a short last piece
    # (or a small file) again and again, never reading, would escape the bound.
    s = Served(tmp_path, limit=None, tail=1000)  # the server thread is not started
    try:
        sock = s.connect()
        send(sock, msg.Get(*KEY, COUNT))  # for its identity on the ROUTER
        assert s.server._sock.poll(5000)
        ident, _body = s.server._sock.recv_multipart()
        data = s.data[COUNT * PIECE_SIZE:]
        assert len(data) == 1000
        assert s.server._send(ident, [msg.piece_frames(KEY[1], COUNT), data], unsent_for="bob")
        tracker = s.server._unsent["bob"][-1]
        assert tracker.events, "a tracker done from the start"
        tracker.wait(5)  # done once zmq has written it out
        assert piece_index(sock, 5) == COUNT
    finally:
        _close_unstarted(s)


def test_pieces_gone_out_behind_a_slow_connection_are_not_counted_unsent(
        tmp_path: Path) -> None:
    # One user, two connections: the oldest piece waits on a slow (or sleeping) one
    # while the pieces sent since on the other went out.  Counting those would stop
    # the fast connection until the slow one reads, past its SILENCE_TIMEOUT.
    s = Served(tmp_path, limit=None)
    try:
        waiting, gone = types.SimpleNamespace(done=False), types.SimpleNamespace(done=True)
        trackers: list[Any] = [waiting] + [gone] * (piece_server.MAX_UNSENT_PER_USER - 1)
        s.server._unsent["bob"] = collections.deque(trackers)
        assert s.server._unsent_count("bob") == 1
    finally:
        _close_unstarted(s)


def test_a_recently_served_piece_goes_only_to_shares_that_hold_it(tmp_path: Path) -> None:
    # The same file (same SHA1) shared in another group by a downloader that does not
    # hold piece 0 yet: the copy of piece 0 just served from the first share must not
    # leak out through the second.
    s = Served(tmp_path, limit=None)
    hashes = [piece_sha1(s.data[i:i + PIECE_SIZE]) for i in range(0, len(s.data), PIECE_SIZE)]
    (tmp_path / "other").mkdir()
    partial = PartialDownload.open(tmp_path / "other" / "f.bin", len(s.data), s.sha1, hashes,
                                   tmp_path / "other.resume")
    assert partial.write_piece(1, s.data[PIECE_SIZE:2 * PIECE_SIZE])
    other_key = ("g2", "f.bin")
    s.registry.put(Source(other_key, len(s.data), b"".join(hashes), partial.part_path, partial))
    s.server.start()
    try:
        first = s.downloader()
        send(first, msg.Get(*KEY, 0))
        assert piece_index(first, 5) == 0
        second = s.connect()
        send(second, msg.Hello(*other_key, s.sha1, "bob", "ticket"))
        opened = reply(second, 5)
        assert isinstance(opened, msg.Have) and opened.bits is not None
        send(second, msg.Get(*other_key, 0))
        refused = reply(second, 5)
        assert isinstance(refused, msg.Refused) and refused.code == "bad_piece", refused
        send(second, msg.Get(*other_key, 1))
        assert piece_index(second, 5) == 1
    finally:
        s.close()
        partial.close()


def test_announced_pieces_reach_a_downloader_once_each_in_few_messages(tmp_path: Path) -> None:
    s = Served(tmp_path, limit=None)
    s.server.start()
    try:
        sock = s.downloader()
        count = msg.MAX_HAVE_INDICES + 500  # more than one message can carry
        for index in range(count):
            s.server.announce(KEY, index)
        told: list[int] = []
        messages = 0
        while len(told) < count:
            got = reply(sock, 5)
            assert isinstance(got, msg.Have) and got.bits is None, got
            told += got.indices
            messages += 1
        assert sorted(told) == list(range(count))
        assert messages <= 10  # batched, not one message per piece
        assert reply(sock, 0.3) is None
    finally:
        s.close()


def _fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The server's clock, moved only by the test: ticket expiry happens when we say."""
    now = [1000.0]
    monkeypatch.setattr(piece_server, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _members(s: Served, member: dict[str, bool]) -> list[str]:
    """Make ``s`` ask ``member`` about tickets; returns the users it asked about, in order."""
    checks: list[str] = []

    def check(user: str, _group: str, _ticket: str) -> bool:
        checks.append(user)
        return member[user]

    s.server._check_tickets = one_by_one(check)
    return checks


def _asking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member: dict[str, bool],
            limit: float | None = None) -> tuple[list[float], Served, list[str]]:
    """A started server on the fake clock whose tickets ``member`` vouches for: its
    clock, itself, and the users it asked about."""
    now = _fake_clock(monkeypatch)
    s = Served(tmp_path, limit=limit)
    checks = _members(s, member)
    s.server.start()
    return now, s, checks


def test_an_idle_connection_hears_of_new_pieces_only_while_its_user_is_a_member(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(piece_server, "NEWS_DELAY", 0.0)  # the clock stands still
    member = {"bob": True}
    now, s, checks = _asking(tmp_path, monkeypatch, member)
    try:
        sock = s.downloader()  # opens the file, then asks for nothing
        member["bob"] = False
        now[0] += ticket_checks.TICKET_CACHE_SECONDS + 0.01
        s.server.announce(KEY, 0)  # not told: its yes ran out; asked again, and cut
        refused = reply(sock, 5)
        assert isinstance(refused, msg.Refused) and refused.code == "not_member", refused
        assert checks == ["bob", "bob"]
        s.server.announce(KEY, 1)
        assert reply(sock, 0.5) is None
    finally:
        s.close()


def test_an_open_connection_is_cut_once_its_user_left_the_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    member = {"bob": True}
    now, s, checks = _asking(tmp_path, monkeypatch, member)
    try:
        sock = s.downloader()
        send(sock, msg.Get(*KEY, 0))
        assert piece_index(sock, 5) == 0
        member["bob"] = False  # bob leaves the group
        now[0] += ticket_checks.TICKET_CACHE_SECONDS - ticket_checks.REFRESH_AHEAD - 0.5
        send(sock, msg.Get(*KEY, 1))
        assert piece_index(sock, 5) == 1  # the ticket is still cached
        assert reply(sock, 0.3) is None
        assert checks == ["bob"]
        now[0] += 1.0  # about to expire: served still, and the tracker asked again
        send(sock, msg.Get(*KEY, 2))
        assert piece_index(sock, 5) == 2
        refused = reply(sock, 5)
        assert isinstance(refused, msg.Refused) and refused.code == "not_member", refused
        assert refused.index is None  # the opening is withdrawn, not one piece
        assert checks == ["bob", "bob"]
        send(sock, msg.Get(*KEY, 3))  # forgotten: refused without asking the tracker again
        refused = reply(sock, 5)
        assert isinstance(refused, msg.Refused) and refused.code == "not_member", refused
        assert checks == ["bob", "bob"]
        assert reply(sock, 0.3) is None
        assert s.served == 3
    finally:
        s.close()


def test_requests_queued_behind_the_upload_limit_are_not_served_once_the_user_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    member = {"bob": True}
    # One piece a second, on a frozen clock: the upload limit refills only when we say.
    now, s, checks = _asking(tmp_path, monkeypatch, member, limit=PIECE_SIZE)
    try:
        sock = s.downloader()
        for index in range(4):
            send(sock, msg.Get(*KEY, index))
        assert piece_index(sock, 5) == 0  # the burst; 1..3 wait for the limit
        reopened = hello(sock, s.sha1)  # answered in order: the Gets before it are queued
        assert isinstance(reopened, msg.Have), reopened
        member["bob"] = False
        now[0] += ticket_checks.TICKET_CACHE_SECONDS + 0.01  # room for one more, ticket stale
        refused = reply(sock, 5)
        assert isinstance(refused, msg.Refused) and refused.code == "not_member", refused
        assert checks == ["bob", "bob"]
        now[0] += 10.0
        assert reply(sock, 1.5) is None  # 1, 2 and 3 were dropped with the opening
        assert s.served == 1
    finally:
        s.close()


def test_with_no_tracker_to_ask_open_connections_go_on_and_new_ones_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now, s, checks = _asking(tmp_path, monkeypatch, {"bob": True})
    try:
        sock = s.downloader()

        def no_tracker(_user: str, _group: str, _ticket: str) -> bool:
            checks.append("down")
            raise LocalError("no tracker answered within 8 s", "no_tracker")

        s.server._check_tickets = one_by_one(no_tracker)
        now[0] += ticket_checks.TICKET_CACHE_SECONDS - 0.5  # in use as its yes runs out
        send(sock, msg.Get(*KEY, 0))
        assert piece_index(sock, 5) == 0
        wait_for(lambda: checks == ["bob", "down"], 5, "the re-check to find no tracker")
        now[0] += 1.0  # past the first yes: good when asked, so held over one period
        send(sock, msg.Get(*KEY, 1))
        assert piece_index(sock, 5) == 1
        assert checks == ["bob", "down"]  # and not asked again at once
        other = s.connect()
        send(other, msg.Hello(*KEY, s.sha1, "carol", "t"))
        refused = reply(other, 5)
        assert isinstance(refused, msg.Refused) and refused.code == "no_tracker", refused
        assert refused.index is None
        assert checks == ["bob", "down", "down"]  # bob's re-check, carol's check
        # Left unused past its yes, a connection gets nothing until a tracker answers,
        # and the tracker is asked again only every few seconds meanwhile.
        now[0] += 60.0
        send(sock, msg.Get(*KEY, 2))
        assert reply(sock, 0.5) is None
        assert checks == ["bob", "down", "down", "down"]
        now[0] += ticket_checks.RETRY_UNANSWERED
        s.server._check_tickets = lambda asked: [True] * len(asked)  # a tracker is back
        assert piece_index(sock, 5) == 2
    finally:
        s.close()


def test_an_open_connection_asks_the_tracker_once_per_cache_period(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now, s, checks = _asking(tmp_path, monkeypatch, {"bob": True})
    try:
        sock = s.downloader()
        for period in range(1, 3):
            now[0] += ticket_checks.TICKET_CACHE_SECONDS + 0.01
            for index in range(COUNT):  # many Gets, one check
                send(sock, msg.Get(*KEY, index))
            assert [piece_index(sock, 5) for _ in range(COUNT)] == list(range(COUNT))
            assert checks == ["bob"] * (1 + period)
    finally:
        s.close()


def test_a_stranger_cannot_tell_what_is_shared_here(tmp_path: Path) -> None:
    s = Served(tmp_path, limit=None)
    asked: list[str] = []

    def check_ticket(user: str, _group: str, _ticket: str) -> bool:
        asked.append(user)
        return user == "bob"

    s.server._check_tickets = one_by_one(check_ticket)
    s.server.start()
    sock = s.connect()

    def ask(name: str, sha1: str, user: str) -> msg.Refused:
        send(sock, msg.Hello("g", name, sha1, user, "x"))
        refused = reply(sock, 5)
        assert isinstance(refused, msg.Refused), refused
        assert s.sha1 not in refused.error.lower(), refused
        return refused

    try:
        # Another SHA1 and a name not shared here get the same answer, member or not,
        # without asking a tracker: it takes the file's SHA1 to learn anything.
        for user in ("eve", "bob"):
            answers = {(r.code, r.error.replace(name, "NAME"))
                       for name, sha1 in [("f.bin", "0" * 40), ("nope.bin", "0" * 40),
                                          ("nope.bin", s.sha1)]
                       for r in [ask(name, sha1, user)]}
            assert answers == {("not_shared", "NAME is not shared here")}, answers
        assert asked == []
        refused = ask("f.bin", s.sha1, "eve")
        assert (refused.code, refused.error) == ("not_member", "eve may not download from group g")
        assert asked == ["eve"] and s.served == 0
    finally:
        s.close()


def _stuck(s: Served, user: str) -> threading.Event:
    """Make every ticket check of ``user`` hang until the returned event is set (a tracker
    that does not answer); other users are members."""
    release = threading.Event()

    def check(who: str, _group: str, _ticket: str) -> bool:
        if who == user:
            assert release.wait(20)
        return True

    s.server._check_tickets = one_by_one(check)
    return release


def test_a_ticket_waiting_for_a_tracker_holds_up_no_one_else(tmp_path: Path) -> None:
    s = Served(tmp_path, limit=None)
    release = _stuck(s, "carol")
    s.server.start()
    try:
        bob = s.downloader()
        carol = s.connect()
        send(carol, msg.Hello(*KEY, s.sha1, "carol", "t"))  # her check hangs
        for index in range(COUNT):
            send(bob, msg.Get(*KEY, index))
        assert [piece_index(bob, 2) for _ in range(COUNT)] == list(range(COUNT))
        late = s.connect()  # a new hello whose ticket is known good is answered too
        send(late, msg.Hello(*KEY, s.sha1, "bob", "ticket"))
        assert isinstance(reply(late, 2), msg.Have)
        assert reply(carol, 0.2) is None
        release.set()
        opened = reply(carol, 5)
        assert isinstance(opened, msg.Have) and opened.bits is not None, opened
    finally:
        release.set()
        s.close()


def test_an_open_connection_is_served_on_while_its_ticket_is_asked_about_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = _fake_clock(monkeypatch)
    s = Served(tmp_path, limit=None)
    s.server.start()
    try:
        bob = s.downloader()
        release = threading.Event()

        def slow_no(_user: str, _group: str, _ticket: str) -> bool:
            assert release.wait(20)
            return False

        s.server._check_tickets = one_by_one(slow_no)
        now[0] += ticket_checks.TICKET_CACHE_SECONDS - 0.5  # in use as its yes runs out
        send(bob, msg.Get(*KEY, 0))
        assert piece_index(bob, 2) == 0  # and the tracker is asked again: it hangs
        now[0] += 3.0  # past the yes, still no answer
        for index in range(COUNT):
            send(bob, msg.Get(*KEY, index))
        assert [piece_index(bob, 2) for _ in range(COUNT)] == list(range(COUNT))
        release.set()  # and says no: bob left the group
        refused = reply(bob, 5)
        assert isinstance(refused, msg.Refused) and refused.code == "not_member", refused
        send(bob, msg.Get(*KEY, 0))
        refused = reply(bob, 5)
        assert isinstance(refused, msg.Refused) and refused.code == "not_member", refused
        assert s.served == COUNT + 1
    finally:
        release.set()
        s.close()


def test_too_many_tickets_waiting_gets_busy(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(piece_server, "MAX_ASKING", 1)
    s = Served(tmp_path, limit=None)
    release = _stuck(s, "carol")
    s.server.start()
    try:
        carol, dave = s.connect(), s.connect()
        send(carol, msg.Hello(*KEY, s.sha1, "carol", "t"))
        wait_for(lambda: s.server._tickets.asking, 5, "carol's ticket to be asked about")
        send(dave, msg.Hello(*KEY, s.sha1, "dave", "t"))
        refused = reply(dave, 5)
        assert isinstance(refused, msg.Refused) and refused.code == "busy", refused
        release.set()
        assert isinstance(reply(carol, 5), msg.Have)
    finally:
        release.set()
        s.close()


def test_a_no_for_a_downloader_gone_with_two_files_open_leaves_the_server_serving(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = _fake_clock(monkeypatch)
    s = Served(tmp_path, limit=None)
    other = ("g", "f2.bin")
    (tmp_path / "f2.bin").write_bytes(s.data)
    source = s.registry.get(KEY)
    assert source is not None
    s.registry.put(Source(other, len(s.data), source.pieces, tmp_path / "f2.bin", sha1=s.sha1))
    release, member = threading.Event(), {"bob": True, "carol": True}

    def check(user: str, _group: str, _ticket: str) -> bool:
        if user == "bob" and not member["bob"]:
            assert release.wait(20)
        return member[user]

    s.server._check_tickets = one_by_one(check)
    gone = s.server._sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    s.server.start()
    try:
        bob = s.connect()
        for key in (KEY, other):  # one connection, one ticket, two files
            send(bob, msg.Hello(*key, s.sha1, "bob", "ticket"))
            assert isinstance(reply(bob, 5), msg.Have)
        member["bob"] = False  # bob leaves; his re-check hangs while he goes away
        now[0] += ticket_checks.TICKET_CACHE_SECONDS - 0.5
        send(bob, msg.Get(*KEY, 0))
        assert piece_index(bob, 5) == 0
        bob.close(0)
        assert gone.poll(5000), "the server did not see bob go"
        release.set()  # the no: withdrawing his first opening finds him gone
        carol = s.connect()
        send(carol, msg.Hello(*KEY, s.sha1, "carol", "t"))
        assert isinstance(reply(carol, 5), msg.Have)
        send(carol, msg.Get(*KEY, 1))
        assert piece_index(carol, 5) == 1
        assert s.server._thread.is_alive()
    finally:
        release.set()
        s.close()  # before its monitor: closing that first hangs the zmq context
        gone.close(0)


def test_memory_is_given_back_once_serving_has_been_idle_a_while(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[float] = []
    now, s, _checks = _asking(tmp_path, monkeypatch, {"bob": True})
    monkeypatch.setattr(piece_server, "release_free_memory", lambda: released.append(now[0]))
    try:
        sock = s.downloader()
        s.downloader()  # a second downloader of the file, so served pieces are kept
        send(sock, msg.Get(*KEY, 0))
        assert piece_index(sock, 5) == 0
        assert reply(sock, 0.3) is None and released == []  # the loop went round: too soon
        assert len(s.server._recent) == 1
        now[0] += piece_server.RELEASE_AFTER_IDLE
        wait_for(lambda: released, 5, "the idle server to give memory back")
        assert released == [now[0]] and len(s.server._recent) == 0
        assert reply(sock, 0.3) is None and len(released) == 1  # once, not every pass
        send(sock, msg.Get(*KEY, 1))  # serving again (its ticket is asked about anew)
        assert piece_index(sock, 5) == 1
        now[0] += piece_server.RELEASE_AFTER_IDLE
        wait_for(lambda: len(released) == 2, 5, "a second release after the next idle spell")
    finally:
        s.close()


def test_made_up_users_from_one_address_get_a_few_log_lines_not_one_each(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Anyone who knows a shared file's SHA1 can send hellos with tickets made up for a
    new user each time; the refusals are logged within the bounds of one address, not
    of one line per made-up user (the log's source table holds 64 of those)."""
    s = Served(tmp_path, limit=None)
    s.server._check_tickets = one_by_one(lambda *_credentials: False)
    s.server.start()
    sock = s.connect()
    users = 100
    try:
        with caplog.at_level("WARNING", logger=piece_server.log.name):
            for i in range(users):
                send(sock, msg.Hello(*KEY, s.sha1, f"eve{i}", "t"))
            answers = [reply(sock, 5) for _ in range(users)]
            assert all(isinstance(a, msg.Refused) and a.code == "not_member"
                       for a in answers), answers
        refused = [r.getMessage() for r in caplog.records
                   if r.getMessage().startswith("refused eve")]
        assert 1 <= len(refused) <= piece_server.BoundedLog(piece_server.log).budget.burst, (
            len(refused), refused[:8])
        assert all("127.0.0.1" in line for line in refused), refused[:3]
    finally:
        s.close()
