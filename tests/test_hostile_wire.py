"""Hostile programs on the network against real trackers and clients: whatever they send,
the process keeps running, its state stays whole, and what it holds for them stays small."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from p2p import codec
from p2p.bounded_log import BoundedLog, LineBudget
from p2p.config import TrackerAddress
from p2p.messages import piece as msg
from p2p.messages.sync import Batch, CatchUp, Event, decode_sync, encode_sync
from p2p.pieces import PIECE_SIZE
from peers import piece_server
from peers.shares import ShareRegistry
from tests.files_support import Probe, Session, addr, done, group_of, make_file, pieces
from tests.procs import Cluster, free_port, free_port_block, wait_for
from tests.test_replication_kit import Direct, wait_converged
from trackers import server as tracker_server

pytestmark = pytest.mark.timeout(60)


def _still_serves_writes(c: Cluster) -> None:
    """Tracker 1 is alive, takes a write and a login, and logged no traceback."""
    one = c.tracker(1)
    alice = Direct(c)
    alice.login(1, "alice")
    alice.ok(1, "create_group", group="after")
    groups = alice.ok(1, "list_groups")
    assert "after" in [g["group"] for g in groups], groups
    assert one.proc is not None and one.proc.poll() is None, one.log_text()[-3000:]
    assert "Traceback" not in one.log_text(), one.log_text()[-3000:]


# --- tracker to tracker: a stranger where a dead tracker's PUB port was ----------------------

@pytest.mark.parametrize("ts", [2**64 - 1, 2**63 - 1], ids=["beyond-int64", "int64-max"])
def test_an_event_with_an_enormous_timestamp_does_not_stop_a_tracker(
        tmp_path: Path, zctx: zmq.Context[Any], ts: int) -> None:
    """Tracker 2 is down and a holder of the cluster key publishes on its PUB port an event
    stamped at the top of (or beyond) a 64-bit integer.  Tracker 1 keeps serving, writes
    included.  (A stranger without the key is refused at the handshake.)"""
    c = Cluster(tmp_path, trackers=2)
    pub: zmq.Socket[Any] = c.keyed_socket(zctx, zmq.PUB)
    try:
        one = c.tracker(1).start()
        pub.bind(f"tcp://127.0.0.1:{c.ports[1] + 1}")
        frame = encode_sync(Event(2, 1, ts, "", 0, "logout", {"sid": "nobody"}))

        def taken_or_refused() -> str | None:
            pub.send(frame)  # again and again: a SUB drops what comes before it connects
            assert one.proc is not None
            if one.proc.poll() is not None:
                return "died"
            st = one.status()
            if st and (st["events"] or st["replication"].get("bad-subscription")):
                return "answered"
            return None

        outcome = wait_for(taken_or_refused, 15, "tracker 1 to take or refuse the event",
                           interval=0.1)
        assert outcome == "answered", one.log_text()[-3000:]
        _still_serves_writes(c)
    finally:
        pub.close(0)
        c.close()


# --- error replies that echo what a stranger sent ----------------------------------------

# An error reply or log line about a bad value is this short, whatever the value's size.
SHORT = 1024


def test_a_huge_bad_id_gets_a_short_error_from_a_tracker(one_tracker: Cluster,
                                                         zctx: zmq.Context[Any]) -> None:
    """A reply that quoted the whole 1 MB id let a stranger who never read its replies
    make the tracker hold a copy of everything it sent, and more."""
    dealer: zmq.Socket[Any] = zctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{one_tracker.ports[0]}")
    bad = "\x01" + "x" * (1 << 20)
    for args in ({"user": bad, "password": "pw"}, {"user": [bad], "password": "pw"}):
        dealer.send_multipart([b"", codec.encode(
            {"op": "create_user", "cid": "eve", "rid": 1, "args": args})])
        assert dealer.poll(5000), "no reply"
        reply = dealer.recv_multipart()[-1]
        assert len(reply) < SHORT, len(reply)
        assert codec.decode(reply)["code"] == "bad_request"
    _still_serves_writes(one_tracker)


def test_a_huge_bad_name_gets_a_short_refusal_from_a_peer(one_tracker: Cluster) -> None:
    """The same at a client's piece server, whose log line quoted the name too."""
    peer = one_tracker.client("alice")
    probe = Probe(peer)
    try:
        bad = "\x01" + "x" * 60_000
        for wire in ({"t": "hello", "group": "g", "name": bad, "sha1": "0" * 40,
                      "user": "eve", "ticket": "t"},
                     {"t": bad, "group": "g", "name": "f.bin", "index": 0}):
            probe.send(wire)
            reply = probe.reply()
            assert isinstance(reply, msg.Refused) and reply.code == "bad_request", reply
            assert len(codec.encode(probe.last)) < SHORT, len(codec.encode(probe.last))
        wait_for(lambda: peer.log_path.read_text().count("bad peer request") == 2, 5,
                 "the two warnings")
        lines = peer.log_path.read_text().splitlines()
        assert lines and max(map(len, lines)) < SHORT, max(map(len, lines))
        assert peer.ok("help login")["usage"]  # still answering its user
    finally:
        probe.close()


