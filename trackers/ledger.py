"""The events a tracker holds and the state they fold to (pure, no I/O)."""

from __future__ import annotations

import bisect

from p2p.messages.sync import Event
from trackers import state as st


class Ledger:
    """Keeps ``state == fold(events)`` as events arrive in any order."""

    def __init__(self, events: list[Event] | None = None) -> None:
        self.events: list[Event] = sorted(events or [], key=lambda e: e.key)
        self._keys = [e.key for e in self.events]
        self._ids = {(e.origin, e.seq) for e in self.events}
        self.state = st.fold(self.events)
        self.refolds = 0

    def __contains__(self, event_id: tuple[int, int]) -> bool:
        return event_id in self._ids

    def add(self, events: list[Event]) -> None:
        """Insert events not held yet; replay from scratch if one lands in the past."""
        fresh = [e for e in sorted(events, key=lambda e: e.key) if (e.origin, e.seq) not in self]
        refold = False
        for event in fresh:
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
