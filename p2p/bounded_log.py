"""Log lines a stranger can cause, bounded: the first few, then a count.

Trackers and piece servers log each malformed message they drop, so that an operator
sees them; but one line per message let a stranger's 300,000 garbage frames write
29.7 MB of a client's log.  Here each kind of trouble from each source gets at most
``burst`` lines in a window of ``window`` seconds; the rest are counted, and the count
becomes one summary line when the window ends ("... and 9995 more malformed peer
requests from 10.0.0.7 in the last 10 s").

``LineBudget`` decides (pure: the caller passes the time); ``BoundedLog`` writes what it
decides to a logger, with a clock of its own, and is what the loops use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BURST = 5  # lines per kind and source in one window
WINDOW = 10.0  # seconds
# Sources tracked at once: a stranger with many addresses must not make the table (or
# the log: BURST lines per source) grow without end.  Newer ones share one entry per kind.
MAX_SOURCES = 64
OTHER_SOURCES = "other addresses"


@dataclass
class _Window:
    start: float
    logged: int = 1
    held: int = 0  # lines not written in this window


@dataclass(frozen=True)
class Summary:
    """Lines held back in one window, told as one line."""

    kind: str
    source: str
    held: int
    window: float

    def line(self) -> str:
        source = f" from {self.source}" if self.source else ""
        return f"... and {self.held} more {self.kind}{source} in the last {self.window:g} s"


class LineBudget:
    """Which lines about (kind, source) may be written, and what to say of the others."""

    def __init__(self, burst: int = BURST, window: float = WINDOW,
                 max_sources: int = MAX_SOURCES) -> None:
        self.burst, self.window, self.max_sources = burst, window, max_sources
        # Oldest window first: each is added when it starts, so the ones that end first
        # are at the front and ended() stops at the first still running.
        self._windows: dict[tuple[str, str], _Window] = {}
        self._ended: list[Summary] = []  # windows closed by admit(), not yet told

    def admit(self, kind: str, source: str, now: float) -> bool:
        """Whether a line about ``kind`` from ``source`` may be written at ``now``; if
        not, it is counted for the summary."""
        key = (kind, source)
        if key not in self._windows and len(self._windows) >= self.max_sources:
            key = (kind, OTHER_SOURCES)
        window = self._windows.get(key)
        if window is not None and now - window.start >= self.window:  # ended() not called
            self._close(key, window)
            window = None
        if window is None:
            self._windows[key] = _Window(now)
            return True
        if window.logged < self.burst:
            window.logged += 1
            return True
        window.held += 1
        return False

    def ended(self, now: float) -> list[Summary]:
        """Summaries of the windows over by ``now`` that held lines back; every window
        over is forgotten (the next line about it starts a new one)."""
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if now - window.start < self.window:
                break
            self._close(key, window)
        told, self._ended = self._ended, []
        return told

    def _close(self, key: tuple[str, str], window: _Window) -> None:
        del self._windows[key]
        if window.held:
            self._ended.append(Summary(*key, window.held, self.window))


class BoundedLog:
    """Warnings to ``logger`` within a ``LineBudget``; the owner calls ``flush`` now and
    then (its loop's every turn), so the summaries come when their window ends."""

    def __init__(self, logger: logging.Logger, budget: LineBudget | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.budget = budget or LineBudget()
        self._clock = clock

    def warning(self, kind: str, source: str, msg: str, *args: Any,
                exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless ``kind`` from ``source`` had its lines in this window
        (``kind`` is plural, as the summary says it: "malformed requests").  True if
        written."""
        if not self.budget.admit(kind, source, self._clock()):
            return False
        self.logger.warning(msg, *args, exc_info=exc_info)
        return True

    def flush(self) -> None:
        """Write the summary of every window that ended with lines held back."""
        for summary in self.budget.ended(self._clock()):
            self.logger.warning("%s", summary.line())
