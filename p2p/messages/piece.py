"""Peer <-> peer messages: a downloader's DEALER talks to a peer's ROUTER.

Requests are one msgpack frame.  Replies are a msgpack header frame, and for a
piece a second frame with the raw bytes (kept out of msgpack to avoid a copy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from p2p import codec
from p2p.errors import LocalError, shown
from p2p.messages.tracker import MAX_SHARED_PIECES, check_file_name, check_id

MAX_REQUEST = 64 * 1024  # requests are small; anything bigger is refused by the socket
MAX_HAVE_INDICES = 4096  # per Have message: well inside MAX_REQUEST however large the indices
# A reply's header frame: a peer's bitfield has a bit per piece, and at 64 KiB every
# seeder of a file over 255 GiB was dropped as sending a malformed reply.
MAX_REPLY_HEADER = MAX_REQUEST + (MAX_SHARED_PIECES + 7) // 8


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise LocalError(f"peer message field {name!r} is missing or malformed", "bad_request")
    return value


def _index(obj: dict[str, Any]) -> int:
    index = _field(obj, "index", int)
    if index < 0:
        raise LocalError("piece index must not be negative", "bad_request")
    return int(index)


@dataclass(frozen=True)
class Hello:
    """Open a file with a peer: who I am, and the tracker's ticket for the group and peer."""

    group: str
    name: str
    sha1: str
    user: str
    ticket: str

    def to_wire(self) -> dict[str, Any]:
        return {"t": "hello", "group": self.group, "name": self.name, "sha1": self.sha1,
                "user": self.user, "ticket": self.ticket}


@dataclass(frozen=True)
class _PieceRequest:
    group: str
    name: str
    index: int
    KIND: ClassVar[str]

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.KIND, "group": self.group, "name": self.name, "index": self.index}


@dataclass(frozen=True)
class Get(_PieceRequest):
    """Ask for one whole piece of a file opened with Hello."""

    KIND: ClassVar[str] = "get"


@dataclass(frozen=True)
class Cancel(_PieceRequest):
    """Withdraw a Get not yet served (the piece came from another peer, or we left)."""

    KIND: ClassVar[str] = "cancel"


Request = Hello | Get | Cancel


def parse_request(frame: bytes) -> Request:
    """Decode a downloader's request, or raise LocalError(bad_request)."""
    obj = codec.decode(frame, max_size=MAX_REQUEST)
    if not isinstance(obj, dict):
        raise LocalError("peer request must be a map", "bad_request")
    kind = obj.get("t")
    group = check_id(obj.get("group"), "group id")
    name = check_file_name(obj.get("name"))
    if kind == "hello":
        return Hello(group, name, _field(obj, "sha1", str), check_id(obj.get("user"), "user id"),
                     _field(obj, "ticket", str))
    if kind == "get":
        return Get(group, name, _index(obj))
    if kind == "cancel":
        return Cancel(group, name, _index(obj))
    raise LocalError(f"unknown peer request {shown(kind)}", "bad_request")


# --- replies (server -> downloader) -------------------------------------------------------

@dataclass(frozen=True)
class Have:
    """The pieces a peer holds (``bits``: a bitfield), or more pieces it now has
    (``indices``: those verified since it last said)."""

    name: str
    bits: bytes | None = None
    indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class Piece:
    name: str
    index: int
    data: bytes | memoryview


@dataclass(frozen=True)
class Refused:
    """The peer will not serve: not a member, not shared, bad piece..."""

    name: str
    code: str
    error: str
    index: int | None = None


Reply = Have | Piece | Refused


def bitfield_frame(name: str, bits: bytes) -> list[bytes]:
    return [codec.encode({"t": "bitfield", "name": name, "bits": bits})]


def have_frame(name: str, indices: Sequence[int]) -> list[bytes]:
    """One Have message; at most ``MAX_HAVE_INDICES`` indices (split longer lists)."""
    if len(indices) > MAX_HAVE_INDICES:
        raise ValueError(f"{len(indices)} indices in one Have message")
    return [codec.encode({"t": "have", "name": name, "indices": list(indices)})]


def piece_frames(name: str, index: int) -> bytes:
    """The header frame of a piece reply; the data follows as a second frame."""
    return codec.encode({"t": "piece", "name": name, "index": index})


def refused_frame(name: str, code: str, error: str, index: int | None = None) -> list[bytes]:
    return [codec.encode({"t": "refused", "name": name, "code": code, "error": error,
                          "index": index})]


def parse_reply(frames: list[Any]) -> Reply:
    """Decode a peer's reply, or raise LocalError(bad_request)."""
    if not frames:
        raise LocalError("empty peer reply", "bad_request")
    obj = codec.decode(frames[0], max_size=MAX_REPLY_HEADER)
    if not isinstance(obj, dict):
        raise LocalError("peer reply must be a map", "bad_request")
    kind, name = obj.get("t"), _field(obj, "name", str)
    if kind == "piece":
        if len(frames) != 2:
            raise LocalError("piece reply needs exactly one data frame", "bad_request")
        data = frames[1].buffer if hasattr(frames[1], "buffer") else frames[1]
        return Piece(name, _index(obj), data)
    if kind == "bitfield":
        return Have(name, bits=_field(obj, "bits", bytes))
    if kind == "have":
        indices = _field(obj, "indices", list)
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
            raise LocalError("piece indices must be non-negative integers", "bad_request")
        return Have(name, indices=tuple(indices))
    if kind == "refused":
        index = obj.get("index")
        return Refused(name, _field(obj, "code", str), _field(obj, "error", str),
                       index if isinstance(index, int) and not isinstance(index, bool) else None)
    raise LocalError(f"unknown peer reply {shown(kind)}", "bad_request")
