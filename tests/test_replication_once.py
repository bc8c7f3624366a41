"""Exactly once across failover, with real processes: a write that tracker 1 committed
(and maybe answered) whose answer the client never got, retried with the same (cid, rid)
at tracker 2.

Three ways the first attempt can be left behind, each hit deterministically:

- ``unreplicated`` (SIGKILL): tracker 2 is dead while tracker 1 commits and answers,
  then tracker 1 is killed and tracker 2 restarted.  Tracker 2 has never seen the
  first event, so it makes its own for the retry: two events of one request (for
  ``create_user``, two password records with different salts).
- ``hung`` (SIGSTOP): the same, but tracker 1 is frozen instead of killed, and thawed
  once tracker 2 has answered the retry.
- ``replicated``: tracker 2 holds the first event (it is in its log) when tracker 1 is
  killed; the retry must be recognised, not made again.

Every time the retry is answered ok (never ``user_exists``, ``group_exists``,
``already_member``, ``already_logged_in``...), and once both trackers are back they hold
the same state, in which the request took effect once.
"""

from __future__ import annotations

import secrets
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq

from p2p import codec
from p2p.config import TrackerAddress
from p2p.errors import RemoteError
from p2p.messages.sync import Event
from p2p.messages.tracker import Request
from peers.tracker_client import TrackerClient
from tests.procs import Cluster, free_port, tracker_events, wait_for
from tests.test_replication_kit import Direct, share_args, wait_converged, wait_live

pytestmark = pytest.mark.timeout(90)

ADDR = "127.0.0.1:9"
Actors = dict[str, Direct]


def events_of(c: Cluster, tracker: int, req: Request) -> list[Event]:
    """The events in a tracker's log that carry client request ``req``."""
    return [e for e in tracker_events(c.tracker(tracker).data_dir)
            if (e.cid, e.rid) == (req.cid, req.rid)]


def logs_in(c: Cluster, tracker: int, user: str, password: str) -> bool:
    probe = Direct(c)
    probe.new_session()
    reply = probe.call(tracker, "login", timeout=5.0, user=user, password=password, addr=ADDR)
    assert reply is not None, f"tracker {tracker} did not answer a login"
    return reply.ok


def groups(actors: Actors, tracker: int) -> dict[str, tuple[str, int]]:
    listed = actors["alice"].ok(tracker, "list_groups")
    return {g["group"]: (g["owner"], g["members"]) for g in listed}


# --- what each write needs first, and how it shows once it took effect ----------------

def check_create_user(c: Cluster, actors: Actors, tracker: int) -> None:
    assert c.tracker(tracker).answered_status()["users"] == 3  # alice, bob, dave
    assert logs_in(c, tracker, "dave", "pd")
    assert not logs_in(c, tracker, "dave", "pw")


def check_login(c: Cluster, actors: Actors, tracker: int) -> None:
    assert c.tracker(tracker).answered_status()["sessions"] == 3  # alice, bob, carol
    assert actors["carol"].ok(tracker, "list_groups") == [
        {"group": "g", "owner": "alice", "members": 1}]


def check_create_group(c: Cluster, actors: Actors, tracker: int) -> None:
    assert groups(actors, tracker) == {"g": ("alice", 1), "g2": ("alice", 1)}


def check_join_group(c: Cluster, actors: Actors, tracker: int) -> None:
    assert actors["alice"].ok(tracker, "list_requests", group="g") == ["bob"]
    assert groups(actors, tracker) == {"g": ("alice", 1)}


def check_accept_request(c: Cluster, actors: Actors, tracker: int) -> None:
    assert actors["alice"].ok(tracker, "list_requests", group="g") == []
    assert groups(actors, tracker) == {"g": ("alice", 2)}


def check_share(c: Cluster, actors: Actors, tracker: int) -> None:
    files = actors["alice"].ok(tracker, "list_files", group="g")
    assert [(f["name"], f["peers"]) for f in files] == [("f.bin", 1)]


def check_leave_group(c: Cluster, actors: Actors, tracker: int) -> None:
    assert groups(actors, tracker) == {"g": ("alice", 1)}
    refused = actors["bob"].call(tracker, "list_files", group="g")
    assert refused is not None and refused.code == "not_member", refused


