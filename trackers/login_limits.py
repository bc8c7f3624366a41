"""What a tracker allows of the requests that cost it a password hash (pure, no zmq).

scrypt takes ~70 ms and a tracker has two threads for it, so without bounds 200
wrong-password logins sent at once delayed a real user's login by 5.8 s, and anyone
could guess a password as fast as those threads hash.  ``HashSlots`` bounds the
hashing jobs waiting, per source address and in all; ``Guesses`` refuses a user's
logins from an address that gave that user's wrong password too often lately.
Both are per tracker, in memory, and not replicated.
"""

from __future__ import annotations

from collections import OrderedDict

PER_SOURCE = 8  # hashing jobs one address may have waiting: a host's few real users
TOTAL = 32  # in all: at most ~1.1 s of hashing ahead of anyone, well within 8 s
GUESSES = 5  # wrong passwords for one user from one address ...
WINDOW = 60.0  # ... within this many seconds, then that address waits
MAX_KEYS = 10_000  # (user, address) pairs remembered; the oldest are forgotten first


class HashSlots:
    """Admission of hashing jobs: at most ``per_source`` waiting per source address
    and ``total`` in all; a job beyond either is refused rather than queued."""

    def __init__(self, per_source: int = PER_SOURCE, total: int = TOTAL) -> None:
        self.per_source, self.total = per_source, total
        self._waiting: dict[str, int] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def admit(self, source: str) -> bool:
        """Take a slot for ``source``, or False if it or the tracker has none left."""
        held = self._waiting.get(source, 0)
        if held >= self.per_source or self._count >= self.total:
            return False
        self._waiting[source] = held + 1
        self._count += 1
        return True

    def release(self, source: str) -> None:
        """Give back a slot taken by ``admit`` (the job is done)."""
        held = self._waiting.get(source, 0)
        if held <= 0:
            raise ValueError(f"no slot held for {source!r}")
        if held == 1:
            del self._waiting[source]  # so the table holds only sources with jobs
        else:
            self._waiting[source] = held - 1
        self._count -= 1


class Guesses:
    """Wrong passwords per (user, source address), over a sliding window.

    Keyed by the address too, so that a stranger elsewhere cannot lock a user out;
    at most ``max_keys`` pairs are kept (the least recently failed go first), so made-up
    pairs cannot grow memory without end.
    """

    def __init__(self, limit: int = GUESSES, window: float = WINDOW,
                 max_keys: int = MAX_KEYS) -> None:
        if limit < 1 or window <= 0 or max_keys < 1:
            raise ValueError("limit, window and max_keys must be positive")
        self.limit, self.window, self.max_keys = limit, window, max_keys
        # (user, source) -> times of its recent failures, oldest first, at most `limit`
        self._failures: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def wait(self, user: str, source: str, now: float) -> float:
        """Seconds until ``source`` may try ``user``'s password again; 0.0 if it may now."""
        times = self._recent((user, source), now)
        if len(times) < self.limit:
            return 0.0
        return min(self.window, times[-self.limit] + self.window - now)  # float rounding

    def left(self, user: str, source: str, now: float) -> int:
        """How many more wrong passwords ``source`` may give for ``user`` now."""
        return max(0, self.limit - len(self._recent((user, source), now)))

    def failed(self, user: str, source: str, now: float) -> None:
        """Count a wrong password for ``user`` from ``source``."""
        key = (user, source)
        times = self._recent(key, now)
        times.append(now)
        del times[:-self.limit]  # older ones no longer decide anything
        self._failures[key] = times
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, user: str, source: str) -> None:
        """The right password: forget the failures of that pair."""
        self._failures.pop((user, source), None)

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        times = [t for t in self._failures.get(key, ()) if now - t < self.window]
        if not times:
            self._failures.pop(key, None)
        return times
