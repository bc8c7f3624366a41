"""file_info lists a bounded sample of a file's holders: seeders first, then partial
holders at random, a different sample for each downloader and for each of its refreshes.

The choice is pure (tested on a state), and a download in this process, its tracker
answering with the real file_info from a cap of 2, still meets every peer it needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2p.errors import LocalError
from p2p.messages.sync import Event
from p2p.messages.tracker import MAX_LISTED_PEERS, Reply, Request
from p2p.pieces import PIECE_SIZE, Bitfield
from peers import download as download_mod
from peers.download import Download
from tests.files_support import OfflineHost
from tests.procs import wait_for
from tests.test_download_links import COUNT, DATA, HASHES, SHA1, run_peers, run_to_the_end
from tests.test_download_links import Peer as PiecePeer
from trackers import commands
from trackers import state as st
from trackers.commands import Context, choose_peers, session_id, ticket_for

pytestmark = pytest.mark.timeout(60)

CTX = Context(salt=b"S" * 16)
_ts = itertools.count(1)


def _given(s: st.State, etype: str, **data: Any) -> None:
    outcome = st.apply(s, Event(1, next(_ts), next(_ts), "", 0, etype, data))
    assert outcome.ok, outcome


def crowd(seeders: int, partials: int, downloaders: int = 2, count: int = 16) -> st.State:
    """Group g: ``seeders`` members with all of f.bin (``count`` pieces), ``partials``
    with part of it, and ``downloaders`` (d0, d1...) with none; all logged in.  A member
    listens at ``<user>.lan:7000``; user ``u`` has session ``sid-u``."""
    s = st.State()
    users = ([f"s{i}" for i in range(seeders)] + [f"p{i}" for i in range(partials)]
             + [f"d{i}" for i in range(downloaders)])
    _given(s, "create_user", user="owner", pw=b"x")
    _given(s, "create_group", group="g", user="owner")
    for user in users:
        _given(s, "create_user", user=user, pw=b"x")
        _given(s, "login", user=user, sid=session_id(f"token-{user}"), cid=f"cid-{user}",
               addr=f"{user}.lan:7000")
        _given(s, "join_group", group="g", user=user)
        _given(s, "accept_request", group="g", user="owner", member=user)
    have = Bitfield(count)
    have.add(0)
    for user in users[:seeders + partials]:
        _given(s, "share", sid=session_id(f"token-{user}"), group="g", name="f.bin",
               size=count * PIECE_SIZE, sha1="a" * 40, pieces=b"\x01" * 20 * count,
               have=None if user.startswith("s") else have.to_bytes())
    return s


def listed(s: st.State, user: str, rid: int = 1) -> list[dict[str, Any]]:
    """The peers ``user`` is told of in file_info request number ``rid``."""
    req = Request("file_info", f"cid-{user}", rid, {"group": "g", "name": "f.bin"},
                  f"token-{user}")
    reply = commands.plan(s, req, CTX)
    assert isinstance(reply, Reply) and reply.ok, reply
    peers: list[dict[str, Any]] = reply.result["peers"]
    return peers


def users(peers: list[dict[str, Any]]) -> list[str]:
    return [peer["user"] for peer in peers]


# --- the choice --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("seeders", "partials", "seeders_listed", "partials_listed"),
    [
        (3, 200, 3, 47),  # every seeder, the rest of the list partial holders
        (100, 100, 25, 25),  # seeders in plenty: half the list is kept for partial holders
        (100, 3, 47, 3),  # ...unless there are fewer of them to list
        (0, 200, 0, 50),
        (200, 0, 50, 0),
        (10, 20, 10, 20),  # under the cap: everyone
    ],
)
def test_file_info_lists_at_most_the_cap_seeders_first(
        seeders: int, partials: int, seeders_listed: int, partials_listed: int) -> None:
    assert MAX_LISTED_PEERS == 50
    s = crowd(seeders, partials)
    peers = listed(s, "d0")
    names = users(peers)
    assert len(names) == len(set(names)) == seeders_listed + partials_listed
    assert sum(1 for n in names if n.startswith("s")) == seeders_listed
    assert sum(1 for n in names if n.startswith("p")) == partials_listed
    assert not any(n.startswith("d") for n in names)  # nobody who holds nothing, nor d0
    assert names[:seeders_listed] == [n for n in names if n.startswith("s")]  # seeders first
    record = s.files["g"]["f.bin"]
    for peer in peers:  # each entry is what it was before the cap: its bitfield, its ticket
        sid = session_id(f"token-{peer['user']}")
        assert peer["addr"] == f"{peer['user']}.lan:7000"
        assert peer["have"] == record.holders[sid]
        assert peer["ticket"] == ticket_for(session_id("token-d0"), "g", peer["addr"])


def test_different_downloaders_are_told_of_different_partial_holders() -> None:
    s = crowd(0, 200, downloaders=8)
    samples = {frozenset(users(listed(s, f"d{i}"))) for i in range(8)}
    assert len(samples) == 8
    # and no partial holder is on every list: the load spreads over the group
    assert len(frozenset.intersection(*samples)) < 10


def test_a_downloader_meets_every_holder_over_its_refreshes() -> None:
    s = crowd(2, 200)
    seen: set[str] = set()
    for rid in range(1, 101):
        names = users(listed(s, "d0", rid))
        assert {"s0", "s1"} <= set(names)  # seeders on every list
        seen.update(names)
        if len(seen) == 202:
            break
    assert len(seen) == 202, f"{202 - len(seen)} holders never listed in 100 refreshes"
    assert rid <= 60, rid  # 48 of 200 partial holders a time: about 25 refreshes
    # successive refreshes list others
    assert users(listed(s, "d0", 1)) != users(listed(s, "d0", 2))


def test_a_retried_request_gets_the_same_answer() -> None:
    """A retry at another tracker (same state, same request) is told the same peers."""
    s = crowd(5, 200)
    assert listed(s, "d0", 7) == listed(st.copy_state(s), "d0", 7)


def test_choose_peers_with_a_small_cap() -> None:
    holders: dict[str, bytes | None] = {f"seed{i}": None for i in range(3)}
    holders.update({f"part{i}": b"\x80" for i in range(5)})
    for seed in (b"a", b"b", b"c"):
        chosen = choose_peers(holders, seed, 4)
        assert len(chosen) == len(set(chosen)) == 4
        assert sum(1 for h in chosen if h.startswith("seed")) == 2
    assert sorted(choose_peers(holders, b"a", 100)) == sorted(holders)
    assert choose_peers({}, b"a", 4) == []
    assert choose_peers(holders, b"a", 0) == []


# --- a download whose tracker lists 2 peers at a time -----------------------------------

# The same six-piece file and one-piece peers as the link-cap tests.


class PlannedTracker(OfflineHost):
    """A tracker in this process: file_info is the real command, on a state where each
    peer shares the piece it holds."""

    def __init__(self, peers: list[PiecePeer]) -> None:
        self.state = st.State()
        self.rid = itertools.count(1)
        self.listed: list[set[str]] = []
        _given(self.state, "create_user", user="bob", pw=b"x")
        _given(self.state, "login", user="bob", sid=session_id("token-bob"), cid="cid-bob",
               addr="127.0.0.1:1")
        _given(self.state, "create_group", group="g", user="bob")
        for peer in peers:
            user = f"peer{peer.index}"
            _given(self.state, "create_user", user=user, pw=b"x")
            _given(self.state, "login", user=user, sid=f"sid-{user}", cid=f"cid-{user}",
                   addr=peer.addr)
            _given(self.state, "join_group", group="g", user=user)
            _given(self.state, "accept_request", group="g", user="bob", member=user)
            _given(self.state, "share", sid=f"sid-{user}", group="g", name="f.bin",
                   size=len(DATA), sha1=SHA1, pieces=HASHES, have=peer.bits.to_bytes())

    def tracker_call(self, op: str, args: dict[str, Any]) -> Any:
        if op != "file_info":
            raise LocalError("not in this test", "bad_request")
        reply = commands.plan(self.state, Request(op, "cid-bob", next(self.rid), args,
                                                  "token-bob"), CTX)
        assert isinstance(reply, Reply) and reply.ok, reply
        self.listed.append({peer["addr"] for peer in reply.result["peers"]})
        return reply.result


@pytest.fixture
def one_piece_peers() -> Iterator[list[PiecePeer]]:
    yield from run_peers([PiecePeer(i) for i in range(COUNT)])


def test_a_download_meets_more_peers_than_one_reply_lists(
        one_piece_peers: list[PiecePeer], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Six peers hold one piece each and the tracker lists two at a time: the download
    completes only by keeping the peers it met and adding the ones each refresh lists."""
    monkeypatch.setattr(commands, "MAX_LISTED_PEERS", 2)
    monkeypatch.setattr(download_mod, "REFRESH_EVERY", 0.1)
    tracker = PlannedTracker(one_piece_peers)
    d = Download(tracker, "g", "f.bin", tmp_path / "f.bin", tmp_path / "resume.json",
                 tracker.tracker_call("file_info", {"group": "g", "name": "f.bin"}))
    run_to_the_end(d, tmp_path)
    assert d.sources == {peer.addr: 1 for peer in one_piece_peers}
    assert all(len(addrs) <= 2 for addrs in tracker.listed)
    # A peer met once is kept, not dialled again each time the tracker lists it.
    assert all(peer.hellos == 1 for peer in one_piece_peers), [p.hellos for p in
                                                                one_piece_peers]


