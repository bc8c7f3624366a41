"""The tracker state and ``apply(state, event)``: pure, no sockets, no I/O.

Every rule is a pair (check, change).  ``check`` says why an event cannot take
effect at its place in the log (a second ``create_user alice``); ``change``
mutates the state.  Commands use the same checks to refuse a request before it
becomes an event, so a rule is written once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2p import codec
from p2p.messages.sync import Event


@dataclass(frozen=True)
class Outcome:
    """How a request or event turned out: ok, or an error code and sentence."""

    ok: bool
    code: str = ""
    error: str = ""


OK = Outcome(True)
OUTCOME_WINDOW = 16  # outcomes remembered per client, for recognising retries


def fail(code: str, error: str) -> Outcome:
    return Outcome(False, code, error)


@dataclass
class Group:
    owner: str
    members: list[str]  # in the order they joined: the owner's successor is members[1]
    requests: list[str] = field(default_factory=list)


@dataclass
class Session:
    user: str
    cid: str
    addr: str  # where this client's peer server listens


@dataclass
class SharedFile:
    size: int
    sha1: str
    pieces: bytes  # concatenated 20-byte SHA1 digests
    holders: dict[str, bytes | None] = field(default_factory=dict)  # sid -> bitfield, None=all


@dataclass
class State:
    users: dict[str, bytes] = field(default_factory=dict)  # user -> scrypt record
    groups: dict[str, Group] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)  # sid -> session
    files: dict[str, dict[str, SharedFile]] = field(default_factory=dict)  # group -> name -> file
    # cid -> {rid: outcome} of that client's latest write requests
    outcomes: dict[str, dict[int, Outcome]] = field(default_factory=dict)


Check = Callable[[State, dict[str, Any]], Outcome]
Change = Callable[[State, dict[str, Any]], None]


def _sid_user(s: State, sid: str) -> str | None:
    session = s.sessions.get(sid)
    return session.user if session else None


def _session_user(s: State, d: dict[str, Any]) -> str | None:
    return _sid_user(s, d.get("sid", ""))


def need_group(s: State, group: str) -> Outcome:
    if group not in s.groups:
        return fail("no_such_group", f"group {group} does not exist")
    return OK


def need_member(s: State, group: str, user: str) -> Outcome:
    found = need_group(s, group)
    if found.ok and user not in s.groups[group].members:
        return fail("not_member", f"{user} is not a member of group {group}")
    return found


def need_owner(s: State, group: str, user: str) -> Outcome:
    found = need_group(s, group)
    if found.ok and s.groups[group].owner != user:
        return fail("not_owner", f"only the owner of group {group} can do that")
    return found


def _drop_holders(s: State, keep: Callable[[str, str], bool]) -> None:
    """Remove holders for which keep(group, sid) is false; a file nobody holds goes."""
    for group in list(s.files):
        files = s.files[group]
        for name in list(files):
            holders = files[name].holders
            for sid in [sid for sid in holders if not keep(group, sid)]:
                del holders[sid]
            if not holders:
                del files[name]
        if not files:
            del s.files[group]


# --- accounts and sessions -------------------------------------------------------------

def _check_create_user(s: State, d: dict[str, Any]) -> Outcome:
    if d["user"] in s.users:
        return fail("user_exists", f"user {d['user']} already exists")
    return OK


def _create_user(s: State, d: dict[str, Any]) -> None:
    s.users[d["user"]] = d["pw"]


def _check_login(s: State, d: dict[str, Any]) -> Outcome:
    if d["user"] not in s.users:
        return fail("no_such_user", f"user {d['user']} does not exist")
    if d["sid"] in s.sessions:
        return fail("already_logged_in", "this client is already logged in")
    return OK


def _login(s: State, d: dict[str, Any]) -> None:
    s.sessions[d["sid"]] = Session(d["user"], d["cid"], d["addr"])


def _check_logout(s: State, d: dict[str, Any]) -> Outcome:
    if d["sid"] not in s.sessions:
        return fail("not_logged_in", "not logged in")
    return OK


def _logout(s: State, d: dict[str, Any]) -> None:
    del s.sessions[d["sid"]]
    _drop_holders(s, lambda _group, sid: sid != d["sid"])


# --- groups ----------------------------------------------------------------------------

def _check_create_group(s: State, d: dict[str, Any]) -> Outcome:
    if d["group"] in s.groups:
        return fail("group_exists", f"group {d['group']} already exists")
    return OK


def _create_group(s: State, d: dict[str, Any]) -> None:
    s.groups[d["group"]] = Group(owner=d["user"], members=[d["user"]])


def _check_join_group(s: State, d: dict[str, Any]) -> Outcome:
    found = need_group(s, d["group"])
    if not found.ok:
        return found
    group = s.groups[d["group"]]
    if d["user"] in group.members:
        return fail("already_member", f"{d['user']} is already a member of {d['group']}")
    if d["user"] in group.requests:
        return fail("already_requested", f"a request to join {d['group']} is already pending")
    return OK


def _join_group(s: State, d: dict[str, Any]) -> None:
    s.groups[d["group"]].requests.append(d["user"])


def _check_leave_group(s: State, d: dict[str, Any]) -> Outcome:
    return need_member(s, d["group"], d["user"])


def _leave_group(s: State, d: dict[str, Any]) -> None:
    name, user = d["group"], d["user"]
    group = s.groups[name]
    group.members.remove(user)
    if not group.members:
        del s.groups[name]
        s.files.pop(name, None)
        return
    if group.owner == user:
        group.owner = group.members[0]
    _drop_holders(s, lambda g, sid: g != name or _sid_user(s, sid) != user)


def _check_request(s: State, d: dict[str, Any]) -> Outcome:
    found = need_owner(s, d["group"], d["user"])
    if found.ok and d["member"] not in s.groups[d["group"]].requests:
        return fail("no_such_request", f"no pending request from {d['member']} to {d['group']}")
    return found


def _accept_request(s: State, d: dict[str, Any]) -> None:
    group = s.groups[d["group"]]
    group.requests.remove(d["member"])
    group.members.append(d["member"])


def _reject_request(s: State, d: dict[str, Any]) -> None:
    s.groups[d["group"]].requests.remove(d["member"])


# --- shared files ----------------------------------------------------------------------

def _check_share(s: State, d: dict[str, Any]) -> Outcome:
    user = _session_user(s, d)
    if user is None:
        return fail("not_logged_in", "not logged in")
    found = need_member(s, d["group"], user)
    if not found.ok:
        return found
    existing = s.files.get(d["group"], {}).get(d["name"])
    if existing and (existing.sha1 != d["sha1"] or existing.size != d["size"]):
        return fail("file_exists", f"another file named {d['name']} is shared in {d['group']}")
    return OK


def _share(s: State, d: dict[str, Any]) -> None:
    files = s.files.setdefault(d["group"], {})
    record = files.setdefault(d["name"], SharedFile(d["size"], d["sha1"], d["pieces"]))
    record.holders[d["sid"]] = d.get("have")


def _check_have(s: State, d: dict[str, Any]) -> Outcome:
    found = _check_share(s, d)
    if found.ok and d["name"] not in s.files.get(d["group"], {}):
        return fail("no_such_file", f"no file {d['name']} is shared in {d['group']}")
    return found


def _check_unshare(s: State, d: dict[str, Any]) -> Outcome:
    if _session_user(s, d) is None:
        return fail("not_logged_in", "not logged in")
    record = s.files.get(d["group"], {}).get(d["name"])
    if record is None or d["sid"] not in record.holders:
        return fail("not_shared", f"you do not share {d['name']} in {d['group']}")
    return OK


def _unshare(s: State, d: dict[str, Any]) -> None:
    files = s.files[d["group"]]
    del files[d["name"]].holders[d["sid"]]
    if not files[d["name"]].holders:
        del files[d["name"]]
    if not files:
        del s.files[d["group"]]


RULES: dict[str, tuple[Check, Change]] = {
    "create_user": (_check_create_user, _create_user),
    "login": (_check_login, _login),
    "logout": (_check_logout, _logout),
    "create_group": (_check_create_group, _create_group),
    "join_group": (_check_join_group, _join_group),
    "leave_group": (_check_leave_group, _leave_group),
    "accept_request": (_check_request, _accept_request),
    "reject_request": (_check_request, _reject_request),
    "share": (_check_share, _share),
    "have": (_check_have, _share),
    "unshare": (_check_unshare, _unshare),
}


_FILE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "sid": str, "group": str, "name": str, "size": int, "sha1": str, "pieces": bytes,
    "have": (bytes, type(None)),
}
# The data each event type carries.  Commands always build it whole; an event that
# lacks a field or has one of the wrong type (a bug, or a hostile tracker) is refused
# as a whole, rather than half-applied or raising in the middle of a fold.
FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "create_user": {"user": str, "pw": bytes},
    "login": {"user": str, "sid": str, "cid": str, "addr": str},
    "logout": {"sid": str},
    "create_group": {"group": str, "user": str},
    "join_group": {"group": str, "user": str},
    "leave_group": {"group": str, "user": str},
    "accept_request": {"group": str, "user": str, "member": str},
    "reject_request": {"group": str, "user": str, "member": str},
    "share": _FILE_FIELDS,
    "have": _FILE_FIELDS,
    "unshare": {"sid": str, "group": str, "name": str},
}


def well_formed(etype: str, data: Any) -> Outcome:
    """Does an event's data have every field its type needs, each of the right type?"""
    fields = FIELDS.get(etype)
    if fields is None:
        return fail("bad_request", f"unknown event type {etype!r}")
    if not isinstance(data, dict):
        return fail("bad_request", f"malformed {etype} event: data is not a map")
    for name, kind in fields.items():
        value = data.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return fail("bad_request", f"malformed {etype} event: bad field {name!r}")
    return OK


