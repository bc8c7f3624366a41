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


def print_status(trackers: list[TrackerAddress]) -> int:
    """Print one line per tracker; exit status 0 if every tracker answered."""
    down = 0
    for tracker in trackers:
        status = query_status(tracker)
        if status is None:
            down += 1
            print(f"{tracker}: DOWN (no answer within 1 s)")
            continue
        applied = " ".join(f"{k}:{v}" for k, v in status["applied"].items()) or "-"
        print(f"{tracker}: up  digest {status['digest']}  applied {applied}  "
              f"events {status['events']}  users {status['users']}  "
              f"groups {status['groups']}  sessions {status['sessions']}")
    return 1 if down else 0
