"""Who is alive, who holds what, and when a replicated write may be answered.

Pure: no sockets, no clock of its own (every method takes ``now``), no I/O.  The
replication loop feeds it what it hears; the server asks it what to do.

The rules:

- A peer is *live* while we heard from it (any message) within ``LIVE_TIMEOUT`` and
  it is not *suspect*.  Every configured peer is presumed heard at start, so writes
  made in the first second wait for peers that are coming up too.
- A peer a write is waiting for becomes suspect when it has been silent for two
  heartbeats, or when the write waited ``ACK_TIMEOUT`` and the peer has been silent
  that long too (heartbeats come every ``HEARTBEAT_INTERVAL``, so only a dead or hung
  peer is that quiet; a peer not heard from yet since we started gets the full
  ``LIVE_TIMEOUT`` to connect).  Any message from it clears the suspicion; a dropped
  connection (the replication loop watches its DEALERs) sets it at once.
- A write originating here is confirmed when every live peer has *acked* it (an ack
  carries the peer's verdict, so heartbeats do not count).  An event from elsewhere
  that a client asks about again is confirmed when every live peer holds it (acks or
  heartbeat vectors).  Either way no write waits longer than ``MAX_WAIT``.
- The verdict of a write is its outcome here unless some ack reported a failure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from p2p.messages.sync import Event, Vector
from trackers.state import Outcome, fail

HEARTBEAT_INTERVAL = 0.25
LIVE_TIMEOUT = 1.0
ACK_TIMEOUT = 0.3
SILENCE_LIMIT = 2 * HEARTBEAT_INTERVAL
MAX_WAIT = 1.0
CATCH_UP_TIMEOUT = 1.0
STARTUP_GRACE = 0.5  # a starting tracker serves once caught up with its peers, or after this
#                     (counted again from each catch-up batch that says more is coming)

EventId = tuple[int, int]  # (origin, seq)


def lacking(mine: Vector, theirs: Vector) -> dict[int, int]:
    """Origins of which ``theirs`` holds more than ``mine``, with their highest seq."""
    return {o: s for o, s in theirs.items() if s > mine.get(o, 0)}


def placement(have: Vector, origin: int, seq: int) -> Literal["next", "held", "gap"]:
    """Where an event stands against what we hold: append it, drop it, or catch up."""
    held = have.get(origin, 0)
    if seq <= held:
        return "held"
    return "next" if seq == held + 1 else "gap"


def contiguous(have: Vector, events: Iterable[Event]) -> tuple[list[Event], bool]:
    """The events that extend ``have`` without a hole (in origin/seq order), and
    whether some event was left out because something before it is missing."""
    top = dict(have)
    out: list[Event] = []
    gap = False
    for event in sorted(events, key=lambda e: (e.origin, e.seq)):
        where = placement(top, event.origin, event.seq)
        if where == "next":
            out.append(event)
            top[event.origin] = event.seq
        elif where == "gap":
            gap = True
    return out, gap


def combine(local: Outcome | None, reported: Outcome | None) -> Outcome:
    """The answer to a client: the local outcome, unless it is ok and a peer saw a failure."""
    if local is None:
        return fail("bad_request", "the request was lost; try again")
    if local.ok and reported is not None and not reported.ok:
        return reported
    return local


@dataclass
class Peer:
    number: int
    heard: float  # last time any message came from it
    suspect: bool = False
    contacted: bool = False  # heard from at least once (liveness at start is presumed)
    holds: Vector = field(default_factory=dict)  # from heartbeats, acks and batches
    acked: int = 0  # the highest of our own events it has acked
    asked: float | None = None  # when our outstanding catch-up request to it went out


class View:
    """What this tracker knows about the others."""

    def __init__(self, me: int, peers: Iterable[int], now: float) -> None:
        self.me = me
        self.peers = {p: Peer(p, heard=now) for p in peers if p != me}

    def heard(self, peer: int, now: float) -> bool:
        """Note any message from ``peer``; False for a tracker we do not know."""
        info = self.peers.get(peer)
        if info is None:
            return False
        info.heard = max(info.heard, now)
        info.suspect = False
        info.contacted = True
        return True

    def suspect(self, peer: int) -> None:
        """Stop counting on ``peer`` until it is heard from again."""
        self.peers[peer].suspect = True

    def holds_vector(self, peer: int, vector: Vector) -> None:
        info = self.peers[peer]
        for origin, seq in vector.items():
            if seq > info.holds.get(origin, 0):
                info.holds[origin] = seq

    def acked(self, peer: int, origin: int, upto: int) -> None:
        info = self.peers[peer]
        if origin == self.me:
            info.acked = max(info.acked, upto)
        self.holds_vector(peer, {origin: upto})

    def is_live(self, peer: int, now: float) -> bool:
        info = self.peers[peer]
        return not info.suspect and now - info.heard <= LIVE_TIMEOUT

    def live(self, now: float) -> list[int]:
        return [p for p in sorted(self.peers) if self.is_live(p, now)]

    def leader(self, now: float) -> int:
        """The lowest-numbered live tracker, counting this one."""
        return min([self.me, *self.live(now)])

    def has(self, peer: int, event: EventId, *, acked: bool) -> bool:
        """Whether ``peer`` is known to hold ``event`` (by its ack only, if ``acked``)."""
        origin, seq = event
        info = self.peers[peer]
        if peer == origin:
            return True
        if acked and origin == self.me:
            return info.acked >= seq
        return info.holds.get(origin, 0) >= seq

    def catch_up_from(self, mine: Vector, now: float) -> list[int]:
        """Live peers holding events we lack, with no catch-up request to them pending."""
        return [
            p for p in self.live(now)
            if lacking(mine, self.peers[p].holds) and not self.asking(p, now)
        ]

    def asking(self, peer: int, now: float) -> bool:
        asked = self.peers[peer].asked
        return asked is not None and now - asked < CATCH_UP_TIMEOUT

    def asked(self, peer: int, now: float | None) -> None:
        """Record a catch-up request sent (``now``) or answered (None)."""
        self.peers[peer].asked = now

    def describe(self, now: float) -> dict[str, Any]:
        """For the status op: per peer, live or not and how long since we heard it."""
        return {
            str(p): {"live": self.is_live(p, now) and i.contacted,
                     "heard_ms": int((now - i.heard) * 1000) if i.contacted else None,
                     "suspect": i.suspect, "holds": {str(o): s for o, s in sorted(i.holds.items())}}
            for p, i in sorted(self.peers.items())
        }


@dataclass
class Wait:
    """A write (or a retry of one) whose client answer waits for the other trackers."""

    event: EventId
    cid: str
    rid: int
    started: float
    waiters: list[Any] = field(default_factory=list)
    reported: Outcome | None = None  # the first failure a peer reported, if any


class Waits:
    """Writes awaiting confirmation, by event and by client request."""

    def __init__(self, view: View) -> None:
        self.view = view
        self._by_event: dict[EventId, Wait] = {}
        self._by_request: dict[tuple[str, int], EventId] = {}

    def __len__(self) -> int:
        return len(self._by_event)

    def start(self, event: EventId, cid: str, rid: int, now: float, waiter: Any) -> None:
        """Wait for ``event`` on behalf of ``waiter``; joins a wait already under way."""
        wait = self._by_event.get(event)
        if wait is None:
            wait = self._by_event[event] = Wait(event, cid, rid, now)
            self._by_request[(cid, rid)] = event
        wait.waiters.append(waiter)

    def join(self, cid: str, rid: int, waiter: Any) -> bool:
        """Add ``waiter`` to the wait for request (cid, rid), if there is one."""
        event = self._by_request.get((cid, rid))
        if event is None:
            return False
        self._by_event[event].waiters.append(waiter)
        return True

    def report(self, origin: int, seq: int, outcome: Outcome) -> None:
        """A peer's verdict on event (origin, seq): a failure sticks."""
        wait = self._by_event.get((origin, seq))
        if wait is not None and not outcome.ok and wait.reported is None:
            wait.reported = outcome

    def missing(self, wait: Wait, now: float) -> list[int]:
        """Live peers not yet known to hold the event of ``wait``."""
        local = wait.event[0] == self.view.me
        return [p for p in self.view.live(now)
                if not self.view.has(p, wait.event, acked=local)]

    def settle(self, now: float) -> list[Wait]:
        """Waits that may be answered now (confirmed, or given up on); they are removed.

        A peer a write gives up on becomes suspect (see ``give_up_at``), so a dead or
        hung peer delays the writes of that moment only, and by well under a second.
        """
        done: list[Wait] = []
        for wait in list(self._by_event.values()):
            missing = self.missing(wait, now)
            for peer in missing:
                if now >= self.give_up_at(wait, peer):
                    self.view.suspect(peer)
            if missing:
                missing = self.missing(wait, now)
            if not missing:
                done.append(wait)
                del self._by_event[wait.event]
                self._by_request.pop((wait.cid, wait.rid), None)
        return done

    def give_up_at(self, wait: Wait, peer: int) -> float:
        """When ``wait`` stops waiting for ``peer``, which has not confirmed it yet.

        A peer silent for two heartbeats is given up on at once; one silent for
        ``ACK_TIMEOUT`` once the write has waited that long too; any peer once the write
        has waited ``MAX_WAIT``.  A peer not heard from since we started may still be
        starting up: it gets ``LIVE_TIMEOUT`` of silence instead.
        """
        heard = self.view.peers[peer].heard
        if not self.view.peers[peer].contacted:
            silent_limit = patience = LIVE_TIMEOUT
        else:
            silent_limit, patience = SILENCE_LIMIT, ACK_TIMEOUT
        return min(heard + silent_limit,
                   max(wait.started + ACK_TIMEOUT, heard + patience),
                   wait.started + MAX_WAIT)

    def next_deadline(self, now: float) -> float | None:
        """When ``settle`` may next give up on a peer (None: nothing waits)."""
        times = [self.give_up_at(wait, peer)
                 for wait in self._by_event.values() for peer in self.missing(wait, now)]
        return min(times) if times else None
