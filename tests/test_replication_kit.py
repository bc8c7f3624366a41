"""Helpers for the replication tests: a wire-level client aimed at chosen trackers, and
waits on the cluster's status.  (No tests here.)"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

import zmq

from p2p import codec
from p2p.messages.tracker import Reply, Request
from tests.procs import Cluster, wait_for

PIECE = 512 * 1024


class Direct:
    """Speaks the tracker wire protocol to a tracker the test picks.

    Every request gets the next request id; ``resend`` repeats the last one (same
    cid, rid) elsewhere, as the real client's failover does.
    """

    def __init__(self, cluster: Cluster, cid: str | None = None) -> None:
        self.cluster = cluster
        self.cid = cid or uuid.uuid4().hex
        self.rid = 0
        self.token: str | None = None
        self._ctx: zmq.Context[Any] = zmq.Context.instance()
        self._last: Request | None = None

    def endpoint(self, tracker: int) -> str:
        return f"tcp://127.0.0.1:{self.cluster.ports[tracker - 1]}"

    def new_session(self) -> None:
        self.token = secrets.token_hex(32)

    def prepare(self, op: str, **args: Any) -> Request:
        self.rid += 1
        self._last = Request(op, self.cid, self.rid, args, self.token)
        return self._last

    def open(self, tracker: int, req: Request | None = None) -> zmq.Socket[Any]:
        """Send a request (default: the last one) and return the socket to read from."""
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint(tracker))
        sock.send(codec.encode((req or self._last_request()).to_wire()))
        return sock

    @staticmethod
    def read(sock: zmq.Socket[Any], timeout: float) -> Reply | None:
        """The reply on ``sock`` within ``timeout``, else None; the socket is closed."""
        try:
            if not sock.poll(int(timeout * 1000)):
                return None
            return Reply.from_wire(codec.decode(sock.recv()))
        finally:
            sock.close(0)

    def send(self, tracker: int, req: Request, timeout: float = 3.0) -> Reply | None:
        return self.read(self.open(tracker, req), timeout)

    def call(self, tracker: int, op: str, timeout: float = 3.0, **args: Any) -> Reply | None:
        return self.send(tracker, self.prepare(op, **args), timeout)

    def resend(self, tracker: int, timeout: float = 3.0) -> Reply | None:
        return self.send(tracker, self._last_request(), timeout)

    def ok(self, tracker: int, op: str, **args: Any) -> Any:
        reply = self.call(tracker, op, **args)
        assert reply is not None, f"tracker {tracker} did not answer {op} {args}"
        assert reply.ok, f"{op} {args} via tracker {tracker}: {reply}"
        return reply.result

    def failover(self, trackers: list[int], op: str, attempt: float = 0.4,
                 give_up: float = 10.0, **args: Any) -> Reply:
        """Like the real client: try each tracker in turn with the same request."""
        req = self.prepare(op, **args)
        deadline = time.monotonic() + give_up
        while True:
            for tracker in trackers:
                reply = self.send(tracker, req, attempt)
                if reply is not None:
                    return reply
            assert time.monotonic() < deadline, f"no tracker answered {op} {args}"

    def login(self, tracker: int, user: str, password: str = "pw", create: bool = True) -> None:
        if create:
            self.ok(tracker, "create_user", user=user, password=password)
        self.new_session()
        self.ok(tracker, "login", user=user, password=password, addr="127.0.0.1:9")

    def _last_request(self) -> Request:
        assert self._last is not None, "nothing sent yet"
        return self._last


def share_args(group: str, name: str, size: int = 3 * PIECE) -> dict[str, Any]:
    """Arguments of a ``share`` request for a made-up file of ``size`` bytes."""
    pieces = (size + PIECE - 1) // PIECE
    return {"group": group, "name": name, "size": size, "sha1": "ab" * 20,
            "pieces": b"\x01" * 20 * pieces}


def status(cluster: Cluster, tracker: int) -> dict[str, Any] | None:
    return cluster.tracker(tracker).status()


def digests(cluster: Cluster, trackers: list[int] | None = None) -> list[str | None]:
    numbers = trackers or [t.number for t in cluster.trackers]
    out: list[str | None] = []
    for n in numbers:
        st = status(cluster, n)
        out.append(st["digest"] if st else None)
    return out


def converged(cluster: Cluster, trackers: list[int] | None = None) -> bool:
    """Every named tracker answers, with the same applied vector and state digest."""
    numbers = trackers or [t.number for t in cluster.trackers]
    seen = [status(cluster, n) for n in numbers]
    if any(s is None for s in seen):
        return False
    return len({(s["digest"], tuple(sorted(s["applied"].items()))) for s in seen if s}) == 1


def wait_converged(cluster: Cluster, timeout: float = 5.0,
                   trackers: list[int] | None = None) -> None:
    wait_for(lambda: converged(cluster, trackers), timeout,
             f"trackers {trackers or 'all'} to converge")


def wait_live(cluster: Cluster, tracker: int, peers: list[int], timeout: float = 10.0) -> None:
    """Until ``tracker`` sees each of ``peers`` live (heartbeats flowing)."""
    def ready() -> bool:
        st = status(cluster, tracker)
        return st is not None and all(st["peers"][str(p)]["live"] for p in peers)
    wait_for(ready, timeout, f"tracker {tracker} to see {peers} live")
