"""A client request + the state -> an event to append, or an immediate reply (pure).

Every write is refused early with the same checks that ``state.apply`` runs, so a
request that cannot succeed never reaches the log.  Reads answer from the state.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from p2p.errors import LocalError
from p2p.messages.tracker import (
    MAX_LISTED_PEERS,
    MAX_PASSWORD,
    MAX_TICKETS_PER_CHECK,
    Reply,
    Request,
    check_file_name,
    check_id,
    check_shareable,
)
from p2p.pieces import piece_count
from trackers import state as st
from trackers.passwords import SALT_BYTES, hash_password, verify_password

_SHA1_RE = re.compile(r"^[0-9a-f]{40}\Z")
_ADDR_RE = re.compile(r"^[A-Za-z0-9.-]{1,253}:[0-9]{1,5}\Z")


@dataclass(frozen=True)
class Write:
    """Append an event of this type and data; the reply is the event's outcome.

    Writes answer ``null`` on success, so a retried request gets the same answer
    as its first attempt from the outcome recorded in the state.
    """

    type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Context:
    """What the impure world supplies: a fresh salt for a new password record, and the
    password hash (the server hands in one whose result it computed off its loop)."""

    salt: bytes
    password_hash: Callable[[str, bytes], bytes] | None = None  # None: hash_password


def _hash(ctx: Context, password: str, salt: bytes) -> bytes:
    return (ctx.password_hash or hash_password)(password, salt)


def _password_matches(ctx: Context, password: str, record: bytes) -> bool:
    if ctx.password_hash is None:
        return verify_password(password, record)
    return hmac.compare_digest(ctx.password_hash(password, record[:SALT_BYTES]), record)


Plan = Write | Reply
Handler = Callable[[st.State, Request, Context], Plan]


def session_id(token: str) -> str:
    """Sessions are stored under a hash of the client's secret token, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def ticket_for(sid: str, group: str, addr: str) -> str:
    """A download ticket: proves that this session may fetch in ``group`` from the peer
    registered at ``addr``, and from no other.  A ticket is bound to the serving peer it
    is handed to, so a peer that keeps one cannot use it as the downloader elsewhere."""
    message = b"ticket:" + group.encode() + b"\0" + addr.encode()
    return hmac.new(bytes.fromhex(sid), message, "sha256").hexdigest()


def _ok(req: Request, result: Any = None) -> Reply:
    return Reply(rid=req.rid, ok=True, result=result)


def _refuse(req: Request, outcome: st.Outcome) -> Reply:
    return Reply.failure(req.rid, outcome.code, outcome.error)


def _arg(req: Request, name: str) -> Any:
    if name not in req.args:
        raise LocalError(f"{req.op} needs argument '{name}'", "bad_request")
    return req.args[name]


def _id(req: Request, name: str, what: str | None = None) -> str:
    return check_id(_arg(req, name), what or name)