def test_a_tracker_does_not_echo_an_envelope_that_is_not_routing_ids(
        one_tracker: Cluster, zctx: zmq.Context[Any]) -> None:
    """A reply carries the frames before the request back: a 1 MB frame there, or a
    thousand small ones, is not a routing envelope and gets no reply at all."""
    dealer: zmq.Socket[Any] = zctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{one_tracker.ports[0]}")
    status = codec.encode({"op": "status", "cid": "eve", "rid": 1})
    for envelope in ([b"x" * (1 << 20), b""], [b"h"] * 1000 + [b""]):
        dealer.send_multipart([*envelope, status])
        dealer.send_multipart([b"", status])  # answered in order, so first if the above is not
        assert dealer.poll(5000), "no reply"
        frames = dealer.recv_multipart()
        assert len(frames) == 2 and frames[0] == b"", [len(f) for f in frames[:3]]
        assert codec.decode(frames[1])["ok"] is True
    # Routing envelopes as REQ, DEALER and a chain of proxies send them are answered.
    for envelope in ([b""], [], [b"hop1", b"hop2", b""], [b"r" * 255, b""]):
        dealer.send_multipart([*envelope, status])
        assert dealer.poll(5000), f"no reply to {envelope}"
        frames = dealer.recv_multipart()
        assert frames[:-1] == envelope and codec.decode(frames[-1])["ok"] is True
    _still_serves_writes(one_tracker)


# --- a piece server and a connection that never reads ---------------------------------------

def test_a_peer_holds_few_replies_for_a_stranger_that_reads_none(
        one_tracker: Cluster, zctx: zmq.Context[Any], tmp_path: Path) -> None:
    """A stranger asks for files that are not shared here (each refusal quotes the name)
    and reads no refusal.  The peer drops what it cannot hand over instead of queueing
    every refusal, and goes on serving its members."""
    cl = group_of(one_tracker, ["alice", "bob"])
    alice, bob = cl["alice"], cl["bob"]
    data = make_file(tmp_path / "a" / "f.bin", pieces(3))
    alice.ok(f"upload_file {tmp_path / 'a' / 'f.bin'} g")
    stranger: zmq.Socket[Any] = zctx.socket(zmq.DEALER)
    stranger.setsockopt(zmq.SNDHWM, 0)  # so it can send everything without reading
    stranger.setsockopt(zmq.RCVHWM, 1)
    stranger.setsockopt(zmq.RCVBUF, 4096)
    stranger.connect(f"tcp://{addr(alice)}")
    count = 30_000
    hello = codec.encode(msg.Hello("g", "n" * 255, "0" * 40, "eve", "t").to_wire())
    for _ in range(count):
        stranger.send(hello)
    stranger.send(b"\xc1")  # logged: alice has handled every hello before it
    wait_for(lambda: "bad peer request" in alice.log_path.read_text(), 45,
             "alice to have handled every hello", interval=0.5)
    (tmp_path / "dl").mkdir()
    bob.ok(f"download_file g f.bin {tmp_path / 'dl'}")
    done(bob, "g", "f.bin")
    assert (tmp_path / "dl" / "f.bin").read_bytes() == data
    received = 0
    while stranger.poll(500):
        stranger.recv_multipart()
        received += 1
    # Every refusal used to wait for it; now what fits zmq's queue and the socket buffers.
    assert received < count // 2, received
    assert alice.log_path.read_text().count("reads none of them") == 1


