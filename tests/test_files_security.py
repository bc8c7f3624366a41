"""Only members get pieces: the tracker refuses non-members, and so does every peer,
whatever a hand-made client sends it.  A hostile peer cannot break a download."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import zmq

from p2p.messages import piece as msg
from p2p.pieces import PIECE_SIZE, Bitfield, hash_file
from tests.files_support import (
    Probe,
    Session,
    addr,
    done,
    group_of,
    leftovers,
    login,
    make_file,
    pieces,
    served,
)
from tests.procs import ClientProc, Cluster, free_port, wait_for

pytestmark = pytest.mark.timeout(90)


def _refused(probe: Probe, reply: msg.Reply, code: str) -> None:
    assert probe.last["t"] == "refused", probe.last
    assert isinstance(reply, msg.Refused) and reply.code == code, reply


def test_non_member_is_refused_by_tracker_and_by_peers(one_tracker: Cluster,
                                                       tmp_path: Path) -> None:
    cl = group_of(one_tracker, ["alice", "bob"])
    alice = cl["alice"]
    mallory = one_tracker.client("mallory")
    login(mallory, "mallory")
    mallory.ok("create_group g2")
    data = make_file(tmp_path / "src" / "f.bin", pieces(2))
    sha1 = alice.ok(f"upload_file {tmp_path / 'src' / 'f.bin'} g")["sha1"]
    make_file(tmp_path / "m" / "m.bin", 1000)
    mallory.ok(f"upload_file {tmp_path / 'm' / 'm.bin'} g2")

    # The tracker: no listing, no download (so no ticket) for a non-member.
    dest = tmp_path / "dl"
    dest.mkdir()
    mallory.fails("list_files g", "not_member")
    mallory.fails(f"download_file g f.bin {dest}", "not_member")
    assert mallory.ok("show_downloads") == []
    assert list(dest.iterdir()) == []

    # A peer contacted directly, with forged or borrowed credentials.
    mallory_session = Session(one_tracker, "mallory")
    g2_ticket = mallory_session.ticket_at("g2", alice)  # valid at alice, other group
    bob = Session(one_tracker, "bob")
    g_ticket = bob.ticket("g", "f.bin", alice)  # valid for bob only
    probe = Probe(alice)
    _refused(probe, probe.get("g", "f.bin", 0), "not_member")  # no hello first
    for user, ticket in [("mallory", "0" * 64), ("bob", "0" * 64), ("bob", ""),
                         ("mallory", g2_ticket), ("bob", g2_ticket), ("mallory", g_ticket)]:
        _refused(probe, probe.hello("g", "f.bin", sha1, user, ticket), "not_member")
        _refused(probe, probe.get("g", "f.bin", 0), "not_member")
    _refused(probe, probe.hello("g2", "f.bin", sha1, "mallory", g2_ticket), "not_shared")
    probe.send({"t": "get", "group": "g", "name": "../f.bin", "index": 0})
    _refused(probe, probe.reply(), "bad_request")
    probe.sock.send(b"\xc1 not msgpack")
    _refused(probe, probe.reply(), "bad_request")
    assert probe.silent(0.3)  # and nothing else came: no piece data
    assert served(alice, "g", "f.bin") == 0
    probe.close()

    # A member with a valid ticket, but naming another file's SHA1: not this file.
    probe = Probe(alice)
    _refused(probe, probe.hello("g", "f.bin", "0" * 40, "bob", g_ticket), "not_shared")
    assert probe.last["error"] == "f.bin is not shared here"
    _refused(probe, probe.get("g", "f.bin", 0), "not_member")  # so nothing was opened

    # Control: the same server does serve a member with a valid ticket.
    have = probe.hello("g", "f.bin", sha1, "bob", g_ticket)
    assert isinstance(have, msg.Have) and have.bits is not None
    assert Bitfield.from_bytes(2, have.bits).complete
    piece = probe.get("g", "f.bin", 1)
    assert isinstance(piece, msg.Piece) and bytes(piece.data) == data[PIECE_SIZE:]
    # (the counter goes up just after the send)
    wait_for(lambda: served(alice, "g", "f.bin") == 1, 5, "alice to count the piece")
    probe.close()
    bob.close()
    mallory_session.close()


def test_a_ticket_given_to_one_peer_is_refused_by_another(one_tracker: Cluster,
                                                          tmp_path: Path) -> None:
    """A peer that a member's Hello reached cannot pose as that member at other peers:
    carol (a member sharing a bait file) keeps the ticket bob's client would send her,
    and offers it as bob's to alice, who shares another file in the same group."""
    cl = group_of(one_tracker, ["alice", "bob", "carol"])
    alice, carol = cl["alice"], cl["carol"]
    data = make_file(tmp_path / "src" / "f.bin", pieces(2))
    sha1 = alice.ok(f"upload_file {tmp_path / 'src' / 'f.bin'} g")["sha1"]
    make_file(tmp_path / "c" / "bait.bin", 1000, seed=2)
    bait_sha1 = carol.ok(f"upload_file {tmp_path / 'c' / 'bait.bin'} g")["sha1"]
    bob = Session(one_tracker, "bob")
    harvested = bob.ticket("g", "bait.bin", carol)  # what bob's Hello carries to carol
    for_alice = bob.ticket("g", "f.bin", alice)
    assert harvested != for_alice

    # It is a real ticket: carol's own peer takes it from bob.
    at_carol = Probe(carol)
    assert isinstance(at_carol.hello("g", "bait.bin", bait_sha1, "bob", harvested), msg.Have)
    at_carol.close()

    # At alice it is worthless, with bob a member and his session alive.
    probe = Probe(alice)
    _refused(probe, probe.hello("g", "f.bin", sha1, "bob", harvested), "not_member")
    _refused(probe, probe.get("g", "f.bin", 0), "not_member")
    assert probe.silent(0.3)
    assert served(alice, "g", "f.bin") == 0
    probe.close()

    # Control: the ticket bob was given for alice does work there.
    probe = Probe(alice)
    have = probe.hello("g", "f.bin", sha1, "bob", for_alice)
    assert isinstance(have, msg.Have) and have.bits is not None
    piece = probe.get("g", "f.bin", 0)
    assert isinstance(piece, msg.Piece) and bytes(piece.data) == data[:PIECE_SIZE]
    probe.close()
    bob.close()