@dataclass
class Case:
    actor: str
    args: dict[str, Any]
    check: Callable[[Cluster, Actors, int], None]
    before: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


JOIN = ("bob", "join_group", {"group": "g"})
ACCEPT = ("alice", "accept_request", {"group": "g", "user": "bob"})
CASES: dict[str, Case] = {
    "create_user": Case("dave", {"user": "dave", "password": "pd"}, check_create_user),
    "login": Case("carol", {"user": "carol", "password": "pc", "addr": ADDR}, check_login),
    "create_group": Case("alice", {"group": "g2"}, check_create_group),
    "join_group": Case("bob", {"group": "g"}, check_join_group),
    "accept_request": Case("alice", {"group": "g", "user": "bob"}, check_accept_request,
                           [JOIN]),
    "share": Case("bob", share_args("g", "f.bin"), check_share, [JOIN, ACCEPT]),
    "leave_group": Case("bob", {"group": "g"}, check_leave_group, [JOIN, ACCEPT]),
}


def setting(c: Cluster, case: Case) -> Actors:
    """alice (owner of g) and bob logged in, carol a user without a session, dave a
    stranger; then the case's own preparations.  All of it held by both trackers."""
    actors = {name: Direct(c) for name in ("alice", "bob", "carol", "dave")}
    actors["alice"].login(1, "alice")
    actors["alice"].ok(1, "create_group", group="g")
    actors["bob"].login(1, "bob")
    if case.actor == "carol":
        actors["carol"].ok(1, "create_user", user="carol", password="pc")
        actors["carol"].new_session()
    for who, op, args in case.before:
        actors[who].ok(1, op, **args)
    wait_converged(c, timeout=10)
    return actors


def first_attempt(c: Cluster, actor: Direct, op: str, args: dict[str, Any], how: str
                  ) -> Request:
    """Have tracker 1 commit the request, then lose its answer by ``how``."""
    req = actor.prepare(op, **args)
    if how == "replicated":
        sock = actor.open(1, req)
        wait_for(lambda: events_of(c, 2, req), 10, "tracker 2 to hold the first event")
        c.tracker(1).kill()  # whether or not its answer went out, nobody reads it
        sock.close(0)
        return req
    c.tracker(2).kill()  # so the first event cannot reach it
    lost = actor.send(1, req, timeout=5.0)
    assert lost is not None and lost.ok, lost  # committed: it is answered only after that
    assert [e.origin for e in events_of(c, 1, req)] == [1]
    if how == "unreplicated":
        c.tracker(1).kill()
    else:
        c.tracker(1).signal(signal.SIGSTOP)
    c.tracker(2).start()
    return req


@pytest.mark.parametrize("how, op", [
    *(("unreplicated", op) for op in CASES),
    ("hung", "create_user"), ("hung", "login"), ("hung", "join_group"),
    ("replicated", "create_user"), ("replicated", "login"), ("replicated", "accept_request"),
])
def test_retry_at_another_tracker_takes_effect_once(two_trackers: Cluster, how: str, op: str
                                                    ) -> None:
    c, case = two_trackers, CASES[op]
    wait_live(c, 1, [2])
    wait_live(c, 2, [1])
    actors = setting(c, case)
    actor = actors[case.actor]
    req = first_attempt(c, actor, op, case.args, how)

    retry = actor.send(2, req, timeout=10.0)  # what the user is told
    assert retry is not None and retry.ok, retry
    made_by_2 = [e for e in events_of(c, 2, req) if e.origin == 2]
    assert len(made_by_2) == (0 if how == "replicated" else 1), made_by_2

    if how == "hung":
        c.tracker(1).signal(signal.SIGCONT)
    else:
        c.tracker(1).start()
    wait_converged(c, timeout=15)
    for tracker in (1, 2):
        carrying = events_of(c, tracker, req)
        assert sorted(e.origin for e in carrying) == ([1] if how == "replicated" else [1, 2])
        if op == "create_user" and how != "replicated":  # two records, one salt kept
            assert carrying[0].data["pw"] != carrying[1].data["pw"]
        again = actor.send(tracker, req, timeout=5.0)  # the same request once more
        assert again is not None and again.ok, (tracker, again)
    wait_converged(c, timeout=15)
    for tracker in (1, 2):
        case.check(c, actors, tracker)