def _int(req: Request, name: str) -> int:
    value = _arg(req, name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**62:
        raise LocalError(f"'{name}' must be a non-negative integer", "bad_request")
    return value


def _password(req: Request) -> str:
    value = _arg(req, "password")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_PASSWORD:
        raise LocalError(f"password must be 1-{MAX_PASSWORD} characters", "bad_request")
    return value


def _session(state: st.State, req: Request) -> tuple[str, str]:
    """(sid, user) of the request's session, or LocalError(not_logged_in)."""
    if req.token is not None:
        sid = session_id(req.token)
        session = state.sessions.get(sid)
        if session is not None:
            return sid, session.user
    raise LocalError("not logged in: use login <user_id> <password>", "not_logged_in")


def _write_checked(state: st.State, req: Request, etype: str, data: dict[str, Any]) -> Plan:
    outcome = st.check(state, etype, data)
    return Write(etype, data) if outcome.ok else _refuse(req, outcome)


# --- accounts --------------------------------------------------------------------------

def _create_user(state: st.State, req: Request, ctx: Context) -> Plan:
    user, password = _id(req, "user", "user id"), _password(req)
    outcome = st.check(state, "create_user", {"user": user})
    if not outcome.ok:
        return _refuse(req, outcome)
    return Write("create_user", {"user": user, "pw": _hash(ctx, password, ctx.salt)})


def _login(state: st.State, req: Request, ctx: Context) -> Plan:
    user, password = _id(req, "user", "user id"), _password(req)
    addr = _arg(req, "addr")
    if (not isinstance(addr, str) or not _ADDR_RE.match(addr)
            or not 0 < int(addr.rsplit(":", 1)[1]) <= 65535):
        raise LocalError("login needs the client's peer address HOST:PORT", "bad_request")
    if req.token is None:
        raise LocalError("login needs a session token", "bad_request")
    sid = session_id(req.token)
    if sid in state.sessions:
        return _refuse(req, st.fail("already_logged_in", "this client is already logged in"))
    record = state.users.get(user)
    if record is None:
        return _refuse(req, st.fail("no_such_user", f"user {user} does not exist"))
    if not _password_matches(ctx, password, record):
        return _refuse(req, st.fail("bad_credentials", "wrong password"))
    return _write_checked(state, req, "login",
                          {"user": user, "sid": sid, "cid": req.cid, "addr": addr})


def _logout(state: st.State, req: Request, ctx: Context) -> Plan:
    sid, _user = _session(state, req)
    return Write("logout", {"sid": sid})


def _ping(state: st.State, req: Request, ctx: Context) -> Plan:
    _session(state, req)
    return _ok(req)


# --- groups ----------------------------------------------------------------------------

def _group_write(etype: str) -> Handler:
    def handler(state: st.State, req: Request, ctx: Context) -> Plan:
        _sid, user = _session(state, req)
        data = {"group": _id(req, "group", "group id"), "user": user}
        return _write_checked(state, req, etype, data)

    return handler


def _request_write(etype: str) -> Handler:
    def handler(state: st.State, req: Request, ctx: Context) -> Plan:
        _sid, user = _session(state, req)
        data = {"group": _id(req, "group", "group id"), "user": user,
                "member": _id(req, "user", "user id")}
        return _write_checked(state, req, etype, data)

    return handler


def _list_groups(state: st.State, req: Request, ctx: Context) -> Plan:
    _session(state, req)
    return _ok(req, [
        {"group": name, "owner": g.owner, "members": len(g.members)}
        for name, g in sorted(state.groups.items())
    ])


def _list_requests(state: st.State, req: Request, ctx: Context) -> Plan:
    _sid, user = _session(state, req)
    group = _id(req, "group", "group id")
    outcome = st.need_owner(state, group, user)
    if not outcome.ok:
        return _refuse(req, outcome)
    return _ok(req, list(state.groups[group].requests))


# --- files -----------------------------------------------------------------------------

def _member_of(state: st.State, req: Request) -> tuple[str, str, str]:
    sid, user = _session(state, req)
    group = _id(req, "group", "group id")
    outcome = st.need_member(state, group, user)
    if not outcome.ok:
        raise LocalError(outcome.error, outcome.code)
    return sid, user, group


def _list_files(state: st.State, req: Request, ctx: Context) -> Plan:
    _member_of(state, req)
    files = state.files.get(req.args["group"], {})
    return _ok(req, [
        {"name": name, "size": f.size, "sha1": f.sha1,
         "seeders": len({state.sessions[sid].user for sid, have in f.holders.items()
                         if have is None and sid in state.sessions}),
         "peers": len(f.holders)}
        for name, f in sorted(files.items())
    ])


def _bitfield(req: Request, size: int) -> bytes | None:
    have = req.args.get("have")
    if have is None:
        return None
    if not isinstance(have, bytes) or len(have) != (piece_count(size) + 7) // 8:
        raise LocalError("'have' must be a bitfield of the file's pieces", "bad_request")
    return have


def _share(state: st.State, req: Request, ctx: Context) -> Plan:
    sid, _user, group = _member_of(state, req)
    name, size, sha1 = check_file_name(_arg(req, "name")), _int(req, "size"), _arg(req, "sha1")
    pieces = _arg(req, "pieces")
    # A file over this would make events (and file_info replies) no tracker or client
    # takes: another client's oversized share must not get into the log.
    check_shareable(size)
    if not isinstance(sha1, str) or not _SHA1_RE.match(sha1):
        raise LocalError("'sha1' must be 40 lowercase hex digits", "bad_request")
    if not isinstance(pieces, bytes) or len(pieces) != 20 * piece_count(size):
        raise LocalError("'pieces' must hold one 20-byte SHA1 per piece", "bad_request")
    data = {"sid": sid, "group": group, "name": name, "size": size, "sha1": sha1,
            "pieces": pieces, "have": _bitfield(req, size)}
    return _write_checked(state, req, "share", data)


def _file(state: st.State, req: Request) -> tuple[str, str, str, st.SharedFile]:
    sid, user, group = _member_of(state, req)
    name = check_file_name(_arg(req, "name"))
    record = state.files.get(group, {}).get(name)
    if record is None:
        raise LocalError(f"no file {name} is shared in {group}", "no_such_file")
    return sid, group, name, record


def _have(state: st.State, req: Request, ctx: Context) -> Plan:
    sid, group, name, record = _file(state, req)
    data = {"sid": sid, "group": group, "name": name, "size": record.size,
            "sha1": record.sha1, "pieces": record.pieces, "have": _bitfield(req, record.size)}
    return _write_checked(state, req, "have", data)


def _unshare(state: st.State, req: Request, ctx: Context) -> Plan:
    sid, _user, group = _member_of(state, req)
    data = {"sid": sid, "group": group, "name": check_file_name(_arg(req, "name"))}
    return _write_checked(state, req, "unshare", data)


def choose_peers(holders: Mapping[str, bytes | None], seed: bytes, cap: int) -> list[str]:
    """Which of ``holders`` (sid -> bitfield, None for all of the file) a file_info
    lists: at most ``cap``, complete seeders first, then partial holders; a random
    sample of each where there are more, drawn from ``seed`` (so the choice is pure).

    Seeders take every slot that partial holders leave free, and at least half: they
    have every piece, so they are what a download needs first.  The other half is kept
    for partial holders where there are any: they are the ones that need each other's
    pieces, and what they serve spares the seeders."""
    rng = random.Random(hashlib.sha256(seed).digest())
    seeders = sorted(h for h, have in holders.items() if have is None)
    partials = sorted(h for h, have in holders.items() if have is not None)
    cap = max(cap, 0)
    taken = min(len(seeders), max(cap - cap // 2, cap - len(partials)))
    return rng.sample(seeders, taken) + rng.sample(partials, min(len(partials), cap - taken))


def _file_info(state: st.State, req: Request, ctx: Context) -> Plan:
    """The file's hashes and some of its online holders, each with a ticket for it.

    The sample is drawn from the request itself: a retry is told the same peers, each
    downloader different ones, and each of its refreshes (a new rid) others again."""
    sid, group, name, record = _file(state, req)
    online = {h: have for h, have in record.holders.items() if h != sid and h in state.sessions}
    seed = b"\0".join([sid.encode(), str(req.rid).encode(), group.encode(), name.encode()])
    peers = [
        {"user": state.sessions[h].user, "addr": state.sessions[h].addr, "have": online[h],
         "ticket": ticket_for(sid, group, state.sessions[h].addr)}
        for h in choose_peers(online, seed, MAX_LISTED_PEERS)
    ]
    return _ok(req, {"group": group, "name": name, "size": record.size, "sha1": record.sha1,
                     "pieces": record.pieces, "peers": peers})


def _ticket_valid(state: st.State, addr: str, user: str, group: str, ticket: str) -> bool:
    """Whether ``ticket`` was issued to a logged-in ``user``, member of ``group``, for
    the peer at ``addr``.  A ticket is hex: one with any other character is no ticket
    (and ``hmac.compare_digest`` would raise on a non-ASCII str)."""
    if not ticket.isascii():
        return False
    member = group in state.groups and user in state.groups[group].members
    return member and any(
        s.user == user and hmac.compare_digest(ticket_for(sid, group, addr), ticket)
        for sid, s in state.sessions.items()
    )


def _ticket(value: Any) -> str:
    if not isinstance(value, str):
        raise LocalError("'ticket' must be a string", "bad_request")
    return value


def _check_ticket(state: st.State, req: Request, ctx: Context) -> Plan:
    """Asked by a serving peer, with its own session: may ``user`` fetch in ``group``
    from this peer?  Only a ticket issued for the caller's own peer address counts."""
    caller, _user = _session(state, req)
    group, user = _id(req, "group", "group id"), _id(req, "user", "user id")
    ticket = _ticket(_arg(req, "ticket"))
    if not _ticket_valid(state, state.sessions[caller].addr, user, group, ticket):
        return _refuse(req, st.fail("bad_ticket", f"{user} may not download in {group}"))
    return _ok(req)


def _check_tickets(state: st.State, req: Request, ctx: Context) -> Plan:
    """``check_ticket`` for a list of ``{user, group, ticket}``: one verdict each, in
    order (true: good here).  A malformed entry fails the whole request."""
    caller, _user = _session(state, req)
    asked = _arg(req, "tickets")
    if not isinstance(asked, list) or not 1 <= len(asked) <= MAX_TICKETS_PER_CHECK:
        raise LocalError(f"'tickets' must be a list of 1-{MAX_TICKETS_PER_CHECK} tickets",
                         "bad_request")
    entries = []
    for entry in asked:
        if not isinstance(entry, dict):
            raise LocalError("each ticket must be a map of user, group and ticket",
                             "bad_request")
        entries.append((check_id(entry.get("user"), "user id"),
                        check_id(entry.get("group"), "group id"), _ticket(entry.get("ticket"))))
    addr = state.sessions[caller].addr
    return _ok(req, [_ticket_valid(state, addr, *entry) for entry in entries])


HANDLERS: dict[str, Handler] = {
    "create_user": _create_user,
    "login": _login,
    "logout": _logout,
    "ping": _ping,
    "create_group": _group_write("create_group"),
    "join_group": _group_write("join_group"),
    "leave_group": _group_write("leave_group"),
    "accept_request": _request_write("accept_request"),
    "reject_request": _request_write("reject_request"),
    "list_groups": _list_groups,
    "list_requests": _list_requests,
    "list_files": _list_files,
    "share": _share,
    "have": _have,
    "unshare": _unshare,
    "file_info": _file_info,
    "check_ticket": _check_ticket,
    "check_tickets": _check_tickets,
}


def plan(state: st.State, req: Request, ctx: Context) -> Plan:
    """Decide what a request does: an event to append, or the reply to send now."""
    handler = HANDLERS.get(req.op)
    if handler is None:
        return Reply.failure(req.rid, "unknown_command", f"unknown command {req.op!r}")
    try:
        return handler(state, req, ctx)
    except LocalError as exc:
        return Reply.failure(req.rid, exc.code, exc.message)
