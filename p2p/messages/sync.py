"""Tracker <-> tracker messages: replicated events, acks, heartbeats, catch-up.

Each message travels as one msgpack frame, ``[kind, field...]``; ``encode_sync`` and
``decode_sync`` are the only way in and out, and ``decode_sync`` validates every field
so a loop can drop a bad frame with one log line and carry on.

- ``Event`` (PUB): a change made on its origin tracker.
- ``Heartbeat`` (PUB): "I am alive, I hold this much of each origin, and these sessions
  talked to me lately".
- ``CatchUp`` (DEALER -> ROUTER): "send me what you have beyond this vector".
- ``Batch`` (ROUTER -> DEALER): the answer, oldest first per origin; ``more`` asks the
  receiver to ask again.
- ``Ack`` (DEALER -> ROUTER, to the origin): "I hold your events up to ``upto``, and this
  is how the client requests among them turned out here".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2p import codec
from p2p.errors import LocalError, shown

MAX_TRACKERS = 1000  # tracker numbers are 1..MAX_TRACKERS
MAX_SIDS = 100_000
_MAX_TEXT = 1024

Vector = dict[int, int]  # origin tracker -> highest contiguous seq held


def _bad(message: str) -> LocalError:
    return LocalError(message, "bad_request")


def _uint(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise _bad(f"{name} must be a non-negative int")
    return value


def _tracker_no(value: Any, name: str) -> int:
    if _uint(value, name) < 1 or value > MAX_TRACKERS:
        raise _bad(f"{name} must be a tracker number 1..{MAX_TRACKERS}")
    return int(value)


def _text(value: Any, name: str, limit: int = _MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise _bad(f"{name} must be a string of at most {limit} characters")
    return value


def _list(value: Any, name: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise _bad(f"{name} must be a list")
    return value


def vector_to_wire(vector: Vector) -> list[list[int]]:
    """A vector as ``[[origin, seq], ...]`` (msgpack maps here only take string keys)."""
    return [[origin, seq] for origin, seq in sorted(vector.items())]


def vector_from_wire(obj: Any) -> Vector:
    vector: Vector = {}
    for pair in _list(obj, "vector"):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise _bad("vector entries must be [origin, seq] pairs")
        origin, seq = _tracker_no(pair[0], "vector origin"), _uint(pair[1], "vector seq")
        if origin in vector:
            raise _bad(f"vector names origin {origin} twice")
        vector[origin] = seq
    return vector


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

    @property
    def id(self) -> tuple[int, int]:
        return (self.origin, self.seq)

    def to_wire(self) -> list[Any]:
        return [self.origin, self.seq, self.ts, self.cid, self.rid, self.type, self.data]

    @classmethod
    def from_wire(cls, obj: Any) -> Event:
        """Rebuild an event from its wire list, or raise LocalError(bad_request)."""
        if not isinstance(obj, list | tuple) or len(obj) != 7:
            raise LocalError("event must be a 7-item list", "bad_request")
        origin, seq, ts, cid, rid, etype, data = obj
        for name, value in (("origin", origin), ("seq", seq), ("ts", ts), ("rid", rid)):
            # Below 2**63: the log stores these in sqlite's signed 64-bit integers, and a
            # larger one made the append raise out of the tracker's loop.
            _uint(value, f"event field {name}")
        if not isinstance(cid, str) or not isinstance(etype, str) or not isinstance(data, dict):
            raise LocalError("event cid/type/data have wrong types", "bad_request")
        return cls(origin, seq, ts, cid, rid, etype, data)


@dataclass(frozen=True)
class Heartbeat:
    """Published every ~250 ms: liveness, the sender's vector, sessions heard from lately."""

    sender: int
    vector: Vector
    sids: tuple[str, ...] = ()

    def to_wire(self) -> list[Any]:
        return [self.sender, vector_to_wire(self.vector), list(self.sids)]

    @classmethod
    def from_wire(cls, obj: Any) -> Heartbeat:
        sender, vector, sids = _fields(obj, 3, "heartbeat")
        sid_list = _list(sids, "sids")
        if len(sid_list) > MAX_SIDS:
            raise _bad(f"a heartbeat carries at most {MAX_SIDS} session ids")
        return cls(_tracker_no(sender, "sender"), vector_from_wire(vector),
                   tuple(_text(s, "session id", 128) for s in sid_list))