# --- a tracker and a client that never reads -----------------------------------------------

def test_a_tracker_holds_one_large_reply_for_a_client_that_reads_none(
        one_tracker: Cluster, zctx: zmq.Context[Any]) -> None:
    """A user shares a file of 180,000 pieces (file_info answers with 3.6 MB of hashes)
    and asks for it again and again without reading: the tracker keeps one such reply
    for that connection and drops the rest, instead of holding them all."""
    mallory = Direct(one_tracker)
    mallory.login(1, "mallory")
    mallory.ok(1, "create_group", group="m")
    count = 180_000
    mallory.ok(1, "share", group="m", name="big", size=count * PIECE_SIZE, sha1="ab" * 20,
               pieces=b"\x01" * 20 * count)
    sock: zmq.Socket[Any] = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.connect(f"tcp://127.0.0.1:{one_tracker.ports[0]}")
    asks = 40
    for rid in range(1000, 1000 + asks):
        sock.send_multipart([b"", codec.encode({
            "op": "file_info", "cid": mallory.cid, "rid": rid, "token": mallory.token,
            "args": {"group": "m", "name": "big"}})])

    def dropped() -> int:
        st = one_tracker.tracker(1).status()
        return int(st.get("dropped_replies", 0)) if st else 0

    # zmq on each side takes in a reply or two (the reader's queue and socket buffers).
    wait_for(lambda: dropped() >= asks - 4, 20, "the tracker to drop the replies not read")
    received = 0
    while sock.poll(1000):
        reply = codec.decode(sock.recv_multipart()[-1])
        assert reply["ok"] and len(reply["result"]["pieces"]) == 20 * count
        received += 1
    assert 1 <= received <= 4, received
    # A client that reads gets its large reply as before.
    info = mallory.ok(1, "file_info", group="m", name="big")
    assert len(info["pieces"]) == 20 * count
    _still_serves_writes(one_tracker)


def test_a_client_takes_the_file_info_of_a_file_with_5_mb_of_piece_hashes(
        one_tracker: Cluster) -> None:
    """A file of 250,000 pieces (122 GiB): the tracker takes its share (requests may be
    16 MB) and answers file_info with 5 MB of hashes.  The client refused every reply
    over 4 MB as malformed, so each download of such a file failed after 8 s with
    no_tracker - and anyone in a group could share one."""
    group_of(one_tracker, ["alice", "bob"])
    alice, bob = Session(one_tracker, "alice"), Session(one_tracker, "bob")
    try:
        count = 250_000
        alice.call("share", {"group": "g", "name": "big.iso", "size": count * PIECE_SIZE,
                             "sha1": "ab" * 20, "pieces": b"\x01" * 20 * count})
        info = bob.call("file_info", {"group": "g", "name": "big.iso"})  # as a download does
        assert len(info["pieces"]) == 20 * count
        assert [p["user"] for p in info["peers"]] == ["alice"]
    finally:
        alice.close()
        bob.close()


