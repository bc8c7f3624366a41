"""Tracker <-> tracker messages: replicated events, acks, heartbeats, catch-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2p.errors import LocalError


@dataclass(frozen=True)
class Event:
    """One replicated change to the tracker state.

    ``(origin, seq)`` names it uniquely; the state is the fold of all events in
    ``key`` order, so every tracker with the same events has the same state.
    ``(cid, rid)`` is the client request it came from ("" / 0 for a tracker's own).
    """

    origin: int
    seq: int
    ts: int
    cid: str
    rid: int
    type: str
    data: dict[str, Any]

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.ts, self.origin, self.seq)

    def to_wire(self) -> list[Any]:
        return [self.origin, self.seq, self.ts, self.cid, self.rid, self.type, self.data]

    @classmethod
    def from_wire(cls, obj: Any) -> Event:
        """Rebuild an event from its wire list, or raise LocalError(bad_request)."""
        if not isinstance(obj, list | tuple) or len(obj) != 7:
            raise LocalError("event must be a 7-item list", "bad_request")
        origin, seq, ts, cid, rid, etype, data = obj
        for name, value in (("origin", origin), ("seq", seq), ("ts", ts), ("rid", rid)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise LocalError(f"event field {name} must be a non-negative int", "bad_request")
        if not isinstance(cid, str) or not isinstance(etype, str) or not isinstance(data, dict):
            raise LocalError("event cid/type/data have wrong types", "bad_request")
        return cls(origin, seq, ts, cid, rid, etype, data)
