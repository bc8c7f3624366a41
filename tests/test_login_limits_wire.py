"""Password hashing under a flood, against a real tracker: a flood of requests that need
scrypt is refused (``busy``) rather than queued in front of real users (a client
retries a busy answer until its deadline), and wrong passwords for one user from one
address stop being hashed (``too_many_attempts``).

Every client here is on this host, so the floods connect from other loopback addresses
(127.0.0.2, ...), unless a test means them to share the client's own (127.0.0.1): the
tracker counts by the address a message came from."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from p2p import codec
from p2p.config import load_tracker_info
from p2p.messages.tracker import Reply, Request
from peers.tracker_client import GIVE_UP_AFTER, TrackerClient
from tests.procs import ClientProc, Cluster, wait_for

pytestmark = pytest.mark.timeout(90)

ADDR = "127.0.0.1:9"  # a login's peer address; nobody connects to it here


def dealer(c: Cluster, source: str) -> zmq.Socket[Any]:
    """A DEALER to tracker 1 whose connection comes from ``source``."""
    sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{source}:0;127.0.0.1:{c.ports[0]}")
    return sock


def send(sock: zmq.Socket[Any], op: str, cid: str, **args: Any) -> None:
    sock.send(codec.encode(Request(op, cid, 1, args, secrets.token_hex(16)).to_wire()))


def replies(sock: zmq.Socket[Any], count: int, timeout: float) -> list[Reply]:
    """Up to ``count`` replies read from ``sock`` within ``timeout``."""
    got: list[Reply] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            got.append(Reply.from_wire(codec.decode(sock.recv())))
    return got


def client(c: Cluster) -> TrackerClient:
    return TrackerClient(load_tracker_info(c.info))


def login(tc: TrackerClient, user: str, password: str) -> None:
    tc.token = secrets.token_hex(32)
    tc.call("login", {"user": user, "password": password, "addr": ADDR})


def test_a_wrong_password_flood_from_one_address_does_not_hold_up_a_real_login(
        one_tracker: Cluster) -> None:
    c = one_tracker
    alice = client(c)
    alice.call("create_user", {"user": "alice", "password": "right"})
    flood = dealer(c, "127.0.0.2")
    try:
        for i in range(200):  # what a reviewer sent: 200 wrong passwords at once
            send(flood, "login", f"flood-{i}", user="alice", password=f"guess{i}", addr=ADDR)
        first = replies(flood, 1, 10.0)  # the tracker has read the flood
        assert first, "no reply to the flood"
        began = time.monotonic()
        login(alice, "alice", "right")
        took = time.monotonic() - began
        # Before the bounds this took 5.8 s (and retries doubled the hashing).
        assert took < 2.0, f"a real login took {took:.2f} s behind the flood"
        rest = replies(flood, 199, 15.0)
        codes = Counter(r.code for r in [*first, *rest])
        assert len(first) + len(rest) == 200, codes
        assert set(codes) <= {"busy", "bad_credentials", "too_many_attempts"}, codes
        assert codes["busy"] >= 150, codes  # refused at once, not hashed
        assert codes["bad_credentials"] <= 5, codes  # the guesses one address gets
        busy = next(r for r in [*first, *rest] if r.code == "busy")
        assert busy.error == "the tracker is busy: try again in a moment"
    finally:
        flood.close(0)
        alice.close()


class Flood(threading.Thread):
    """Keeps ``per_source`` create_user requests (fresh names, so each needs a hash)
    waiting at the tracker from each of ``sources``, sending one more per reply."""

    def __init__(self, c: Cluster, sources: list[str], per_source: int) -> None:
        super().__init__(daemon=True)
        self.c, self.sources, self.per_source = c, sources, per_source
        self.stop = threading.Event()
        self.codes: Counter[str] = Counter()
        self._n = 0

    def _send(self, sock: zmq.Socket[Any]) -> None:
        self._n += 1
        send(sock, "create_user", f"fill-{self._n}", user=f"fill{self._n}", password="pw")

    def run(self) -> None:
        socks = [dealer(self.c, source) for source in self.sources]
        try:
            poller = zmq.Poller()
            for sock in socks:
                poller.register(sock, zmq.POLLIN)
                for _ in range(self.per_source):
                    self._send(sock)
            while not self.stop.is_set():
                for sock, _ in poller.poll(100):
                    reply = Reply.from_wire(codec.decode(sock.recv()))
                    self.codes[reply.code if not reply.ok else "ok"] += 1
                    self._send(sock)
        finally:
            for sock in socks:
                sock.close(0)


def told_busy(user: ClientProc) -> int:
    """How many busy answers a client started with -v has logged."""
    return user.log_path.read_text(errors="replace").count(" is busy, trying ")


def until_told_busy(user: ClientProc, commands: Callable[[int], str],
                    undo: str | None = None) -> str:
    """Send ``commands(k)`` for k = 0, 1, ... until a tracker answers one of them busy
    (the client retries it: its answer is left to the caller); a command that got a
    freed hashing slot at once is undone with ``undo``, and the next one tried."""
    for k in range(10):
        line, before = commands(k), told_busy(user)
        user.send(line)

        def told_busy_or_answered(seen: int = before) -> bool:
            return told_busy(user) > seen or not user._lines.empty()

        wait_for(told_busy_or_answered, 15, f"{line!r} to be told busy or answered")
        if told_busy(user) > before:
            return line
        answer = user.answer(line)
        assert answer["ok"], f"{line!r} was not retried: {answer}"
        if undo is not None:
            user.ok(undo)
    raise AssertionError("never told busy: the flood does not fill the tracker")


@pytest.mark.timeout(120)
def test_a_login_during_a_flood_from_its_own_host_succeeds_once_a_slot_frees(
        one_tracker: Cluster) -> None:
    """The flood comes from 127.0.0.1, as the client does: the 8 hashing slots of
    that address stay full.  The client is told busy, keeps its login, and is in
    once the flood stops, instead of the user seeing busy."""
    c = one_tracker
    user = c.client(extra_args=["-v"])  # -v: its log shows each busy answer
    user.ok("create_user alice pw")
    flood = Flood(c, ["127.0.0.1"], per_source=20)
    flood.start()
    try:
        wait_for(lambda: flood.codes["busy"] > 0, 15, "the flood to fill the tracker")
        line = until_told_busy(user, lambda k: "login alice pw", undo="logout")
    finally:
        flood.stop.set()
        flood.join(10)
    answer = user.answer(line, timeout=GIVE_UP_AFTER + 10)
    assert answer["ok"], answer
    assert answer["result"]["user"] == "alice"
    assert user.close() == 0


@pytest.mark.timeout(120)
def test_a_busy_tracker_sends_the_client_to_another_without_a_failover_notice(
        two_trackers: Cluster) -> None:
    """Tracker 1's slots are full, tracker 2's are not: the request goes there at once,
    and the user is not told tracker 1 stopped answering (it did not)."""
    c = two_trackers
    user = c.client(extra_args=["-v"])
    user.ok("help")  # started and answering
    flood = Flood(c, ["127.0.0.1"], per_source=20)  # to tracker 1 only
    flood.start()
    try:
        wait_for(lambda: flood.codes["busy"] > 0, 15, "the flood to fill tracker 1")
        line = until_told_busy(user, lambda k: f"create_user bob{k} pw")
        answer = user.answer(line, timeout=GIVE_UP_AFTER + 10)
        assert answer["ok"], answer  # while the flood goes on
    finally:
        flood.stop.set()
        flood.join(10)
    user.ok("help")  # events printed before this answer have been read
    assert [e for e in user.events if e["event"] == "failover"] == []
    assert user.close() == 0


DEADLINE = 3  # seconds: the client's --request-timeout


@pytest.mark.timeout(120)
def test_a_client_is_told_busy_only_at_the_deadline_while_the_hashing_stays_full(
        one_tracker: Cluster) -> None:
    c = one_tracker
    # Its requests try the trackers for 3 s, not the default 8: the deadline the same
    # way, without waiting for the default one.
    user = c.client(extra_args=["--request-timeout", str(DEADLINE)])
    user.ok("help")  # started and answering
    flood = Flood(c, [f"127.0.0.{n}" for n in range(2, 8)], per_source=20)
    flood.start()
    try:
        wait_for(lambda: flood.codes["busy"] > 0, 15, "the flood to fill the tracker")
        began = time.monotonic()
        answer = user.cmd("create_user bob pw", timeout=DEADLINE + 15)
        took = time.monotonic() - began
        # A slot that frees can go to this client's retry before the flood refills it;
        # if none does, busy comes once the client has retried for 3 s, not before.
        # A tracker this flooded, on a loaded machine, can also leave the last attempts
        # unanswered (its loop shares the cores with its own hashing): then no_tracker,
        # also only at the deadline.  Which of the two is told when is settled without
        # timing in test_tracker_busy_retry.
        if not answer["ok"]:
            assert answer["code"] in ("busy", "no_tracker"), answer
            if answer["code"] == "busy":
                assert answer["error"] == ("the tracker is busy: try again in a moment "
                                           f"(still busy after {DEADLINE} s of retries)"), answer
            assert took >= DEADLINE, f"{answer['code']} after {took:.2f} s"
    finally:
        flood.stop.set()
        flood.join(10)
    wait_for(lambda: (c.tracker(1).status() or {}).get("hashing") == 0, 10,
             "the flood's hashes to be done")
    user.ok("create_user carol pw")  # flood over: served at once
    assert user.close() == 0


def test_the_sixth_wrong_password_from_an_address_is_refused_without_hashing(
        one_tracker: Cluster) -> None:
    c = one_tracker
    eve = c.client()
    eve.ok("create_user alice right")
    for _ in range(5):
        eve.fails("login alice wrong", "bad_credentials")
    error = eve.fails("login alice wrong", "too_many_attempts")
    assert error.startswith("too many wrong passwords: try again in "), error
    # The right password from that address waits out the window too: otherwise the
    # refusal would tell a guesser which password is right.
    eve.fails("login alice right", "too_many_attempts")
    eve.fails("login nobody wrong", "no_such_user")  # other users are not affected
    # Alice on her own machine is not locked out by a guesser elsewhere.
    own = dealer(c, "127.0.0.2")
    try:
        send(own, "login", "alice-own", user="alice", password="right", addr=ADDR)
        answer = replies(own, 1, 5.0)
        assert answer and answer[0].ok, answer
    finally:
        own.close(0)
    assert eve.close() == 0


def test_a_retried_wrong_password_counts_as_one_guess(one_tracker: Cluster) -> None:
    """A client that heard nothing in 0.4 s (a loaded tracker; another one down) sends
    the same request again on a new socket, after the first one's hash may be done
    and its refusal sent to the socket it closed.  That is still one wrong password."""
    c = one_tracker
    setup = client(c)
    try:
        setup.call("create_user", {"user": "alice", "password": "right"})
    finally:
        setup.close()
    token = secrets.token_hex(32)
    for rid in range(1, 4):  # three typos, each sent twice
        payload = codec.encode(Request("login", "typist", rid, {
            "user": "alice", "password": f"typo{rid}", "addr": ADDR}, token).to_wire())
        for _attempt in range(2):
            sock = dealer(c, "127.0.0.3")  # each attempt on a socket of its own
            try:
                sock.send(payload)
                answer = replies(sock, 1, 5.0)
            finally:
                sock.close(0)
            assert answer and answer[0].code == "bad_credentials", answer
    right = dealer(c, "127.0.0.3")
    try:
        send(right, "login", "typist-2", user="alice", password="right", addr=ADDR)
        answer = replies(right, 1, 5.0)
        assert answer and answer[0].ok, answer  # 3 wrong passwords of 5 allowed
    finally:
        right.close(0)