def test_requests_held_while_a_tracker_catches_up_stay_under_64_mib(
        tmp_path: Path, zctx: zmq.Context[Any]) -> None:
    """Tracker 1 holds client requests until it has caught up with tracker 2 - here a
    holder of the cluster key on tracker 2's peer port, answering every catch-up request
    with "more to come".  Of 20 requests of 8 MB it holds what fits in 64 MiB, not all."""
    c = Cluster(tmp_path, trackers=2)
    fake: zmq.Socket[Any] = c.keyed_socket(zctx, zmq.ROUTER)
    fake.bind(f"tcp://127.0.0.1:{c.ports[1] + 2}")
    done_posing = threading.Event()
    posing = threading.Event()  # tracker 1 has had one "more to come": it holds requests

    def pose() -> None:
        while not done_posing.is_set():
            if fake.poll(20):
                frames = fake.recv_multipart()
                if isinstance(decode_sync(frames[-1]), CatchUp):
                    fake.send_multipart([frames[0], encode_sync(Batch(2, (), True))])
                    posing.set()

    poser = threading.Thread(target=pose, daemon=True)
    poser.start()
    sock: zmq.Socket[Any] = zctx.socket(zmq.DEALER)
    try:
        c.tracker(1).start()  # it answers status while it catches up
        # Until the first batch, only a start-up grace of 0.5 s holds requests, and a
        # loaded machine can take longer than that to finish the CURVE handshake.
        assert posing.wait(20), "tracker 1 never asked the stand-in to catch up"
        sock.connect(f"tcp://127.0.0.1:{c.ports[0]}")
        big = codec.encode({"op": "list_groups", "cid": "eve", "rid": 1,
                            "args": {"pad": "x" * 8_000_000}})
        asks = 20
        for _ in range(asks):
            sock.send_multipart([b"", big])
        # Answered in order, at once: so the tracker has held or dropped every one.
        sock.send_multipart([b"", codec.encode({"op": "status", "cid": "eve", "rid": 2})])
        assert sock.poll(20_000), "no status"
        answer = codec.decode(sock.recv_multipart()[-1])
        assert answer.get("rid") == 2 and answer.get("ok"), (answer, c.tracker(1).log_text())
        held = answer["result"]["deferred"]
        assert 0 < held <= 8, held
        done_posing.set()
        poser.join(5)
        # Caught up now (nothing more to come): what was held is answered.
        answered = 0
        while sock.poll(5000 if answered == 0 else 1000):
            assert codec.decode(sock.recv_multipart()[-1])["code"] == "not_logged_in"
            answered += 1
        assert answered == held, (answered, held)
        _still_serves_writes(c)
    finally:
        done_posing.set()
        poser.join(5)
        c.close()


# --- a flood of catch-up requests on a tracker's peer port -----------------------------------

CATCH_UP_FLOOD = 2000
# A client's request is answered within this during the flood.  Each catch-up was answered
# at once (a sqlite read and an encoding of 500 events, ~4 ms), up to 1,000 per loop turn:
# 2,000 of them kept a list_groups waiting 3-8 s.  Now 10-30 ms.
PROMPT = 1.0


def _peer_port_dealers(c: Cluster, zctx: zmq.Context[Any], count: int
                       ) -> list[zmq.Socket[Any]]:
    """Connections to tracker 1's peer port holding the cluster key (a stranger's are
    refused at the handshake), each answered once (so connected)."""
    socks: list[zmq.Socket[Any]] = []
    for _ in range(count):
        sock: zmq.Socket[Any] = c.keyed_socket(zctx, zmq.DEALER)
        sock.connect(f"tcp://127.0.0.1:{c.ports[0] + 2}")
        socks.append(sock)
    ask = encode_sync(CatchUp(2, {}))
    for sock in socks:
        sock.send(ask)
        assert sock.poll(10_000), "a catch-up request got no batch"
        assert isinstance(decode_sync(sock.recv()), Batch)
    return socks


def _catch_ups_received(bob: Direct) -> tuple[int, float]:
    """Tracker 1's count of catch-up requests taken, and how long its status took."""
    start = time.monotonic()
    reply = bob.call(1, "status", timeout=30)
    took = time.monotonic() - start
    assert reply is not None and reply.ok, reply
    return int(reply.result["replication"].get("catch_ups_received", 0)), took


