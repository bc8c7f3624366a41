"""Nothing sent to a tracker's port can stop it: garbage in, an error reply (or a dropped
connection) out, and the next real client is served as if nothing happened."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from p2p import codec
from p2p.bounded_log import BURST
from p2p.config import TrackerAddress
from p2p.messages.tracker import MAX_REQUEST, Request
from tests.procs import Cluster, free_port_block
from trackers import commands
from trackers import server as server_mod
from trackers.server import TrackerServer

pytestmark = pytest.mark.timeout(60)

REPLY_TIMEOUT = 3.0
SOCKET_LIMIT = MAX_REQUEST  # trackers.server.MAX_MESSAGE


def endpoint(c: Cluster) -> str:
    return f"tcp://127.0.0.1:{c.ports[0]}"


def zsocket(kind: int, c: Cluster) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint(c))
    return sock


def ask(c: Cluster, payload: bytes) -> dict[str, Any]:
    """Send one frame on a fresh REQ socket and return the decoded reply."""
    sock = zsocket(zmq.REQ, c)
    try:
        sock.send(payload)
        assert sock.poll(int(REPLY_TIMEOUT * 1000)), f"no reply to {payload[:60]!r}"
        reply = codec.decode(sock.recv())
    finally:
        sock.close(0)
    assert isinstance(reply, dict), reply
    return reply


def request(op: str, args: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {"op": op, "cid": "robustness", "rid": 1, "args": args or {}, "token": None,
            **fields}


def assert_bad_request(reply: dict[str, Any], what: object) -> None:
    assert reply.get("ok") is False, f"{what!r}: {reply}"
    assert reply.get("code") == "bad_request", f"{what!r}: {reply}"
    assert isinstance(reply.get("error"), str) and reply["error"], f"{what!r}: {reply}"


def assert_still_serving(c: Cluster, events_before: int) -> None:
    """The tracker is alive, wrote nothing for the garbage, and serves a real client."""
    tracker = c.tracker(1)
    assert tracker.proc is not None and tracker.proc.poll() is None, "tracker died"
    status = tracker.answered_status()  # fails if the tracker stopped answering
    assert status["events"] == events_before, "garbage became events"
    client = c.client()
    assert client.ok("create_user survivor pw") is None
    client.ok("login survivor pw")
    client.ok("create_group after")
    assert client.ok("list_groups") == [{"group": "after", "owner": "survivor", "members": 1}]
    assert client.close() == 0
    assert tracker.proc.poll() is None
    log = tracker.log_text()
    assert "Traceback" not in log and "broke its handler" not in log, log[-3000:]


def events_now(c: Cluster) -> int:
    return int(c.tracker(1).answered_status()["events"])


# --- raw TCP ---------------------------------------------------------------------------

def test_random_bytes_over_raw_tcp(one_tracker: Cluster) -> None:
    c = one_tracker
    before = events_now(c)
    rng = random.Random(20240607)
    addr = ("127.0.0.1", c.ports[0])
    # A ZMTP 3 greeting start (signature, version) followed by garbage, plain noise of
    # several sizes, an HTTP request, and a connection that opens and says nothing.
    blobs = [
        b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + rng.randbytes(200),
        b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x01NULL" + b"\0" * 16 + rng.randbytes(5000),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"",
        *(rng.randbytes(n) for n in (1, 10, 64, 1000, 65536, 1 << 20)),
    ]
    for blob in blobs:
        with socket.create_connection(addr, timeout=5) as s:
            try:
                s.sendall(blob)
                s.settimeout(0.2)
                s.recv(4096)  # whatever ZeroMQ says (or a reset) is fine
            except (TimeoutError, ConnectionError):
                pass

    # Connections that stall halfway through a greeting do not block anyone else.
    stalled = [socket.create_connection(addr, timeout=5) for _ in range(5)]
    try:
        for s in stalled:
            s.sendall(b"\xff\0\0\0")
        assert_still_serving(c, before)
    finally:
        for s in stalled:
            s.close()
    c.tracker(1).answered_status()


# --- malformed requests ----------------------------------------------------------------

def malformed_payloads() -> list[bytes]:
    valid = codec.encode(request("list_groups"))
    rng = random.Random(7)
    payloads = [
        b"",
        b"\xc1",  # a byte msgpack never uses
        valid[:-3],  # truncated
        valid + b"\x00",  # trailing garbage
        b"\x91" * 5000 + b"\xc0",  # nesting deeper than the parser allows
        b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
        b"\xdf\xff\xff\xff\xff",  # a map claiming 4 billion pairs
        b"\xdb\xff\xff\xff\xff",  # a string claiming 4 GiB
        msgpack.packb(msgpack.ExtType(5, b"xx")),
        msgpack.packb({1: 2}),  # non-string keys
        *(rng.randbytes(n) for n in (1, 3, 17, 256, 4096)),
    ]
    wrong = [
        None, 42, "list_groups", [1, 2, 3], b"bytes", {},
        {"op": 5, "cid": "x", "rid": 1},
        {"op": "", "cid": "x", "rid": 1},
        {"op": "x" * 65, "cid": "x", "rid": 1},
        {"op": ["list_groups"], "cid": "x", "rid": 1},
        {"cid": "x", "rid": 1},  # no op
        {"op": "list_groups", "rid": 1},  # no cid
        {"op": "list_groups", "cid": "", "rid": 1},
        {"op": "list_groups", "cid": 7, "rid": 1},
        {"op": "list_groups", "cid": "x" * 65, "rid": 1},
        {"op": "list_groups", "cid": "x"},  # no rid
        {"op": "list_groups", "cid": "x", "rid": -1},
        {"op": "list_groups", "cid": "x", "rid": True},
        {"op": "list_groups", "cid": "x", "rid": "1"},
        {"op": "list_groups", "cid": "x", "rid": 1.5},
        {"op": "list_groups", "cid": "x", "rid": 2**64 - 1},
        {"op": "list_groups", "cid": "x", "rid": 1, "args": []},
        {"op": "list_groups", "cid": "x", "rid": 1, "args": "user=a"},
        {"op": "list_groups", "cid": "x", "rid": 1, "token": 5},
        {"op": "list_groups", "cid": "x", "rid": 1, "token": ""},
        {"op": "list_groups", "cid": "x", "rid": 1, "token": "t" * 200},
        # Well-formed envelopes whose arguments are wrong-typed or missing.
        request("create_user", {"user": 123, "password": "pw"}),
        request("create_user", {"user": "bad/name", "password": "pw"}),
        request("create_user", {"user": "a", "password": b"pw"}),
        request("create_user", {"user": "a", "password": ""}),
        request("create_user", {"user": "a", "password": "p" * 5000}),
        request("create_user", {"user": None, "password": None}),
        request("create_user", {"password": "pw"}),  # no user
        request("create_user", {"user": "a"}),  # no password
        request("create_user", {}),
        request("login", {"user": "a", "password": "pw"}, token="t" * 64),  # no addr
        request("login", {"user": "a", "password": "pw", "addr": 5}, token="t" * 64),
        request("login", {"user": "a", "password": "pw", "addr": "no port"}, token="t" * 64),
        request("login", {"user": "a", "password": "pw", "addr": "127.0.0.1:1"}),  # no token
    ]
    return payloads + [codec.encode(obj) for obj in wrong]


def test_malformed_requests_over_req_get_bad_request(one_tracker: Cluster) -> None:
    c = one_tracker
    before = events_now(c)
    for payload in malformed_payloads():
        assert_bad_request(ask(c, payload), payload[:80])
    # An unknown operation in a well-formed request is a different failure.
    reply = ask(c, codec.encode(request("format_disk")))
    assert reply["ok"] is False and reply["code"] == "unknown_command", reply
    # The status request (what the harness and --status use) still works on the same port.
    reply = ask(c, codec.encode(request("status")))
    assert reply["ok"] is True and reply["result"]["tracker"] == 1
    assert_still_serving(c, before)


def test_malformed_requests_over_dealer(one_tracker: Cluster) -> None:
    c = one_tracker
    before = events_now(c)
    dealer = zsocket(zmq.DEALER, c)
    try:
        payloads = malformed_payloads()
        # Every envelope shape a DEALER can send: REQ-style empty delimiter, no
        # delimiter at all, extra routing frames. The reply keeps the envelope.
        shapes: list[list[bytes]] = [[b""], [], [b"hop1", b"hop2", b""]]
        sent = 0
        for i, payload in enumerate(payloads):
            dealer.send_multipart([*shapes[i % len(shapes)], payload])
            sent += 1
        # A burst without reading replies in between.
        for _ in range(300):
            dealer.send_multipart([b"", b"\xc1"])
            sent += 1
        for i in range(sent):
            assert dealer.poll(int(REPLY_TIMEOUT * 1000)), f"reply {i} of {sent} missing"
            frames = dealer.recv_multipart()
            if i < len(payloads):
                assert frames[:-1] == shapes[i % len(shapes)], frames[:-1]
            assert_bad_request(codec.decode(frames[-1]), payloads[i][:80]
                               if i < len(payloads) else b"\xc1")
        # Anything after the burst is served normally on the same socket.
        dealer.send_multipart([b"", codec.encode(request("status"))])
        assert dealer.poll(int(REPLY_TIMEOUT * 1000))
        assert codec.decode(dealer.recv_multipart()[-1])["ok"] is True
    finally:
        dealer.close(0)
    assert_still_serving(c, before)


def test_oversized_frames(one_tracker: Cluster) -> None:
    c = one_tracker
    before = events_now(c)
    # Bigger than the codec's ordinary frame limit but within the socket limit: parsed
    # and refused with an error reply.
    big = codec.encode(request("create_user", {"user": "big", "password": "p" * (5 << 20)}))
    assert_bad_request(ask(c, big), "5 MiB password")
    assert_bad_request(ask(c, b"\xc1" * (5 << 20)), "5 MiB of garbage")

    # Bigger than the socket limit: ZeroMQ drops the connection; no reply is possible,
    # and any reply that does come must be an error.
    dealer = zsocket(zmq.DEALER, c)
    try:
        dealer.send_multipart([b"", b"\0" * (SOCKET_LIMIT + 1)])
        if dealer.poll(1000):
            assert_bad_request(codec.decode(dealer.recv_multipart()[-1]), "17 MiB frame")
    finally:
        dealer.close(0)
    assert ask(c, codec.encode(request("status")))["ok"] is True
    assert_still_serving(c, before)


@pytest.fixture
def buggy_tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TrackerServer]:
    """An in-process tracker whose list_groups handler has a bug."""
    def broken(*_args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setitem(commands.HANDLERS, "list_groups", broken)
    ctx: zmq.Context[Any] = zmq.Context()
    server = TrackerServer([TrackerAddress(1, "127.0.0.1", free_port_block())], 1,
                           tmp_path / "t1", context=ctx)
    try:
        yield server
    finally:
        server.close()
        ctx.term()


def test_a_handler_bug_gets_internal_error_at_once(buggy_tracker: TrackerServer) -> None:
    """Not silence: a client left without a reply would wait out every tracker's timeout.
    The scrypt probe that create_user and login raise through the handler still passes."""
    server = buggy_tracker
    reply = server.handle(Request("list_groups", "cid-1", 7))
    assert reply is not None and (reply.ok, reply.code, reply.rid) == (
        False, "internal_error", 7), reply
    assert reply.error == "the tracker could not handle list_groups: see its log"
    signup = Request("create_user", "cid-1", 8, {"user": "ann", "password": "pw"})
    with pytest.raises(server_mod._NeedsHash):
        server.handle(signup, None, commands.Context(b"s" * 16, server_mod._needs_hash))


def test_a_handler_bug_someone_repeats_logs_a_few_tracebacks_then_a_count(
        buggy_tracker: TrackerServer, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bug hit by 200 requests from one address (and by a hashed login) writes
    the first few lines with their traceback, per source, not one per request."""
    server = buggy_tracker
    caplog.set_level(logging.WARNING, logger="trackers.server")
    for rid in range(200):
        reply = server.handle(Request("list_groups", "cid-1", rid), source="10.0.0.7")
        assert reply is not None and reply.code == "internal_error", reply
    server.handle(Request("list_groups", "cid-2", 1), source="10.0.0.8")
    lines = [r for r in caplog.records if "broke its handler" in r.getMessage()]
    assert [r.getMessage() for r in lines] == (
        ["list_groups from 10.0.0.7 broke its handler"] * BURST
        + ["list_groups from 10.0.0.8 broke its handler"])
    assert all(r.exc_info and "a bug" in str(r.exc_info[1]) for r in lines)

    # A bug after the hash, in the hashed request's own path.
    def no_context() -> commands.Context:
        raise RuntimeError("another bug")

    done: Future[bytes] = Future()
    done.set_result(b"h")
    job = server_mod._Hashing(Request("login", "cid-3", 1, {"user": "ann"}), [b"x"],
                              "10.0.0.9", b"s", "pw", b"s", done)
    monkeypatch.setattr(job, "context", no_context)
    for _ in range(20):
        server._hashed(job)
    dropped = [r for r in caplog.records
               if r.getMessage() == "dropped a login from 10.0.0.9 that broke its handler"]
    assert len(dropped) == BURST and all(r.exc_info for r in dropped)
