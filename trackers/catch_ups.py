"""Catch-up requests waiting for their answer: which to answer next, and which to drop.

Answering one costs the tracker's loop a read of up to ``BATCH_EVENTS`` events from
sqlite and their encoding (a few ms).  Answered as they came, 2,000 of them sent to the
peer port at once kept a tracker from its clients for 8 s.  So the replication loop only
queues them here, and answers a few per loop turn once the clients have been served:

- one request per connection: a newer one replaces the vector of the one waiting (only
  the latest vector matters) and keeps its place in the line, so a connection gets at
  most one batch per round of the others, however much it sends;
- at most ``limit`` connections waiting; a request from one more is dropped, and its
  asker asks again when its request times out (``quorum.CATCH_UP_TIMEOUT``).

Pure: no sockets, no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum

from p2p.messages.sync import CatchUp

# Real trackers hold one connection each to our peer port, and a cluster has a handful.
MAX_WAITING = 32


class Offer(Enum):
    """What became of a catch-up request offered to the queue."""

    QUEUED = "queued"
    COALESCED = "coalesced"  # replaced the one its connection had waiting
    DROPPED = "dropped"  # too many connections waiting


class CatchUpQueue:
    """The latest catch-up request of each connection (by routing id), oldest first."""

    def __init__(self, limit: int = MAX_WAITING) -> None:
        self.limit = limit
        self._waiting: OrderedDict[bytes, CatchUp] = OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, who: bytes, request: CatchUp) -> Offer:
        """Queue ``request`` from connection ``who``, or coalesce or drop it."""
        if who in self._waiting:
            self._waiting[who] = request  # assignment keeps the key's place
            return Offer.COALESCED
        if len(self._waiting) >= self.limit:
            return Offer.DROPPED
        self._waiting[who] = request
        return Offer.QUEUED

    def take(self, count: int) -> list[tuple[bytes, CatchUp]]:
        """Up to ``count`` requests to answer now, oldest first, gone from the queue."""
        out: list[tuple[bytes, CatchUp]] = []
        while self._waiting and len(out) < count:
            out.append(self._waiting.popitem(last=False))
        return out