@pytest.mark.timeout(120)
def test_a_flood_of_catch_up_requests_does_not_keep_clients_waiting(
        two_trackers: Cluster, zctx: zmq.Context[Any]) -> None:
    """2,000 catch-up requests naming tracker 2, over 20 connections, to tracker 1 whose
    log holds 600 events: while it takes them, its clients' requests are answered within
    a second, each connection still gets its batches, and replication goes on."""
    c = two_trackers
    bob = Direct(c)
    bob.login(1, "bob")
    for i in range(600):  # so that each answer is a full batch of 500 events
        bob.ok(1, "create_group", group=f"g{i:04d}")
    socks = _peer_port_dealers(c, zctx, 20)
    before, _took = _catch_ups_received(bob)
    ask = encode_sync(CatchUp(2, {}))
    for i in range(CATCH_UP_FLOOD):
        socks[i % len(socks)].send(ask)
    waits: list[float] = []
    deadline = time.monotonic() + 60
    while True:  # clients ask until the tracker has taken the whole flood
        start = time.monotonic()
        groups = bob.ok(1, "list_groups")
        waits.append(time.monotonic() - start)
        assert len(groups) == 600
        received, took = _catch_ups_received(bob)
        waits.append(took)
        if received >= before + CATCH_UP_FLOOD:
            break
        assert time.monotonic() < deadline, f"the flood was not taken: {received - before}"
    assert max(waits) < PROMPT, sorted(waits)[-5:]
    for sock in socks:  # every connection got the answer to its latest request
        assert sock.poll(10_000), "a flooding connection got no batch"
        batch = decode_sync(sock.recv())
        assert isinstance(batch, Batch) and len(batch.events) == 500 and batch.more
    stats = c.tracker(1).answered_status()["replication"]
    assert stats["catch_ups_coalesced"] > 0, stats
    bob.ok(1, "create_group", group="after-flood")
    wait_for(lambda: "after-flood" in [g["group"] for g in bob.ok(2, "list_groups")], 10,
             "tracker 2 to hold the write made after the flood")
    _still_serves_writes(c)


@pytest.mark.timeout(120)
def test_a_restarted_tracker_catches_up_during_a_flood_of_catch_up_requests(
        two_trackers: Cluster, zctx: zmq.Context[Any]) -> None:
    """Tracker 2 restarts behind by 1,100 events (three batches) while strangers keep
    sending catch-up requests to tracker 1's peer port: it still catches up, promptly."""
    c = two_trackers
    bob = Direct(c)
    bob.login(1, "bob")
    c.tracker(2).kill()
    count = 1100
    for i in range(count):
        bob.ok(1, "create_group", group=f"g{i:04d}")
    socks = _peer_port_dealers(c, zctx, 8)
    stop = threading.Event()

    def flood() -> None:
        ask = encode_sync(CatchUp(2, {}))
        while not stop.is_set():
            for sock in socks:
                with contextlib.suppress(zmq.Again):  # a full queue: the tracker is busy
                    sock.send(ask, zmq.NOBLOCK)
                while sock.poll(0):  # read the answers, as a stranger that re-asks would
                    sock.recv()
            stop.wait(0.001)  # a flood, but one that leaves this process some CPU

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        wait_for(lambda: (_catch_ups_received(bob)[0] > 1000), 20, "the flood to be under way")
        start = time.monotonic()
        c.tracker(2).start()  # it answers clients once caught up (or after a grace)
        wait_for(lambda: len(bob.ok(2, "list_groups")) == count, 10,
                 "tracker 2 to catch up during the flood")
        caught_up = time.monotonic() - start
        stats = c.tracker(1).answered_status()["replication"]
        assert stats["catch_ups_received"] > 2000, stats  # the flood went on meanwhile
    finally:
        stop.set()
        flooder.join(5)
    assert caught_up < 10, caught_up
    wait_converged(c, timeout=10)
    _still_serves_writes(c)


# --- a flood of malformed messages and the log --------------------------------------------

FLOOD = 20_000
# Malformed messages for a piece port: bad bytes, an unknown kind, a list, two frames.
PEER_GARBAGE: list[list[bytes]] = [[b"\xc1"], [codec.encode({"t": "format_disk"})],
                                   [codec.encode(["x"])], [b"two", b"frames"]]
STATUS = codec.encode({"op": "status", "cid": "eve", "rid": 1})
# ... and for a tracker's client port: bad bytes, a list, an envelope that is not routing
# ids, an unknown operation (answered, never logged).
CLIENT_GARBAGE: list[list[bytes]] = [
    [b"", b"\xc1"], [b"", codec.encode(["x"])], [b"h"] * 17 + [STATUS],
    [b"", codec.encode({"op": "format_disk", "cid": "eve", "rid": 2})]]


