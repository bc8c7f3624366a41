"""Client <-> tracker messages: one request, one reply, validated on the way in."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from p2p.errors import LocalError, shown
from p2p.pieces import DIGEST_SIZE, PIECE_SIZE

ID_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}\Z")
MAX_PASSWORD = 1024
# The largest request a tracker takes (its socket's MAXMSGSIZE and decode limit).  A
# replicated event carries what its request carried, so trackers take events of this
# size from each other and from their own log too.
MAX_REQUEST = 16 * 1024 * 1024
# The largest tracker reply a client takes: file_info answers with a shared file's piece
# hashes (up to MAX_REQUEST) plus its peers, a partial one with its bitfield.  The
# codec's 4 MiB default refused the file_info of any file over about 100 GiB.
MAX_REPLY = 2 * MAX_REQUEST
# Room in a share request, and in the event and catch-up batch that carry it, for all
# but the piece hashes and the bitfield: ids, a name of up to 255 bytes, the token,
# the event's envelope (a few hundred bytes in all; generous on purpose).
_SHARE_ENVELOPE = 64 * 1024
# The most pieces a shared file may have: the share of a partial download carries 20
# bytes of hash and one bit of bitfield per piece, and must fit in MAX_REQUEST.  A
# larger file's share never reached a tracker (its socket drops the message unread)
# and the client said no tracker answered.
MAX_SHARED_PIECES = (MAX_REQUEST - _SHARE_ENVELOPE) * 8 // (DIGEST_SIZE * 8 + 1)
MAX_SHARED_SIZE = MAX_SHARED_PIECES * PIECE_SIZE  # 405.5 GiB
# The most peers one file_info reply lists (BitTorrent trackers hand out 50 by default).
# A downloader asks again every 2 s and keeps the peers it met, so it meets others over
# time; it links to at most 16 at once (peers.download.MAX_PEER_LINKS), and 50 leave it a
# choice of those that have pieces it lacks.  Listing every member made the reply grow
# with the group: 163 partial holders of the largest file (104 KB of bitfield each) took
# it over MAX_REPLY, and every downloader was told no_tracker.
MAX_LISTED_PEERS = 50
# Room per listed peer for all but its bitfield: user id (64 bytes), address (up to 259),
# ticket (64), the keys and msgpack headers (some 40 bytes; generous on purpose).
_PEER_ENVELOPE = 1024
# The largest file_info reply: the largest file's piece hashes with room for the rest of
# the reply, and every listed peer a partial holder with a bitfield of all its pieces.
MAX_FILE_INFO_REPLY = (DIGEST_SIZE * MAX_SHARED_PIECES + _SHARE_ENVELOPE
                       + MAX_LISTED_PEERS * ((MAX_SHARED_PIECES + 7) // 8 + _PEER_ENVELOPE))
assert MAX_FILE_INFO_REPLY <= MAX_REPLY, "file_info of the largest file would be refused"


def check_shareable(size: int, what: str = "the file") -> None:
    """Refuse a file too large to be shared: LocalError ``file_too_large``."""
    if size > MAX_SHARED_SIZE:
        raise LocalError(f"{what} is {size_text(size)} ({size} bytes); the largest file "
                         f"that can be shared is {size_text(MAX_SHARED_SIZE)} "
                         f"({MAX_SHARED_SIZE} bytes)", "file_too_large")


def size_text(n: int) -> str:
    """A byte count as people read it: ``512 B``, ``1.5 MiB``, ``405.5 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


# Tickets one check_tickets request may ask about: a serving peer sends what queued up
# while its last call was out, so a flood of made-up tickets costs it a few round
# trips instead of one each.
MAX_TICKETS_PER_CHECK = 64


def check_id(value: Any, what: str) -> str:
    """Validate a user or group id: 1-64 of letters, digits and ``_ . @ -``."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise LocalError(
            f"invalid {what} {shown(value)}: use 1-64 letters, digits or _ . @ -", "bad_request"
        )
    return value


def check_file_name(value: Any) -> str:
    """A shared file's name is a plain base name: no separators, not ``.``/``..``."""
    if (
        not isinstance(value, str)
        or not value
        or len(value.encode()) > 255
        or "/" in value
        or "\\" in value
        or "\0" in value
        or value in (".", "..")
        or any(ord(c) < 32 for c in value)
    ):
        raise LocalError(f"invalid file name {shown(value)}: must be a plain base name",
                         "bad_request")
    return value


@dataclass(frozen=True)
class Request:
    """One client request. ``(cid, rid)`` identifies it across retries."""

    op: str
    cid: str
    rid: int
    args: dict[str, Any] = field(default_factory=dict)
    token: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op, "cid": self.cid, "rid": self.rid, "args": self.args,
                "token": self.token}

    @classmethod
    def from_wire(cls, obj: Any) -> Request:
        """Build a request from decoded msgpack, or raise LocalError(bad_request)."""
        if not isinstance(obj, dict):
            raise LocalError("request must be a map", "bad_request")
        op, cid, rid = obj.get("op"), obj.get("cid"), obj.get("rid")
        args, token = obj.get("args", {}), obj.get("token")
        if not isinstance(op, str) or not 0 < len(op) <= 64:
            raise LocalError("request needs an 'op' string", "bad_request")
        if not isinstance(cid, str) or not 0 < len(cid) <= 64:
            raise LocalError("request needs a 'cid' string", "bad_request")
        if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid < 2**63:
            raise LocalError("request needs a non-negative integer 'rid'", "bad_request")
        if not isinstance(args, dict):
            raise LocalError("'args' must be a map", "bad_request")
        if token is not None and (not isinstance(token, str) or not 0 < len(token) <= 128):
            raise LocalError("'token' must be a string", "bad_request")
        return cls(op=op, cid=cid, rid=rid, args=args, token=token)


@dataclass(frozen=True)
class Reply:
    """A tracker's answer: ``ok`` with a ``result``, or an error ``code`` and sentence."""

    rid: int
    ok: bool
    result: Any = None
    code: str = ""
    error: str = ""

    def to_wire(self) -> dict[str, Any]:
        if self.ok:
            return {"rid": self.rid, "ok": True, "result": self.result}
        return {"rid": self.rid, "ok": False, "code": self.code, "error": self.error}

    @classmethod
    def from_wire(cls, obj: Any) -> Reply:
        """Build a reply from decoded msgpack, or raise LocalError(bad_request)."""
        if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
            raise LocalError("reply must be a map with 'ok'", "bad_request")
        rid = obj.get("rid", -1)
        if not isinstance(rid, int):
            raise LocalError("reply has a bad 'rid'", "bad_request")
        if obj["ok"]:
            return cls(rid=rid, ok=True, result=obj.get("result"))
        code, error = obj.get("code"), obj.get("error")
        if not isinstance(code, str) or not isinstance(error, str):
            raise LocalError("error reply needs 'code' and 'error' strings", "bad_request")
        return cls(rid=rid, ok=False, code=code, error=error)

    @classmethod
    def failure(cls, rid: int, code: str, error: str) -> Reply:
        return cls(rid=rid, ok=False, code=code, error=error)
