"""A download withdraws the requests it no longer needs: the endgame duplicate of a piece
that came from another peer, everything out to a peer it drops, and everything out when
it stops.  Hand-made peers record what they are sent."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from p2p.errors import LocalError
from p2p.messages import piece as msg
from p2p.pieces import PIECE_SIZE, Bitfield, piece_sha1
from peers import download as download_mod
from peers.download import Download
from peers.storage import PartialDownload
from tests.files_support import OfflineHost
from tests.procs import free_port, wait_for

pytestmark = pytest.mark.timeout(30)

COUNT = 2
DATA = bytes(range(256)) * (COUNT * PIECE_SIZE // 256 - 4)  # the last piece is short


class Peer(threading.Thread):
    """Claims the pieces in ``has``; serves a Get only for a piece in ``serves``, and
    only once ``gate`` is set.  Every Get and Cancel it receives is recorded."""

    def __init__(self, has: set[int], serves: frozenset[int] = frozenset(),
                 gate: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.port = free_port()
        self.has, self.serves, self.gate = has, serves, gate
        self.got: list[tuple[str, int]] = []
        self.got_get = {i: threading.Event() for i in range(COUNT)}
        self.ready = threading.Event()
        self.stop = threading.Event()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def requests(self, kind: str) -> list[int]:
        return [index for k, index in list(self.got) if k == kind]

    def run(self) -> None:
        sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(f"tcp://{self.addr}")
        self.ready.set()
        pending: list[tuple[bytes, int]] = []
        try:
            while not self.stop.is_set():
                if sock.poll(20):
                    ident, body = sock.recv_multipart()
                    pending += self._record(sock, ident, msg.parse_request(body))
                if pending and (self.gate is None or self.gate.is_set()):
                    for ident, index in pending:
                        chunk = DATA[index * PIECE_SIZE:(index + 1) * PIECE_SIZE]
                        sock.send_multipart([ident, msg.piece_frames("f.bin", index), chunk])
                    pending = []
        finally:
            sock.close(0)

    def _record(self, sock: zmq.Socket[Any], ident: bytes,
                request: msg.Hello | msg.Get | msg.Cancel) -> list[tuple[bytes, int]]:
        if isinstance(request, msg.Hello):
            bits = Bitfield(COUNT)
            for i in self.has:
                bits.add(i)
            sock.send_multipart([ident, *msg.bitfield_frame("f.bin", bits.to_bytes())])
            return []
        if isinstance(request, msg.Cancel):
            self.got.append(("cancel", request.index))
            return []
        self.got.append(("get", request.index))
        self.got_get[request.index].set()
        return [(ident, request.index)] if request.index in self.serves else []


class Host(OfflineHost):
    """The client side a download needs; the tracker is unreachable (no new peers)."""

    def tracker_call(self, op: str, args: dict[str, Any]) -> Any:
        raise LocalError("no tracker in this test", "no_tracker")


def start(peers: list[Peer], tmp_path: Path, *new: Peer) -> Download:
    for peer in new:
        peer.start()
        assert peer.ready.wait(5)
        peers.append(peer)
    hashes = b"".join(piece_sha1(DATA[i:i + PIECE_SIZE]) for i in range(0, len(DATA),
                                                                         PIECE_SIZE))
    info = {"size": len(DATA), "sha1": hashlib.sha1(DATA).hexdigest(), "pieces": hashes,
            "peers": [{"addr": p.addr, "ticket": "t"} for p in new]}
    d = Download(Host(), "g", "f.bin", tmp_path / "f.bin", tmp_path / "resume.json", info)
    d.start()
    return d


def test_stop_withdraws_every_request_out(peers: list[Peer], tmp_path: Path) -> None:
    silent = Peer(has={0, 1})
    d = start(peers, tmp_path, silent)
    wait_for(lambda: len(silent.requests("get")) == COUNT, 5, "both pieces to be requested")
    d.stop()
    assert not d.running and d.state == "downloading"
    wait_for(lambda: sorted(silent.requests("cancel")) == [0, 1], 5, "cancels of both")


def test_endgame_duplicate_and_a_dropped_peer_are_cancelled(
        peers: list[Peer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_mod, "SILENCE_TIMEOUT", 1.5)
    silent = Peer(has={0, 1})  # asked for both pieces (0 in the endgame), answers nothing
    # It serves piece 0 once the silent peer holds a request for it too.
    server = Peer(has={0}, serves=frozenset({0}), gate=silent.got_get[0])
    d = start(peers, tmp_path, silent, server)
    try:
        # Piece 0 came from the other peer: the silent one is told at once, while the
        # download goes on (it still wants piece 1, only the silent peer has it).
        wait_for(lambda: silent.requests("cancel") == [0], 3, "the endgame cancel")
        assert server.requests("get") == [0] and silent.requests("get").count(0) == 1
        assert d.running and d.snapshot()["progress"] == 0.5
        # Silent with a request out: dropped, and its request withdrawn.
        wait_for(lambda: silent.requests("cancel") == [0, 1], 5, "the cancel on drop")
        assert d.running
        assert server.requests("cancel") == []  # it owes us nothing
    finally:
        d.stop()


def test_a_piece_being_checked_is_not_requested_again(
        peers: list[Peer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Checking a piece can take a while (the hasher may hold the checkers back); its
    # copy from the other peer, and the endgame, must not ask for it over and over.
    real = PartialDownload.verify

    def slow(self: PartialDownload, index: int, data: Any) -> Any:
        time.sleep(0.3)
        return real(self, index, data)

    monkeypatch.setattr(PartialDownload, "verify", slow)
    a = Peer(has={0, 1}, serves=frozenset({0, 1}))
    b = Peer(has={0, 1}, serves=frozenset({0, 1}))
    d = start(peers, tmp_path, a, b)
    try:
        wait_for(lambda: d.state == "complete", 10, "the download to complete")
    finally:
        d.stop()
    gets = a.requests("get") + b.requests("get")
    # Each piece from one peer, at most once more in the endgame.
    assert all(gets.count(i) <= 2 for i in range(COUNT)), gets
    assert (tmp_path / "f.bin").read_bytes() == DATA