def _flood(zctx: zmq.Context[Any], endpoint: str, garbage: list[list[bytes]]
           ) -> zmq.Socket[Any]:
    """A DEALER connected to ``endpoint`` that has sent FLOOD messages, ``garbage`` in
    turn, without reading anything."""
    sock: zmq.Socket[Any] = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    for i in range(FLOOD):
        sock.send_multipart(garbage[i % len(garbage)])
    return sock
# What a flood may add to a log: a few lines per kind of trouble, and one summary line per
# kind every 10 s.  One line per message wrote 29.7 MB for 300,000 frames.
LOG_GROWTH = 20_000


def _answered_in_order(sock: zmq.Socket[Any], good: list[bytes],
                       is_answer: Callable[[list[bytes]], bool], what: str) -> None:
    """Send ``good`` until its answer comes, reading whatever came before it.  One
    connection's messages are handled in order, so its answer means every message sent
    before it was handled (it is sent again: a reply may be dropped at a full queue)."""

    def answered() -> bool:
        sock.send_multipart(good)
        end = time.monotonic() + 2.0
        while (left := end - time.monotonic()) > 0 and sock.poll(max(1, int(left * 1000))):
            if is_answer(sock.recv_multipart()):
                return True
        return False

    wait_for(answered, 45, what, interval=0)


def _accounted(text: str, line: str, summary: str) -> int:
    """Messages of one kind from 127.0.0.1 that a log accounts for: each line written,
    plus the count of every summary line (``... and N more <summary> from 127.0.0.1``)."""
    held = re.findall(rf"\.\.\. and (\d+) more {summary} from 127\.0\.0\.1 in the last", text)
    return text.count(line) + sum(map(int, held))


@pytest.mark.timeout(120)
def test_a_flood_of_malformed_peer_requests_leaves_a_short_log(
        one_tracker: Cluster, zctx: zmq.Context[Any]) -> None:
    """20,000 malformed frames to a client's piece port: each is refused as before, but
    the log says only the first few and then how many more came, and the client serves on."""
    peer = one_tracker.client("alice")
    assert peer.ok("help login")["usage"]  # up, its piece server listening
    before = peer.log_path.stat().st_size
    stranger = _flood(zctx, f"tcp://{addr(peer)}", PEER_GARBAGE)
    hello = codec.encode(msg.Hello("g", "f.bin", "0" * 40, "eve", "t").to_wire())

    def not_shared(frames: list[bytes]) -> bool:
        reply = msg.parse_reply(frames)
        return isinstance(reply, msg.Refused) and reply.code == "not_shared"

    _answered_in_order(stranger, [hello], not_shared, "the hello after the flood")
    grown = peer.log_path.stat().st_size - before  # every frame's line would be in by now
    assert grown < LOG_GROWTH, (grown, peer.log_path.read_text()[-3000:])
    # The first of each kind are told, with where they came from.  That the rest are
    # counted, and told when their window ends, is the in-process test below (a 10 s
    # window here would be 10 s of waiting).
    text = peer.log_path.read_text()
    assert "bad peer request from 127.0.0.1" in text, text[-3000:]
    assert "dropped a peer request of 3 frames from 127.0.0.1" in text, text[-3000:]
    assert peer.proc.poll() is None
    assert peer.ok("help login")["usage"]  # still answering its user


@pytest.mark.timeout(120)
def test_a_flood_of_malformed_client_requests_leaves_a_tracker_log_short(
        one_tracker: Cluster, zctx: zmq.Context[Any]) -> None:
    """The same on a tracker's client port: garbage, unknown operations and envelopes that
    are not routing ids, 20,000 in all; then it answers status, takes writes, and its log
    grew by a few lines."""
    tracker = one_tracker.tracker(1)
    before = tracker.log_path.stat().st_size
    sock = _flood(zctx, f"tcp://127.0.0.1:{one_tracker.ports[0]}", CLIENT_GARBAGE)

    def status_ok(frames: list[bytes]) -> bool:
        reply = codec.decode(frames[-1])
        return bool(reply.get("ok")) and reply["result"]["tracker"] == 1

    _answered_in_order(sock, [b"", STATUS], status_ok, "the status after the flood")
    grown = tracker.log_path.stat().st_size - before
    assert grown < LOG_GROWTH, (grown, tracker.log_text()[-3000:])
    # The first of each kind are told (the count of the rest: in-process, below).
    text = tracker.log_text()
    assert "bad client request from 127.0.0.1" in text, text[-3000:]
    assert "dropped a client message from 127.0.0.1 whose envelope" in text, text[-3000:]
    _still_serves_writes(one_tracker)