class FakePeer(threading.Thread):
    """A hand-made peer: claims every piece of ``data``; ``hostile`` answers each Get with
    nonsense and a corrupt piece, otherwise it serves the real bytes."""

    def __init__(self, port: int, data: bytes, hostile: bool) -> None:
        super().__init__(daemon=True)
        self.port, self.data, self.hostile = port, data, hostile
        self.count = -(-len(data) // PIECE_SIZE)
        self.gets = 0
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(f"tcp://127.0.0.1:{self.port}")
        self.ready.set()
        try:
            while not self.stop.is_set():
                if sock.poll(50):
                    self._answer(sock, sock.recv_multipart())
        finally:
            sock.close(0)

    def _answer(self, sock: zmq.Socket[Any], frames: list[bytes]) -> None:
        ident, request = frames[0], msg.parse_request(frames[1])
        name = request.name
        if isinstance(request, msg.Hello):
            bits = Bitfield.full(self.count).to_bytes()
            sock.send_multipart([ident, *msg.bitfield_frame(name, bits)])
            return
        self.gets += 1
        index = request.index
        if not self.hostile:
            chunk = self.data[index * PIECE_SIZE:(index + 1) * PIECE_SIZE]
            sock.send_multipart([ident, msg.piece_frames(name, index), chunk])
            return
        huge = 2**40
        for reply in (msg.refused_frame(name, "bad_piece", "no", huge),
                      msg.refused_frame(name, "bad_piece", "no", self.count),
                      msg.have_frame(name, [huge]),
                      [msg.piece_frames(name, huge), b"x"],
                      [msg.piece_frames(name, index), b"\0" * 7],  # wrong length
                      [msg.piece_frames(name, index), b"\0" * PIECE_SIZE]):
            sock.send_multipart([ident, *reply])

    def __enter__(self) -> FakePeer:
        self.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(5)


def _share_as(c: Cluster, user: str, port: int, path: Path, sha1: str | None = None
              ) -> Session:
    """Tell the tracker that ``user`` at 127.0.0.1:port shares ``path`` in g."""
    digest = hash_file(path)
    session = Session(c, user, port=port)
    session.call("share", {"group": "g", "name": path.name, "size": digest.size,
                           "sha1": sha1 or digest.sha1,
                           "pieces": b"".join(digest.piece_hashes)})
    return session


def test_hostile_peer_cannot_break_a_download(one_tracker: Cluster, tmp_path: Path) -> None:
    count = 8
    cl = group_of(one_tracker, ["alice", "bob", "carol"], limits={"alice": 2048})
    alice, bob = cl["alice"], cl["bob"]
    path = tmp_path / "src" / "f.bin"
    data = make_file(path, count * PIECE_SIZE)
    alice.ok(f"upload_file {path} g")
    port = free_port()
    with FakePeer(port, data, hostile=True) as hostile:
        carol = _share_as(one_tracker, "carol", port, path)  # a member, serving nonsense
        dest = tmp_path / "dl"
        dest.mkdir()
        bob.ok(f"download_file g f.bin {dest}")
        finished = done(bob, "g", "f.bin", timeout=40)
        assert (dest / "f.bin").read_bytes() == data
        assert finished["sources"] == {addr(alice): count}, finished
        assert hostile.gets > 0  # it was asked, and its answers were survived
        assert leftovers(dest) == []
        carol.close()


def test_whole_file_mismatch_fails_and_leaves_nothing(one_tracker: Cluster,
                                                      tmp_path: Path) -> None:
    """Every piece verifies, but the tracker's whole-file SHA1 does not match."""
    cl = group_of(one_tracker, ["alice", "bob"])
    bob = cl["bob"]
    path = tmp_path / "src" / "f.bin"
    data = make_file(path, pieces(3))
    port = free_port()
    with FakePeer(port, data, hostile=False) as peer:
        alice = _share_as(one_tracker, "alice", port, path, sha1="0" * 40)
        dest = tmp_path / "dl"
        dest.mkdir()
        bob.ok(f"download_file g f.bin {dest}")
        result = bob.ok("wait g f.bin", timeout=30)
        assert [d["state"] for d in result] == ["failed"], result
        assert "SHA1" in result[0]["error"], result
        assert peer.gets >= 3
        assert list(dest.iterdir()) == []  # neither the file nor a partial file
        assert bob.ok("list_shares") == []
        assert any(e["event"] == "download_failed" for e in bob.events), bob.events
        # bob is not left advertised as holding pieces of it.
        assert [f["peers"] for f in bob.ok("list_files g")] == [1]
        alice.close()


def _alice_shares_one_piece(cluster: Cluster, tmp_path: Path
                            ) -> tuple[dict[str, ClientProc], str]:
    """alice and bob in group g, alice sharing a one-piece f.bin: the clients and its SHA1."""
    cl = group_of(cluster, ["alice", "bob"])
    make_file(tmp_path / "src" / "f.bin", pieces(1))
    return cl, cl["alice"].ok(f"upload_file {tmp_path / 'src' / 'f.bin'} g")["sha1"]


def test_a_stranger_cannot_probe_a_peer_for_files_or_their_sha1(one_tracker: Cluster,
                                                                 tmp_path: Path) -> None:
    cl, sha1 = _alice_shares_one_piece(one_tracker, tmp_path)
    alice = cl["alice"]
    probe = Probe(alice)
    bob = Session(one_tracker, "bob")
    g_ticket = bob.ticket("g", "f.bin", alice)
    # Without the file's SHA1, a stranger and a member get the same answer whether the
    # name is shared here or not, and never the SHA1 that is.
    for user, ticket in [("eve", "x"), ("bob", g_ticket)]:
        answers = set()
        for name, claimed in [("f.bin", "0" * 40), ("nope.bin", "0" * 40), ("nope.bin", sha1)]:
            _refused(probe, probe.hello("g", name, claimed, user, ticket), "not_shared")
            assert sha1 not in str(probe.last).lower(), probe.last
            answers.add(probe.last["error"].replace(name, "NAME"))
        assert answers == {"NAME is not shared here"}, answers
    _refused(probe, probe.hello("g", "f.bin", sha1, "eve", "x"), "not_member")
    assert probe.silent(0.3)
    assert served(alice, "g", "f.bin") == 0
    probe.close()
    bob.close()


def test_an_open_connection_is_cut_after_its_user_leaves(one_tracker: Cluster,
                                                         tmp_path: Path) -> None:
    cl, sha1 = _alice_shares_one_piece(one_tracker, tmp_path)
    alice = cl["alice"]
    bob = Session(one_tracker, "bob")
    probe = Probe(alice)
    have = probe.hello("g", "f.bin", sha1, "bob", bob.ticket("g", "f.bin", alice))
    assert isinstance(have, msg.Have) and have.bits is not None
    assert isinstance(probe.get("g", "f.bin", 0), msg.Piece)
    cl["bob"].ok("leave_group g")

    def refused() -> msg.Refused | None:
        got = probe.get("g", "f.bin", 0)
        assert isinstance(got, msg.Refused | msg.Piece), got
        return got if isinstance(got, msg.Refused) else None

    # Served for at most the ticket cache time (5 s) after leaving, then cut: the opening
    # is withdrawn (no piece index), and the Gets sent after it are refused.
    cut = wait_for(refused, 12, "the open connection to be refused", interval=0.2)
    assert (cut.code, cut.index) == ("not_member", None), cut
    while not probe.silent(0.3):
        _refused(probe, probe.reply(), "not_member")
    _refused(probe, probe.get("g", "f.bin", 0), "not_member")  # and it stays refused
    assert probe.silent(0.3)
    probe.close()
    bob.close()