@dataclass(frozen=True)
class CatchUp:
    """A request for every event the responder holds beyond ``vector``."""

    sender: int
    vector: Vector

    def to_wire(self) -> list[Any]:
        return [self.sender, vector_to_wire(self.vector)]

    @classmethod
    def from_wire(cls, obj: Any) -> CatchUp:
        sender, vector = _fields(obj, 2, "catch-up")
        return cls(_tracker_no(sender, "sender"), vector_from_wire(vector))


@dataclass(frozen=True)
class Batch:
    """Events answering a ``CatchUp``, ascending per origin; ``more``: ask again."""

    sender: int
    events: tuple[Event, ...]
    more: bool

    def to_wire(self) -> list[Any]:
        return [self.sender, [e.to_wire() for e in self.events], self.more]

    @classmethod
    def from_wire(cls, obj: Any) -> Batch:
        sender, events, more = _fields(obj, 3, "batch")
        if not isinstance(more, bool):
            raise _bad("batch 'more' must be a bool")
        return cls(_tracker_no(sender, "sender"),
                   tuple(Event.from_wire(e) for e in _list(events, "events")), more)


@dataclass(frozen=True)
class Verdict:
    """How one of the origin's client events turned out on the acking tracker."""

    seq: int
    ok: bool
    code: str = ""
    error: str = ""

    def to_wire(self) -> list[Any]:
        return [self.seq, self.ok, self.code, self.error]

    @classmethod
    def from_wire(cls, obj: Any) -> Verdict:
        seq, ok, code, error = _fields(obj, 4, "verdict")
        if not isinstance(ok, bool):
            raise _bad("verdict 'ok' must be a bool")
        return cls(_uint(seq, "verdict seq"), ok, _text(code, "code", 64), _text(error, "error"))


@dataclass(frozen=True)
class Ack:
    """To an origin: "I durably hold your events 1..upto"; verdicts for the new ones."""

    sender: int
    origin: int
    upto: int
    verdicts: tuple[Verdict, ...] = ()

    def to_wire(self) -> list[Any]:
        return [self.sender, self.origin, self.upto, [v.to_wire() for v in self.verdicts]]

    @classmethod
    def from_wire(cls, obj: Any) -> Ack:
        sender, origin, upto, verdicts = _fields(obj, 4, "ack")
        return cls(_tracker_no(sender, "sender"), _tracker_no(origin, "origin"),
                   _uint(upto, "upto"),
                   tuple(Verdict.from_wire(v) for v in _list(verdicts, "verdicts")))


SyncMessage = Event | Heartbeat | CatchUp | Batch | Ack

_KINDS: dict[str, Any] = {
    "ev": Event, "hb": Heartbeat, "cu": CatchUp, "ba": Batch, "ak": Ack,
}
_KIND_OF: dict[type, str] = {cls: kind for kind, cls in _KINDS.items()}


def _fields(obj: Any, count: int, what: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(obj, list | tuple) or len(obj) != count:
        raise _bad(f"{what} must be a {count}-item list")
    return obj


def encode_sync(message: SyncMessage) -> bytes:
    """One frame: ``[kind, *fields]`` in msgpack."""
    return codec.encode([_KIND_OF[type(message)], *message.to_wire()])


def decode_sync(data: bytes | memoryview, *, max_size: int = codec.MAX_FRAME) -> SyncMessage:
    """Parse and validate one frame, or raise LocalError(bad_request)."""
    obj = codec.decode(data, max_size=max_size)
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], str):
        raise _bad("sync frame must be a list starting with its kind")
    cls = _KINDS.get(obj[0])
    if cls is None:
        raise _bad(f"unknown sync message kind {shown(obj[0])}")
    if cls is Event:
        return Event.from_wire(obj[1:])
    message: SyncMessage = cls.from_wire(obj[1:])
    return message
