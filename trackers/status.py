"""``p2p-tracker FILE --status``: ask every tracker how it is doing."""

from __future__ import annotations

import uuid
from typing import Any

import zmq

from p2p import codec
from p2p.config import TrackerAddress
from p2p.messages.tracker import Reply, Request


def query_status(tracker: TrackerAddress, timeout: float = 1.0) -> dict[str, Any] | None:
    """One tracker's status, or None when it does not answer within ``timeout``."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(tracker.client_endpoint)
        sock.send(codec.encode(Request("status", uuid.uuid4().hex, 0).to_wire()))
        if not sock.poll(int(timeout * 1000)):
            return None
        reply = Reply.from_wire(codec.decode(sock.recv()))
        return reply.result if reply.ok and isinstance(reply.result, dict) else None
    finally:
        sock.close(0)


def format_status(tracker: TrackerAddress, status: dict[str, Any] | None) -> str:
    """One line about one tracker, for operators."""
    if status is None:
        return f"{tracker}: DOWN (no answer within 1 s)"
    applied = " ".join(f"{k}:{v}" for k, v in status["applied"].items()) or "-"
    line = (f"{tracker}: up  digest {status['digest']}  applied {applied}  "
            f"events {status['events']}  users {status['users']}  "
            f"groups {status['groups']}  sessions {status['sessions']}")
    peers = status.get("peers")
    if isinstance(peers, dict) and peers:
        seen = " ".join(f"{p}:{'live' if v.get('live') else 'down'}" for p, v in peers.items())
        line += f"  peers {seen}  leader {status.get('leader', '?')}"
    return line


def print_status(trackers: list[TrackerAddress]) -> int:
    """Print one line per tracker, then whether the live ones agree; exit status 0 if
    every tracker answered and all of them hold the same state."""
    answers = [(tracker, query_status(tracker)) for tracker in trackers]
    for tracker, status in answers:
        print(format_status(tracker, status))
    up = [s for _, s in answers if s is not None]
    digests = {s["digest"] for s in up}
    if len(up) > 1:
        print("trackers agree" if len(digests) == 1 else
              f"trackers differ ({len(digests)} distinct states; replication in progress?)")
    return 0 if len(up) == len(answers) and len(digests) == 1 else 1