# The same floods at a piece server and a tracker in this process, whose bounded logs end
# their windows after 0.5 s instead of 10: every message is told of, in the first lines of
# a window or in the summary its loop writes when the window ends.

SHORT_WINDOW = 0.5


def _short_windows(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    """``module``'s loop gets a bounded log whose windows last SHORT_WINDOW seconds."""
    monkeypatch.setattr(module, "BoundedLog", lambda logger: BoundedLog(
        logger, LineBudget(window=SHORT_WINDOW)))


def _told(caplog: pytest.LogCaptureFixture, logger: str) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == logger)


def _told_in_full(caplog: pytest.LogCaptureFixture, logger: str,
                  kinds: list[tuple[str, str]], messages: int) -> None:
    """``logger``'s lines and summaries come to account for exactly ``messages`` messages
    of ``kinds`` (each a line and its summary, as in _accounted), with a summary at the
    end of a window, in a few lines a window rather than one a message."""

    def accounted() -> int:
        text = _told(caplog, logger)
        return sum(_accounted(text, line, summary) for line, summary in kinds)

    wait_for(lambda: accounted() >= messages, 30, "the log to account for every bad message",
             interval=0.1)
    assert accounted() == messages
    text = _told(caplog, logger)
    assert f"in the last {SHORT_WINDOW:g} s" in text, text[-3000:]
    assert len(caplog.records) < FLOOD // 100, len(caplog.records)


def test_a_flood_of_malformed_peer_requests_is_told_in_full_as_windows_end(
        tmp_path: Path, zctx: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    _short_windows(monkeypatch, piece_server)
    caplog.set_level(logging.WARNING, logger=piece_server.__name__)
    registry = ShareRegistry(tmp_path / "client")
    registry.active = True
    port = free_port()
    server = piece_server.PieceServer("127.0.0.1", port, registry,
                                      lambda asked: [True] * len(asked))
    server.start()
    # Held until the end: a socket that is collected takes its unsent messages with it.
    stranger = _flood(zctx, f"tcp://127.0.0.1:{port}", PEER_GARBAGE)
    try:
        _told_in_full(caplog, piece_server.__name__, [
            ("bad peer request from 127.0.0.1", "malformed peer requests"),
            ("dropped a peer request of 3 frames from 127.0.0.1",
             "peer requests of the wrong shape")], FLOOD)
    finally:
        stranger.close(0)
        server.stop()


def test_a_flood_of_malformed_client_requests_is_told_in_full_as_windows_end(
        tmp_path: Path, zctx: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    _short_windows(monkeypatch, tracker_server)
    caplog.set_level(logging.WARNING, logger=tracker_server.__name__)
    me = TrackerAddress(1, "127.0.0.1", free_port_block())
    stop = threading.Event()

    def serve() -> None:  # made on the thread it runs on, as its sqlite log wants
        tracker_server.TrackerServer([me], 1, tmp_path / "t1", context=zctx).run(stop)

    loop = threading.Thread(target=serve, daemon=True)
    loop.start()
    sock = _flood(zctx, f"tcp://127.0.0.1:{me.port}", CLIENT_GARBAGE)  # held, as above
    try:
        # Unknown operations (a quarter) are answered unknown_command and never logged.
        _told_in_full(caplog, tracker_server.__name__, [
            ("bad client request from 127.0.0.1", "malformed client requests"),
            ("dropped a client message from 127.0.0.1 whose envelope",
             "client messages with a bad envelope")], FLOOD // 4 * 3)
    finally:
        sock.close(0)
        stop.set()
        loop.join(10)
