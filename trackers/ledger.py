"""The events a tracker holds and the state they fold to (pure, no I/O)."""

from __future__ import annotations

import bisect

from p2p.messages.sync import Event
from trackers import state as st

SNAPSHOT_EVERY = 128  # events between two snapshots of the state
# Snapshots kept, the most recent: a late event replays from one if it lands less than
# 1..2 x SNAPSHOT_EVERY events back (replication delivers them a few events late), from
# scratch if older.  More is not better: each is a whole state that every full garbage
# collection walks; with 8 kept, replicated-write p99 in bench.tracker was ~1.5x worse.
SNAPSHOTS_KEPT = 2


class Ledger:
    """Keeps ``state == fold(events)`` as events arrive in any order.

    An event that sorts after every held one is applied to the state.  One that sorts
    before some of them (concurrent writes on two trackers, common under replication)
    changes the fold order from its place on, so the state is rebuilt: from a copy of
    the latest snapshot at or before that place, replaying the events after it; from
    scratch only when the place is older than every kept snapshot.  Snapshots are taken
    after every ``snapshot_every``-th event of the log and only the last
    ``snapshots_kept`` are kept, so a late event costs one copy of the state plus
    replaying fewer than ``snapshot_every`` events plus its lateness: it grows with the
    size of the state, no longer with the length of the log.
    """

    def __init__(self, events: list[Event] | None = None, *,
                 snapshot_every: int = SNAPSHOT_EVERY,
                 snapshots_kept: int = SNAPSHOTS_KEPT) -> None:
        if snapshot_every < 1 or snapshots_kept < 0:
            raise ValueError("snapshot_every must be >= 1 and snapshots_kept >= 0")
        self.events: list[Event] = []
        self._keys: list[tuple[int, int, int]] = []
        self._ids: set[tuple[int, int]] = set()
        self.state = st.State()
        self._every = snapshot_every
        self._kept = snapshots_kept
        # (n, state after events[:n]), n increasing; never mutated once taken.
        self._snapshots: list[tuple[int, st.State]] = []
        # Per call of add() that brought late events: replayed from scratch (no snapshot
        # old enough), or from a snapshot; and the held events applied again by both.
        self.refolds = 0
        self.replays = 0
        self.replayed = 0
        self.add(events or [])  # in key order into an empty ledger: the fold, no replay

    def __contains__(self, event_id: tuple[int, int]) -> bool:
        return event_id in self._ids

    def add(self, events: list[Event]) -> None:
        """Insert events not held yet; replay from a snapshot if one lands in the past."""
        held = len(self.events)  # the state is the fold of all of them
        low = held  # events[:low] are unchanged by this batch
        for event in sorted(events, key=lambda e: e.key):
            if (event.origin, event.seq) in self:  # held, or earlier in this same batch
                continue
            at = bisect.bisect(self._keys, event.key)
            low = min(low, at)
            self._keys.insert(at, event.key)
            self.events.insert(at, event)
            self._ids.add((event.origin, event.seq))
        if low == held:  # all of them after every held event: apply them
            self._apply_from(held)
            return
        # An event older than ones already applied: the fold order changed from `low` on,
        # so the deterministic answer is to replay from the state just before it.
        while self._snapshots and self._snapshots[-1][0] > low:
            self._snapshots.pop()  # taken after the insertion point: no longer a prefix
        if self._snapshots:
            start, snapshot = self._snapshots[-1]
            self.replays += 1
            self.state = st.copy_state(snapshot)  # the snapshot stays as it is
        else:
            start = 0
            self.refolds += 1
            self.state = st.State()
        self.replayed += held - start
        self._apply_from(start)

    def _apply_from(self, start: int) -> None:
        """Apply events[start:] to a state that is the fold of events[:start], taking
        snapshots on the way where they could serve a later replay."""
        total = len(self.events)
        tail = total - self._every * self._kept  # snapshots before it would not be kept
        state = self.state
        for n in range(start + 1, total + 1):
            st.apply(state, self.events[n - 1])
            # At every multiple of `_every` events, but only where the kept snapshots will
            # be (so loading a long log does not copy the state hundreds of times).
            if n % self._every == 0 and n > tail:
                self._snapshots.append((n, st.copy_state(state)))
                if len(self._snapshots) > self._kept:
                    del self._snapshots[0]
