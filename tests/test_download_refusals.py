"""A peer that refuses a download outright with not_member.

The refusal can be stale: the peer asks a tracker about our ticket, and that tracker
can lag behind the one that just gave it to us.  So the downloader asks again soon,
then less and less often while the peer keeps refusing, and starts over once it
has been let in.  Hand-made peers script the refusals and record every hello.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from p2p.errors import LocalError
from p2p.messages import piece as msg
from p2p.pieces import PIECE_SIZE, Bitfield, hash_file, piece_count, piece_sha1
from peers import download as download_mod
from peers.download import Download, not_member_retry
from tests.files_support import OfflineHost, Session, done, group_of, leftovers, make_file, pieces
from tests.procs import Cluster, free_port, wait_for

pytestmark = pytest.mark.timeout(60)

# What the peer does with its n-th hello (from 1): let the downloader in, or refuse.
Script = Callable[[int], bool]


class ScriptedPeer(threading.Thread):
    """Serves ``data`` as f.bin to the hellos ``admits`` lets in and refuses the others
    with not_member; ``withdraw_after`` closes an opening that long after it was
    made (a tracker said no on a re-check).  Records when each hello came."""

    def __init__(self, data: bytes, admits: Script, withdraw_after: float | None = None
                 ) -> None:
        super().__init__(daemon=True)
        self.port = free_port()
        self.data, self.admits, self.withdraw_after = data, admits, withdraw_after
        self.count = piece_count(len(data))
        self.hellos: list[float] = []
        self.ready = threading.Event()
        self.stop = threading.Event()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def gaps(self) -> list[float]:
        at = list(self.hellos)
        return [b - a for a, b in zip(at, at[1:], strict=False)]

    def run(self) -> None:
        sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(f"tcp://{self.addr}")
        self.ready.set()
        withdraw: dict[bytes, float] = {}  # downloader -> when its opening is withdrawn
        try:
            while not self.stop.is_set():
                if sock.poll(20):
                    self._answer(sock, withdraw, *sock.recv_multipart())
                for ident, at in list(withdraw.items()):
                    if time.monotonic() >= at:
                        del withdraw[ident]
                        sock.send_multipart([ident, *msg.refused_frame(
                            "f.bin", "not_member", "bob may no longer download from g")])
        finally:
            sock.close(0)

    def _answer(self, sock: zmq.Socket[Any], withdraw: dict[bytes, float], ident: bytes,
                body: bytes) -> None:
        request = msg.parse_request(body)
        if isinstance(request, msg.Hello):
            self.hellos.append(time.monotonic())
            if not self.admits(len(self.hellos)):
                sock.send_multipart([ident, *msg.refused_frame(
                    "f.bin", "not_member", "bob may not download from group g")])
                return
            sock.send_multipart([ident, *msg.bitfield_frame(
                "f.bin", Bitfield.full(self.count).to_bytes())])
            if self.withdraw_after is not None:
                withdraw[ident] = time.monotonic() + self.withdraw_after
        elif isinstance(request, msg.Get) and ident not in withdraw:
            index = request.index
            sock.send_multipart([ident, msg.piece_frames("f.bin", index),
                                 self.data[index * PIECE_SIZE:(index + 1) * PIECE_SIZE]])


def run(peers: list[ScriptedPeer], peer: ScriptedPeer) -> ScriptedPeer:
    peer.start()
    assert peer.ready.wait(5)
    peers.append(peer)
    return peer


# --- the schedule -----------------------------------------------------------------------

def test_retries_start_soon_and_back_off_to_a_cap() -> None:
    first, cap = download_mod.NOT_MEMBER_RETRY_FIRST, download_mod.NOT_MEMBER_RETRY_MAX
    waits = [not_member_retry(n) for n in range(1, 20)]
    assert waits[0] == first <= download_mod.RETRY_PEER_AFTER
    assert all(b == min(2 * a, cap) for a, b in zip(waits, waits[1:], strict=False))
    assert waits[-1] == cap
    # Over a minute of refusals a peer sees a handful of hellos, not one a second.
    starts, at = [0.0], 0.0
    for wait in waits:
        at += wait
        starts.append(at)
    assert sum(1 for t in starts if t < 60) <= 7


# --- a download against a scripted peer, in this process --------------------------------

DATA = bytes(range(256)) * (2 * PIECE_SIZE // 256)


class Host(OfflineHost):
    """The client side a download needs; the tracker lists ``peer`` every time."""

    def __init__(self, peer: ScriptedPeer) -> None:
        self.peer = peer

    def tracker_call(self, op: str, args: dict[str, Any]) -> Any:
        if op != "file_info":
            raise LocalError("not in this test", "bad_request")
        return {"sha1": hashlib.sha1(DATA).hexdigest(),
                "peers": [{"addr": self.peer.addr, "ticket": "t"}]}


def download(tmp_path: Path, peer: ScriptedPeer) -> Download:
    hashes = b"".join(piece_sha1(DATA[i:i + PIECE_SIZE])
                      for i in range(0, len(DATA), PIECE_SIZE))
    info = {"size": len(DATA), "sha1": hashlib.sha1(DATA).hexdigest(), "pieces": hashes,
            "peers": [{"addr": peer.addr, "ticket": "t"}]}
    d = Download(Host(peer), "g", "f.bin", tmp_path / "f.bin", tmp_path / "resume.json", info)
    d.start()
    return d


def test_a_peer_that_keeps_refusing_is_asked_less_and_less_often(
        peers: list[ScriptedPeer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_mod, "NOT_MEMBER_RETRY_FIRST", 0.4)
    monkeypatch.setattr(download_mod, "NOT_MEMBER_RETRY_MAX", 1.6)
    peer = run(peers, ScriptedPeer(DATA, admits=lambda _n: False))
    d = download(tmp_path, peer)
    try:
        wait_for(lambda: len(peer.hellos) >= 5, 20, "five hellos")
        # show_downloads says why the one peer listed is of no use
        assert d.snapshot()["waiting"] == (
            "waiting for peers: no connected peer has the 2 missing piece(s); refused by "
            "1 peer(s): bob may not download from group g"), d.snapshot()
    finally:
        d.stop()
    gaps = peer.gaps()
    # Never sooner than the schedule says (the tracker refresh may add to it).
    for gap, wait in zip(gaps, [0.4, 0.8, 1.6, 1.6], strict=False):
        assert gap >= wait - 0.05, gaps
    assert d.state == "downloading" and d.snapshot()["progress"] == 0


def test_a_peer_that_let_us_in_is_asked_soon_again_after_a_refusal(
        peers: list[ScriptedPeer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused, let in (then withdrawn before any piece), refused again: the wait after
    the withdrawal starts over from the first, instead of doubling on."""
    monkeypatch.setattr(download_mod, "NOT_MEMBER_RETRY_FIRST", 2.0)
    monkeypatch.setattr(download_mod, "NOT_MEMBER_RETRY_MAX", 60.0)
    peer = run(peers, ScriptedPeer(DATA, admits=lambda n: n == 2, withdraw_after=0.0))
    d = download(tmp_path, peer)
    try:
        wait_for(lambda: len(peer.hellos) >= 3, 20, "three hellos")
    finally:
        d.stop()
    first, after_withdrawal = peer.gaps()[:2]
    assert first >= 2.0 - 0.05
    assert 2.0 - 0.05 <= after_withdrawal < 3.5, peer.gaps()  # 4 s if it had doubled on


