"""A hybrid logical clock: wall-clock milliseconds plus a counter, never going back.

Timestamps are one int, ``ms << 16 | counter``, so they sort as numbers.  Observing
a remote timestamp moves the clock past it, so an event made after seeing another
always sorts after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_COUNTER_BITS = 16
# Observed timestamps move the clock at most this far: about the year 4200 in
# wall-clock milliseconds, so no real clock's stamp is affected, and the stamps made
# after it stay far below 2**63, the most the event log can store.  A buggy or
# compromised peer's event stamped near 2**63 would otherwise leave every later write unstorable.
OBSERVE_CEILING = 2**62


class HybridClock:
    def __init__(self, wall_ms: Callable[[], int] | None = None) -> None:
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._last = 0

    def now(self) -> int:
        """A timestamp greater than every one issued or observed before."""
        physical = self._wall_ms() << _COUNTER_BITS
        self._last = max(self._last + 1, physical)
        return self._last

    def observe(self, ts: int) -> None:
        """Note a timestamp seen from elsewhere (one beyond ``OBSERVE_CEILING`` counts
        as the ceiling)."""
        self._last = max(self._last, min(ts, OBSERVE_CEILING))
