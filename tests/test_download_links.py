"""A download keeps at most MAX_PEER_LINKS peer links open, however many peers its
tracker lists; at the cap, a link left with nothing we lack makes room for a listed peer
that has some, and a peer with nothing for us waits for a free slot.

The choice is pure (``plan_links``); downloads in this process, from peers that are
threads holding one piece each, show it holds in the loop.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from p2p.messages import piece as msg
from p2p.pieces import PIECE_SIZE, Bitfield, piece_sha1
from peers import download as download_mod
from peers.download import MAX_PEER_LINKS, Download, plan_links
from peers.picker import Picker
from tests.files_support import OfflineHost
from tests.procs import free_port

pytestmark = pytest.mark.timeout(60)


# --- the choice -------------------------------------------------------------------------

def test_below_the_cap_every_peer_is_dialled_those_with_pieces_we_lack_first() -> None:
    assert plan_links([("a", False), ("b", True), ("c", True)], 0, [], 10) == (
        ["b", "c", "a"], [])


def test_only_free_slots_are_filled() -> None:
    assert plan_links([("a", True), ("b", True), ("c", True)], 3, [], 4) == (["a"], [])
    assert plan_links([("a", True)], 4, [], 4) == ([], [])  # every link is of use: wait


def test_at_the_cap_idle_links_make_room_for_peers_with_pieces_we_lack() -> None:
    dial, close = plan_links([("none", False), ("a", True), ("b", True), ("c", True)],
                             4, ["idle1", "idle2"], 4)
    assert (dial, close) == (["a", "b"], ["idle1", "idle2"])


def test_a_peer_with_nothing_we_lack_never_displaces_a_link() -> None:
    assert plan_links([("none", False)], 4, ["idle"], 4) == ([], [])
    # It takes a free slot, after the peers that have something for us.
    assert plan_links([("none", False), ("a", True)], 3, ["idle"], 5) == (["a", "none"], [])
    assert plan_links([("none", False), ("a", True)], 4, ["idle"], 5) == (["a"], [])


@given(candidates=st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), st.booleans(),
                                  max_size=12),
       open_links=st.integers(0, 20), idle=st.integers(0, 20), cap=st.integers(0, 16))
def test_the_links_never_outgrow_the_cap(candidates: dict[str, bool], open_links: int,
                                         idle: int, cap: int) -> None:
    idle = min(idle, open_links)
    idle_links = [f"link{i}" for i in range(idle)]
    dial, close = plan_links(list(candidates.items()), open_links, idle_links, cap)
    assert open_links - len(close) + len(dial) <= max(cap, open_links)
    assert set(dial) <= set(candidates) and len(set(dial)) == len(dial)
    assert close == idle_links[:len(close)]  # the first idle ones, each once
    wanted = [addr for addr, useful in candidates.items() if useful]
    assert len(close) <= len(wanted)  # a link only goes for a peer that has something
    if any(not candidates[addr] for addr in dial):  # a peer with nothing took a slot:
        assert set(wanted) <= set(dial)  # every one with something did too


# --- downloads whose tracker lists more peers than the cap ------------------------------

COUNT = 6
DATA = bytes(range(256)) * (COUNT * PIECE_SIZE // 256)
SHA1 = hashlib.sha1(DATA).hexdigest()
HASHES = b"".join(piece_sha1(DATA[i:i + PIECE_SIZE]) for i in range(0, len(DATA), PIECE_SIZE))


class Peer(threading.Thread):
    """A member that holds piece ``index`` of f.bin (None: no piece yet)."""

    def __init__(self, index: int | None) -> None:
        super().__init__(daemon=True)
        self.index = index
        self.bits = Bitfield(COUNT)
        if index is not None:
            self.bits.add(index)
        self.port = free_port()
        self.hellos = 0
        self.ready = threading.Event()
        self.stop = threading.Event()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self) -> None:
        sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(f"tcp://{self.addr}")
        self.ready.set()
        try:
            while not self.stop.is_set():
                if not sock.poll(20):
                    continue
                ident, body = sock.recv_multipart()
                request = msg.parse_request(body)
                if isinstance(request, msg.Hello):
                    self.hellos += 1
                    sock.send_multipart([ident, *msg.bitfield_frame("f.bin",
                                                                    self.bits.to_bytes())])
                elif isinstance(request, msg.Get) and request.index in self.bits:
                    start = request.index * PIECE_SIZE
                    sock.send_multipart([ident, msg.piece_frames("f.bin", request.index),
                                         DATA[start:start + PIECE_SIZE]])
        finally:
            sock.close(0)


class ListsEveryone(OfflineHost):
    """A tracker that lists every peer each time, in the same order, with its pieces."""

    def __init__(self, peers: list[Peer]) -> None:
        self.peers = peers

    def tracker_call(self, op: str, args: dict[str, Any]) -> Any:
        if op != "file_info":
            return None  # progress notes go nowhere
        return {"group": "g", "name": "f.bin", "size": len(DATA), "sha1": SHA1,
                "pieces": HASHES,
                "peers": [{"user": f"u{p.port}", "addr": p.addr, "ticket": "00",
                           "have": p.bits.to_bytes()} for p in self.peers]}


class Counted(Download):
    """A download that notes the most links it had open at once (only _connect_peers
    opens them)."""

    most = 0

    def _connect_peers(self, peers: list[dict[str, Any]], picker: Picker) -> None:
        super()._connect_peers(peers, picker)
        self.most = max(self.most, len(self._links))


def run_peers(peers: list[Peer]) -> Iterator[list[Peer]]:
    """Start ``peers``, yield them (a fixture's body), then stop them."""
    for peer in peers:
        peer.start()
        assert peer.ready.wait(5)
    yield peers
    for peer in peers:
        peer.stop.set()
        peer.join(5)


def run_to_the_end(d: Download, tmp_path: Path) -> None:
    """Start ``d`` (of f.bin into ``tmp_path``); it must complete, with DATA."""
    d.start()
    try:
        assert d.wait(40), d.snapshot()
    finally:
        d.stop()
    assert d.state == "complete", d.snapshot()
    assert (tmp_path / "f.bin").read_bytes() == DATA


def download(peers: list[Peer], tmp_path: Path) -> Counted:
    tracker = ListsEveryone(peers)
    d = Counted(tracker, "g", "f.bin", tmp_path / "f.bin", tmp_path / "resume.json",
                tracker.tracker_call("file_info", {}))
    run_to_the_end(d, tmp_path)
    return d


@pytest.fixture
def empty_then_one_piece_each() -> Iterator[list[Peer]]:
    """Three members with nothing yet, listed first, then six with one piece each."""
    yield from run_peers([Peer(None) for _ in range(3)] + [Peer(i) for i in range(COUNT)])


def test_links_rotate_within_the_cap_to_the_peers_that_have_what_we_lack(
        empty_then_one_piece_each: list[Peer], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Cap 2, nine peers listed each time: each one-piece peer's link, once it has given
    its piece, makes room for the next; the three with nothing are never dialled."""
    monkeypatch.setattr(download_mod, "MAX_PEER_LINKS", 2)
    monkeypatch.setattr(download_mod, "REFRESH_EVERY", 0.1)
    empty, holders = empty_then_one_piece_each[:3], empty_then_one_piece_each[3:]
    d = download(empty_then_one_piece_each, tmp_path)
    assert d.most <= 2, d.most
    assert d.sources == {peer.addr: 1 for peer in holders}
    assert [peer.hellos for peer in empty] == [0, 0, 0]
    assert all(peer.hellos == 1 for peer in holders), [p.hellos for p in holders]


@pytest.fixture
def crowd() -> Iterator[list[Peer]]:
    """More members than the cap, each with one piece (several with each piece)."""
    yield from run_peers([Peer(i % COUNT) for i in range(MAX_PEER_LINKS + 4)])


def test_a_download_opens_no_more_than_the_cap_of_links(crowd: list[Peer],
                                                        tmp_path: Path) -> None:
    d = download(crowd, tmp_path)
    assert d.most == MAX_PEER_LINKS, d.most