# --- a real downloader and tracker, the refusing peer scripted ---------------------------

def test_a_stale_not_member_refusal_delays_a_download_by_seconds_not_a_minute(
        one_tracker: Cluster, tmp_path: Path, peers: list[ScriptedPeer]) -> None:
    """bob was just let into g; the only peer's first ticket check says no (its tracker
    had not caught up yet), its next one yes.  bob's download goes on within seconds."""
    count = 3
    cl = group_of(one_tracker, ["alice", "bob"])
    bob = cl["bob"]
    path = tmp_path / "src" / "f.bin"
    data = make_file(path, pieces(count))
    peer = run(peers, ScriptedPeer(data, admits=lambda n: n > 1))
    digest = hash_file(path)
    alice = Session(one_tracker, "alice", port=peer.port)  # alice serves from there
    alice.call("share", {"group": "g", "name": "f.bin", "size": digest.size,
                         "sha1": digest.sha1, "pieces": b"".join(digest.piece_hashes)})
    dest = tmp_path / "dl"
    dest.mkdir()
    bob.ok(f"download_file g f.bin {dest}")
    finished = done(bob, "g", "f.bin", timeout=20)  # 50 s and more before
    assert (dest / "f.bin").read_bytes() == data
    assert finished["sources"] == {peer.addr: count}, finished
    assert len(peer.hellos) == 2
    assert download_mod.NOT_MEMBER_RETRY_FIRST - 0.05 <= peer.gaps()[0] < 10, peer.gaps()
    assert leftovers(dest) == []
    alice.close()