def check(state: State, etype: str, data: dict[str, Any]) -> Outcome:
    """Would an event of this type and data take effect on ``state`` now?"""
    rule = RULES.get(etype)
    if rule is None:
        return fail("bad_request", f"unknown event type {etype!r}")
    try:
        return rule[0](state, data)
    except (KeyError, TypeError, AttributeError) as exc:
        return fail("bad_request", f"malformed {etype} event: {exc!r}")


def apply(state: State, event: Event) -> Outcome:
    """Apply one event in log order; an event that fails its check changes nothing.

    A second event of the same client request (a retry that reached another
    tracker) is a duplicate: it changes nothing and the first one's outcome stands.
    A client's requests may fold in another order than it sent them (a tracker
    with a lagging clock took the later one), so an older rid is not stale.
    """
    if event.cid:
        known = outcome_of(state, event.cid, event.rid)
        if known is not None:
            return known
    outcome = well_formed(event.type, event.data)
    if outcome.ok:
        outcome = check(state, event.type, event.data)
    if outcome.ok:
        RULES[event.type][1](state, event.data)
    if event.cid:
        recent = state.outcomes.setdefault(event.cid, {})
        recent[event.rid] = outcome
        if len(recent) > OUTCOME_WINDOW:
            # A client retries only its current request, so old rids can go.
            del recent[min(recent)]
    return outcome