def test_a_download_keeps_peers_the_tracker_no_longer_lists(
        one_piece_peers: list[PiecePeer], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """More peers connected at once than any reply lists: none is dropped for being left
    off the latest list (each holds a piece nobody else has, so none could go)."""
    monkeypatch.setattr(commands, "MAX_LISTED_PEERS", 2)
    monkeypatch.setattr(download_mod, "REFRESH_EVERY", 0.1)
    peers = one_piece_peers
    for peer in peers[1:]:
        peer.stop.set()  # they hold a piece each but never answer: the download waits
        peer.join(5)
    tracker = PlannedTracker(peers)
    d = Download(tracker, "g", "f.bin", tmp_path / "f.bin", tmp_path / "resume.json",
                 tracker.tracker_call("file_info", {"group": "g", "name": "f.bin"}))
    d.start()
    try:
        wait_for(lambda: d.sources.get(peers[0].addr) == 1, 20, "the one live peer's piece")
        after = len(tracker.listed)
        wait_for(lambda: len(tracker.listed) > after + 3
                 and any(peers[0].addr not in addrs for addrs in tracker.listed[after:]),
                 20, "refreshes that leave the live peer out")
        assert d.snapshot()["peers"] == 1 and peers[0].hellos == 1, d.snapshot()
    finally:
        d.stop()
