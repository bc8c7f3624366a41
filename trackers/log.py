"""The durable event log: sqlite3, committed before anything is acknowledged."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from p2p import codec
from p2p.messages.sync import Event
from p2p.messages.tracker import MAX_REQUEST

# An event holds what its request held: the codec's 4 MiB default refused the share
# of any file over about 100 GiB, and a tracker with one in its log could not start.
_MAX_EVENT = MAX_REQUEST


class EventLog:
    """Every event this tracker holds, per origin contiguous from seq 1."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we answer, so an acknowledged write survives
        # a SIGKILL or a power cut of this tracker.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events ("
            " origin INTEGER NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,"
            " body BLOB NOT NULL, PRIMARY KEY (origin, seq))"
        )

    def append(self, events: Iterable[Event]) -> None:
        """Store events durably in one transaction; ones already held are ignored."""
        rows = [(e.origin, e.seq, e.ts, codec.encode(e.to_wire())) for e in events]
        if not rows:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO events (origin, seq, ts, body) VALUES (?, ?, ?, ?)", rows
            )

    def load(self) -> list[Event]:
        """All events, in fold order."""
        cur = self._db.execute("SELECT body FROM events ORDER BY ts, origin, seq")
        return [Event.from_wire(codec.decode(body, max_size=_MAX_EVENT)) for (body,) in cur]

    def since(self, vector: dict[int, int], limit: int = 1000) -> list[Event]:
        """Events the holder of ``vector`` (origin -> highest seq) lacks, oldest first."""
        out: list[Event] = []
        for (origin,) in self._db.execute("SELECT DISTINCT origin FROM events").fetchall():
            cur = self._db.execute(
                "SELECT body FROM events WHERE origin = ? AND seq > ? ORDER BY seq LIMIT ?",
                (origin, vector.get(origin, 0), limit - len(out)),
            )
            out.extend(Event.from_wire(codec.decode(body, max_size=_MAX_EVENT))
                       for (body,) in cur)
            if len(out) >= limit:
                break
        return out

    def vector(self) -> dict[int, int]:
        """origin -> highest seq held (the log is contiguous per origin)."""
        cur = self._db.execute("SELECT origin, MAX(seq) FROM events GROUP BY origin")
        return {origin: seq for origin, seq in cur}

    def close(self) -> None:
        self._db.close()