def fold(events: list[Event]) -> State:
    """The state that the given events produce, applied in their ``key`` order."""
    state = State()
    for event in sorted(events, key=lambda e: e.key):
        apply(state, event)
    return state


def copy_state(state: State) -> State:
    """An independent copy: applying events to one never changes the other.

    Copies every dict, list and record the rules mutate; shares only immutable
    values (str, int, bytes, None, the frozen ``Outcome``).  Several times faster
    than ``copy.deepcopy``.  A new mutable field in the state must be copied here too
    (tests/test_ledger.py checks this against ``deepcopy`` on a populated state).
    """
    return State(
        users=dict(state.users),
        groups={name: Group(g.owner, list(g.members), list(g.requests))
                for name, g in state.groups.items()},
        sessions={sid: Session(x.user, x.cid, x.addr) for sid, x in state.sessions.items()},
        files={group: {name: SharedFile(f.size, f.sha1, f.pieces, dict(f.holders))
                       for name, f in files.items()}
               for group, files in state.files.items()},
        outcomes={cid: dict(rids) for cid, rids in state.outcomes.items()},
    )


def outcome_of(state: State, cid: str, rid: int) -> Outcome | None:
    """The recorded outcome of client request (cid, rid), if it became an event."""
    return state.outcomes.get(cid, {}).get(rid)


def canonical(state: State) -> Any:
    """A plain, ordered rendering of the state, for digests and status output."""
    return [
        sorted((u, h) for u, h in state.users.items()),
        sorted((g, x.owner, x.members, x.requests) for g, x in state.groups.items()),
        sorted((sid, x.user, x.cid, x.addr) for sid, x in state.sessions.items()),
        sorted(
            (g, n, f.size, f.sha1, f.pieces, sorted(f.holders.items(), key=lambda h: h[0]))
            for g, files in state.files.items()
            for n, f in files.items()
        ),
        sorted((c, r, o.ok, o.code) for c, rids in state.outcomes.items()
               for r, o in rids.items()),
    ]


def digest(state: State) -> str:
    """A short hash of the whole state: equal on trackers that agree."""
    return hashlib.sha256(codec.encode(canonical(state))).hexdigest()[:16]