# --- the real client, its answer dropped on the way back ------------------------------

class LosingProxy(threading.Thread):
    """Stands between a client and tracker 1, passing requests and answers through,
    except the answer to the first request whose op is ``drop``: that one is dropped
    and ``dropped`` is set, as if the tracker had died right after answering."""

    def __init__(self, tracker_endpoint: str, drop: str) -> None:
        super().__init__(name="losing-proxy", daemon=True)
        ctx: zmq.Context[Any] = zmq.Context.instance()
        self.port = free_port()
        self.front, self.back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
        for sock in (self.front, self.back):
            sock.setsockopt(zmq.LINGER, 0)
        self.front.bind(f"tcp://127.0.0.1:{self.port}")
        self.back.connect(tracker_endpoint)
        self.drop = drop
        self.dropped = threading.Event()
        self.stop = threading.Event()
        self._doomed: int | None = None  # rid whose answer is to be lost

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        try:
            while not self.stop.is_set():
                ready = dict(poller.poll(50))
                if self.front in ready:
                    frames = self.front.recv_multipart()
                    req = codec.decode(frames[-1])
                    if req.get("op") == self.drop and not self.dropped.is_set():
                        self._doomed = req.get("rid")
                    self.back.send_multipart(frames)
                if self.back in ready:
                    frames = self.back.recv_multipart()
                    rid = codec.decode(frames[-1]).get("rid")
                    if self._doomed is not None and rid == self._doomed:
                        self._doomed = None
                        self.dropped.set()
                        continue
                    self.front.send_multipart(frames)
        finally:
            self.front.close(0)
            self.back.close(0)


@pytest.mark.parametrize("op", ["create_user", "login"])
def test_real_client_whose_answer_was_lost_is_told_ok_once(two_trackers: Cluster, op: str
                                                           ) -> None:
    """TrackerClient's own failover: tracker 1 commits and answers while tracker 2 is
    dead, the answer is lost and tracker 1 dies; the client's retries reach the
    restarted tracker 2, which never saw the first event."""
    c = two_trackers
    wait_live(c, 1, [2])
    proxy = LosingProxy(f"tcp://127.0.0.1:{c.ports[0]}", op)
    proxy.start()
    client = TrackerClient([TrackerAddress(1, "127.0.0.1", proxy.port),
                            TrackerAddress(2, "127.0.0.1", c.ports[1])],
                           context=zmq.Context.instance(), give_up_after=30.0)
    outcome: list[Any] = []
    try:
        if op == "login":
            client.call("create_user", {"user": "carol", "password": "pc"})
            wait_converged(c, timeout=10)
            client.token = secrets.token_hex(32)
        args = {"user": "carol", "password": "pc"} | ({"addr": ADDR} if op == "login" else {})
        c.tracker(2).kill()

        def call() -> None:
            try:
                outcome.append(client.call(op, args))
            except RemoteError as exc:  # what the user would be shown
                outcome.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        assert proxy.dropped.wait(10), "tracker 1 never answered the first attempt"
        c.tracker(1).kill()
        c.tracker(2).start()
        caller.join(40)
        assert not caller.is_alive(), "the client never got an answer"
    finally:
        proxy.stop.set()
        proxy.join(5)
        client.close()
    assert outcome == [None], outcome
    origins = sorted(e.origin for e in tracker_events(c.tracker(2).data_dir) if e.type == op)
    assert origins == [2], origins  # tracker 2 made its own event for the retry
    c.tracker(1).start()
    wait_converged(c, timeout=15)
    for tracker in (1, 2):
        assert sorted(e.origin for e in tracker_events(c.tracker(tracker).data_dir)
                      if e.type == op) == [1, 2]
        st = c.tracker(tracker).answered_status()
        assert st["users"] == 1
        if op == "login":
            assert st["sessions"] == 1
            probe = Direct(c)  # the session is the token's, whatever the client id
            probe.token = client.token
            assert probe.ok(tracker, "list_groups") == []
    for tracker in (1, 2):
        assert logs_in(c, tracker, "carol", "pc")
