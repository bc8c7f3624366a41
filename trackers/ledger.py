"""The events a tracker holds and the state they fold to (pure, no I/O)."""

from __future__ import annotations

import bisect

from p2p.messages.sync import Event
from trackers import state as st


class Ledger:
    """Keeps ``state == fold(events)`` as events arrive in any order."""

    def __init__(self, events: list[Event] | None = None) -> None:
        self.events: list[Event] = []
        self._keys: list[tuple[int, int, int]] = []
        self._ids: set[tuple[int, int]] = set()
        self.state = st.State()
        self.refolds = 0
        self.add(events or [])  # in key order into an empty ledger: the fold, no replay

    def __contains__(self, event_id: tuple[int, int]) -> bool:
        return event_id in self._ids

    def add(self, events: list[Event]) -> None:
        """Insert events not held yet; replay from scratch if one lands in the past."""
        refold = False
        for event in sorted(events, key=lambda e: e.key):
            if (event.origin, event.seq) in self:  # held, or earlier in this same batch
                continue
            at = bisect.bisect(self._keys, event.key)
            refold = refold or at < len(self._keys)
            self._keys.insert(at, event.key)
            self.events.insert(at, event)
            self._ids.add((event.origin, event.seq))
            if not refold:
                st.apply(self.state, event)
        if refold:
            # An event older than ones already applied: the fold order changed, so the
            # deterministic answer is to replay.  Rare (concurrent writes), and cheap.
            self.refolds += 1
            self.state = st.fold(self.events)
