"""Client <-> tracker messages: one request, one reply, validated on the way in."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from p2p.errors import LocalError, shown

ID_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}\Z")
MAX_PASSWORD = 1024
# The largest tracker reply a client takes.  A tracker takes requests of up to 16 MiB
# (trackers.server.MAX_MESSAGE), so a shared file's piece hashes can be that large,
# and file_info answers with them plus the file's peers.  The codec's 4 MiB default
# refused the file_info of any file over about 100 GiB as malformed.
MAX_REPLY = 32 * 1024 * 1024


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
