"""commands.plan for every op: each success and each error code it can give."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as hst

from p2p import codec
from p2p.messages.sync import Event
from p2p.messages.tracker import MAX_PASSWORD, MAX_TICKETS_PER_CHECK, Reply, Request
from p2p.pieces import PIECE_SIZE
from trackers import commands
from trackers import state as st
from trackers.commands import Context, Plan, Write, session_id, ticket_for
from trackers.passwords import SALT_BYTES, hash_password, verify_password

pytestmark = pytest.mark.timeout(30)

# scrypt costs tens of milliseconds: one real record, made once, serves every login test.
ALICE_PASSWORD = "correct horse battery staple"
ALICE_RECORD = hash_password(ALICE_PASSWORD, b"A" * SALT_BYTES)
CTX = Context(salt=b"S" * SALT_BYTES)
RID = 41
USERS = ("alice", "bob", "carol", "dave", "erin")
TOKENS = {user: f"token-of-{user}" for user in USERS}
SID = {user: session_id(token) for user, token in TOKENS.items()}
SHA_A = "a" * 40
SHA_B = "b" * 40
PIECES = b"\x01" * 20  # one piece
_ts = itertools.count(1)


def apply(state: st.State, etype: str, data: dict[str, Any]) -> st.Outcome:
    return st.apply(state, Event(1, next(_ts), next(_ts), "", 0, etype, data))


def given_(state: st.State, etype: str, /, **data: Any) -> None:
    outcome = apply(state, etype, data)
    assert outcome.ok, outcome


def world() -> st.State:
    """alice owns g1 (alice, bob), carol asked to join g1; carol owns g2 (carol).
    alice, bob, carol are logged in; dave and erin are not.  In g1, bob seeds f.txt
    and alice holds part of it."""
    s = st.State()
    for user in USERS:
        given_(s, "create_user", user=user,
               pw=ALICE_RECORD if user == "alice" else b"fake record " + user.encode())
    for user in ("alice", "bob", "carol"):
        given_(s, "login", user=user, sid=SID[user], cid=f"cid-{user}", addr=f"{user}.lan:7000")
    given_(s, "create_group", group="g1", user="alice")
    given_(s, "create_group", group="g2", user="carol")
    given_(s, "join_group", group="g1", user="bob")
    given_(s, "accept_request", group="g1", user="alice", member="bob")
    given_(s, "join_group", group="g1", user="carol")
    for user, have in (("bob", None), ("alice", b"\x00")):
        given_(s, "share", sid=SID[user], group="g1", name="f.txt", size=10, sha1=SHA_A,
               pieces=PIECES, have=have)
    return s


def call(state: st.State, op: str, who: str | None, /, **args: Any) -> Plan:
    """``who`` is a user (their token), None (no token) or any other string (as token)."""
    token = None if who is None else TOKENS.get(who, who)
    return commands.plan(state, Request(op, f"cid-{who}", RID, args, token), CTX)


def write(plan: Plan, etype: str) -> Write:
    assert isinstance(plan, Write), plan
    assert plan.type == etype
    return plan


def answer(plan: Plan) -> Any:
    assert isinstance(plan, Reply), plan
    assert plan.ok and plan.rid == RID, plan
    return plan.result


def refused(plan: Plan, code: str) -> Reply:
    assert isinstance(plan, Reply), plan
    assert (plan.ok, plan.code, plan.rid) == (False, code, RID), plan
    assert plan.error and "\n" not in plan.error
    return plan


def takes_effect(state: st.State, w: Write) -> None:
    """The Write, appended as an event, applies cleanly to the state it was planned on."""
    outcome = st.apply(state, Event(2, next(_ts), next(_ts), "c", 1, w.type, w.data))
    assert outcome.ok, outcome


# Valid arguments of every op, with who sends them, and the ones it cannot do without.
VALID: dict[str, tuple[str | None, dict[str, Any], list[str]]] = {
    "create_user": (None, {"user": "newbie", "password": "pw"}, ["user", "password"]),
    "login": ("dave", {"user": "alice", "password": ALICE_PASSWORD, "addr": "10.0.0.4:7000"},
              ["user", "password", "addr"]),
    "logout": ("bob", {}, []),
    "ping": ("bob", {}, []),
    "create_group": ("bob", {"group": "g3"}, ["group"]),
    "join_group": ("bob", {"group": "g2"}, ["group"]),
    "leave_group": ("bob", {"group": "g1"}, ["group"]),
    "accept_request": ("alice", {"group": "g1", "user": "carol"}, ["group", "user"]),
    "reject_request": ("alice", {"group": "g1", "user": "carol"}, ["group", "user"]),
    "list_groups": ("bob", {}, []),
    "list_requests": ("alice", {"group": "g1"}, ["group"]),
    "list_files": ("bob", {"group": "g1"}, ["group"]),
    "share": ("bob", {"group": "g1", "name": "new.bin", "size": PIECE_SIZE + 1, "sha1": SHA_B,
                      "pieces": b"\x02" * 40, "have": b"\x80"},
              ["group", "name", "size", "sha1", "pieces"]),
    "have": ("alice", {"group": "g1", "name": "f.txt", "have": b"\x80"}, ["group", "name"]),
    "unshare": ("alice", {"group": "g1", "name": "f.txt"}, ["group", "name"]),
    "file_info": ("alice", {"group": "g1", "name": "f.txt"}, ["group", "name"]),
    "check_ticket": ("bob", {"group": "g1", "user": "alice",
                             "ticket": ticket_for(SID["alice"], "g1", "bob.lan:7000")},
                     ["group", "user", "ticket"]),
    "check_tickets": ("bob", {"tickets": [{"group": "g1", "user": "alice",
                                           "ticket": ticket_for(SID["alice"], "g1",
                                                                "bob.lan:7000")}]},
                      ["tickets"]),
}
READS = {"ping", "list_groups", "list_requests", "list_files", "file_info", "check_ticket",
         "check_tickets"}
NEEDS_SESSION = sorted(set(commands.HANDLERS) - {"create_user", "login"})


def test_the_table_covers_every_op() -> None:
    assert set(VALID) == set(commands.HANDLERS)


@pytest.mark.parametrize("op", sorted(VALID))
def test_every_op_succeeds_with_valid_arguments(op: str) -> None:
    s = world()
    who, args, _required = VALID[op]
    plan = call(s, op, who, **args)
    if op in READS:
        answer(plan)
    else:
        takes_effect(s, write(plan, op))


@pytest.mark.parametrize(
    ("op", "missing"),
    [(op, name) for op, (_w, _a, required) in sorted(VALID.items()) for name in required],
)
def test_a_missing_argument_is_refused_naming_it(op: str, missing: str) -> None:
    # `usage` is the REPL's code for a command typed wrong; a request reaching the
    # tracker without an argument is malformed, so the tracker says bad_request.
    who, args, _required = VALID[op]
    plan = call(world(), op, who, **{k: v for k, v in args.items() if k != missing})
    assert f"'{missing}'" in refused(plan, "bad_request").error


@pytest.mark.parametrize("op", NEEDS_SESSION)
@pytest.mark.parametrize("who", [None, "a-token-nobody-has", "dave"])
def test_ops_needing_a_session_refuse_without_one(op: str, who: str | None) -> None:
    s = world()
    before = st.digest(s)
    refused(call(s, op, who, **VALID[op][1]), "not_logged_in")
    assert st.digest(s) == before


def test_unknown_command() -> None:
    assert "frobnicate" in refused(call(world(), "frobnicate", "alice"), "unknown_command").error
    refused(call(world(), "status_of_things", None), "unknown_command")


# --- accounts --------------------------------------------------------------------------

def test_create_user_hashes_the_password_and_never_carries_it_in_clear() -> None:
    password = "hunter2-and-then-some"
    w = write(call(world(), "create_user", None, user="zoe", password=password), "create_user")
    assert w.data["user"] == "zoe"
    record = w.data["pw"]
    assert isinstance(record, bytes) and record.startswith(CTX.salt)
    for rendering in (repr(w), str(w.data), codec.encode(w.data).decode("latin-1")):
        assert password not in rendering
    assert password.encode() not in codec.encode([w.type, w.data])
    assert verify_password(password, record)
    assert not verify_password(password + "!", record)


def test_verify_password() -> None:
    assert verify_password(ALICE_PASSWORD, ALICE_RECORD)
    assert not verify_password("wrong", ALICE_RECORD)
    assert len(ALICE_RECORD) == SALT_BYTES + 32


def test_same_password_different_salt_gives_a_different_record() -> None:
    assert hash_password(ALICE_PASSWORD, b"B" * SALT_BYTES) != ALICE_RECORD


def test_create_user_errors() -> None:
    s = world()
    refused(call(s, "create_user", None, user="alice", password="x"), "user_exists")
    # the refusal never needed the password hashed
    with patch.object(commands, "hash_password", side_effect=AssertionError):
        refused(call(s, "create_user", None, user="bob", password="x"), "user_exists")


@pytest.mark.parametrize("user", ["", "a b", "../x", "x" * 65, 5, None, ["a"], "alice\n"])
def test_create_user_with_a_bad_id(user: Any) -> None:
    refused(call(world(), "create_user", None, user=user, password="x"), "bad_request")


@pytest.mark.parametrize("password", ["", "x" * (MAX_PASSWORD + 1), 1234, None, b"pw", ["pw"]])
def test_create_user_with_a_bad_password(password: Any) -> None:
    refused(call(world(), "create_user", None, user="zoe", password=password), "bad_request")


def test_login_from_a_fresh_client() -> None:
    s = world()
    args = VALID["login"][1]
    w = write(call(s, "login", "dave", **args), "login")
    assert w.data == {"user": "alice", "sid": SID["dave"], "cid": "cid-dave",
                      "addr": "10.0.0.4:7000"}
    assert TOKENS["dave"] not in repr(w)  # sessions are stored by a hash of the token
    assert ALICE_PASSWORD not in repr(w)


def test_login_errors() -> None:
    s = world()
    args = VALID["login"][1]
    refused(call(s, "login", "bob", **args), "already_logged_in")
    refused(call(s, "login", "dave", **{**args, "user": "zed"}), "no_such_user")
    refused(call(s, "login", "dave", **{**args, "password": "guess"}), "bad_credentials")
    refused(call(s, "login", None, **args), "bad_request")  # no session token


@pytest.mark.parametrize("addr", ["", "host", "host:", ":7000", "host:port", "a b:1",
                                  "host:123456", "host:0", "host:65536", "host:99999",
                                  7000, None, "host:1\n"])
def test_login_with_a_bad_peer_address(addr: Any) -> None:
    args = {**VALID["login"][1], "addr": addr}
    refused(call(world(), "login", "dave", **args), "bad_request")


@pytest.mark.parametrize("password", ["", 5, None])
def test_login_with_a_bad_password_type(password: Any) -> None:
    args = {**VALID["login"][1], "password": password}
    refused(call(world(), "login", "dave", **args), "bad_request")


def test_logout_and_ping() -> None:
    s = world()
    assert write(call(s, "logout", "bob"), "logout").data == {"sid": SID["bob"]}
    assert answer(call(s, "ping", "bob")) is None


# --- groups ----------------------------------------------------------------------------

def test_group_writes_carry_the_session_user() -> None:
    s = world()
    assert write(call(s, "create_group", "bob", group="g3"), "create_group").data == {
        "group": "g3", "user": "bob"}
    assert write(call(s, "join_group", "bob", group="g2"), "join_group").data == {
        "group": "g2", "user": "bob"}
    assert write(call(s, "leave_group", "alice", group="g1"), "leave_group").data == {
        "group": "g1", "user": "alice"}
    for op in ("accept_request", "reject_request"):
        assert write(call(s, op, "alice", group="g1", user="carol"), op).data == {
            "group": "g1", "user": "alice", "member": "carol"}


@pytest.mark.parametrize(
    ("op", "who", "args", "code"),
    [
        ("create_group", "bob", {"group": "g1"}, "group_exists"),
        ("join_group", "bob", {"group": "g9"}, "no_such_group"),
        ("join_group", "bob", {"group": "g1"}, "already_member"),
        ("join_group", "alice", {"group": "g1"}, "already_member"),
        ("join_group", "carol", {"group": "g1"}, "already_requested"),
        ("leave_group", "bob", {"group": "g9"}, "no_such_group"),
        ("leave_group", "bob", {"group": "g2"}, "not_member"),
        ("leave_group", "carol", {"group": "g1"}, "not_member"),
        ("accept_request", "alice", {"group": "g9", "user": "carol"}, "no_such_group"),
        ("accept_request", "bob", {"group": "g1", "user": "carol"}, "not_owner"),
        ("accept_request", "alice", {"group": "g1", "user": "dave"}, "no_such_request"),
        ("accept_request", "alice", {"group": "g1", "user": "bob"}, "no_such_request"),
        ("reject_request", "alice", {"group": "g9", "user": "carol"}, "no_such_group"),
        ("reject_request", "carol", {"group": "g1", "user": "carol"}, "not_owner"),
        ("reject_request", "carol", {"group": "g2", "user": "dave"}, "no_such_request"),
        ("list_requests", "alice", {"group": "g9"}, "no_such_group"),
        ("list_requests", "bob", {"group": "g1"}, "not_owner"),
        ("list_files", "bob", {"group": "g9"}, "no_such_group"),
        ("list_files", "carol", {"group": "g1"}, "not_member"),
        ("create_group", "bob", {"group": "no spaces"}, "bad_request"),
        ("create_group", "bob", {"group": ""}, "bad_request"),
        ("create_group", "bob", {"group": "g" * 65}, "bad_request"),
        ("create_group", "bob", {"group": 1}, "bad_request"),
        ("join_group", "bob", {"group": "../g1"}, "bad_request"),
        ("leave_group", "bob", {"group": None}, "bad_request"),
        ("accept_request", "alice", {"group": "g1", "user": "car ol"}, "bad_request"),
        ("reject_request", "alice", {"group": "g1", "user": 3}, "bad_request"),
        ("list_requests", "alice", {"group": "g/1"}, "bad_request"),
        ("list_files", "alice", {"group": ["g1"]}, "bad_request"),
    ],
)
def test_group_errors_change_nothing(op: str, who: str, args: dict[str, Any], code: str) -> None:
    s = world()
    before = st.digest(s)
    refused(call(s, op, who, **args), code)
    assert st.digest(s) == before


def test_list_groups() -> None:
    s = world()
    assert answer(call(s, "list_groups", "carol")) == [
        {"group": "g1", "owner": "alice", "members": 2},
        {"group": "g2", "owner": "carol", "members": 1},
    ]


def test_list_groups_needs_a_session_even_when_empty() -> None:
    refused(call(st.State(), "list_groups", None), "not_logged_in")


def test_list_requests() -> None:
    s = world()
    assert answer(call(s, "list_requests", "alice", group="g1")) == ["carol"]
    assert answer(call(s, "list_requests", "carol", group="g2")) == []


# --- files -----------------------------------------------------------------------------

def test_list_files_counts_online_seeders() -> None:
    s = world()
    files = answer(call(s, "list_files", "bob", group="g1"))
    assert files == [{"name": "f.txt", "size": 10, "sha1": SHA_A, "seeders": 1, "peers": 2}]
    assert answer(call(s, "list_files", "carol", group="g2")) == []


def test_share_a_new_file() -> None:
    s = world()
    who, args, _ = VALID["share"]
    w = write(call(s, "share", who, **args), "share")
    assert w.data == {"sid": SID["bob"], "group": "g1", "name": "new.bin",
                      "size": PIECE_SIZE + 1, "sha1": SHA_B, "pieces": b"\x02" * 40,
                      "have": b"\x80"}
    takes_effect(s, w)
    assert s.files["g1"]["new.bin"].holders == {SID["bob"]: b"\x80"}


def test_share_an_empty_file_and_join_an_existing_one() -> None:
    s = world()
    empty = call(s, "share", "bob", group="g1", name="empty", size=0, sha1=SHA_B, pieces=b"")
    assert write(empty, "share").data["have"] is None
    same = call(s, "share", "alice", group="g1", name="f.txt", size=10, sha1=SHA_A,
                pieces=PIECES)
    takes_effect(s, write(same, "share"))
    assert s.files["g1"]["f.txt"].holders[SID["alice"]] is None


SHARE = {"group": "g1", "name": "n.bin", "size": 10, "sha1": SHA_B, "pieces": PIECES}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"group": "g9"}, "no_such_group"),
        ({"group": "g2"}, "not_member"),
        ({"name": "f.txt"}, "file_exists"),  # same name, another sha1
        ({"name": "f.txt", "sha1": SHA_A, "size": 11}, "file_exists"),
        *[({"name": bad}, "bad_request") for bad in
          ["../x", "a/b", "..", ".", "", "a\\b", "a\0b", "x" * 256, "/abs", 5, None]],
        *[({"sha1": bad}, "bad_request") for bad in
          ["A" * 40, "a" * 39, "a" * 41, "g" * 40, "a" * 40 + "\n", b"a" * 20, None]],
        *[({"size": bad}, "bad_request") for bad in [-1, True, "10", 1.5, 2**62, None]],
        *[({"pieces": bad}, "bad_request") for bad in [b"", PIECES * 2, PIECES[:-1],
                                                        "x" * 20, [PIECES], None]],
        ({"size": 0}, "bad_request"),  # 0 pieces, but one digest given
        *[({"have": bad}, "bad_request") for bad in [b"", b"\x00\x00", "\x80", 1, [1]]],
    ],
)
def test_share_errors(change: dict[str, Any], code: str) -> None:
    s = world()
    refused(call(s, "share", "bob", **{**SHARE, **change}), code)


def test_have_updates_a_held_or_new_holder() -> None:
    s = world()
    w = write(call(s, "have", "alice", group="g1", name="f.txt", have=b"\x80"), "have")
    assert w.data == {"sid": SID["alice"], "group": "g1", "name": "f.txt", "size": 10,
                      "sha1": SHA_A, "pieces": PIECES, "have": b"\x80"}
    takes_effect(s, w)
    assert s.files["g1"]["f.txt"].holders[SID["alice"]] == b"\x80"
    done = write(call(s, "have", "alice", group="g1", name="f.txt"), "have")
    assert done.data["have"] is None  # complete: a seeder now


@pytest.mark.parametrize(
    ("who", "args", "code"),
    [
        ("alice", {"group": "g1", "name": "nope"}, "no_such_file"),
        ("alice", {"group": "g9", "name": "f.txt"}, "no_such_group"),
        ("carol", {"group": "g1", "name": "f.txt"}, "not_member"),
        ("alice", {"group": "g1", "name": "../f.txt"}, "bad_request"),
        ("alice", {"group": "g1", "name": "f.txt", "have": b"\x00\x00"}, "bad_request"),
        ("alice", {"group": "g1", "name": "f.txt", "have": "x"}, "bad_request"),
    ],
)
def test_have_errors(who: str, args: dict[str, Any], code: str) -> None:
    refused(call(world(), "have", who, **args), code)


def test_unshare() -> None:
    s = world()
    w = write(call(s, "unshare", "bob", group="g1", name="f.txt"), "unshare")
    assert w.data == {"sid": SID["bob"], "group": "g1", "name": "f.txt"}
    takes_effect(s, w)
    refused(call(s, "unshare", "bob", group="g1", name="f.txt"), "not_shared")


@pytest.mark.parametrize(
    ("who", "args", "code"),
    [
        ("bob", {"group": "g1", "name": "nope"}, "not_shared"),
        ("carol", {"group": "g2", "name": "f.txt"}, "not_shared"),
        ("bob", {"group": "g9", "name": "f.txt"}, "no_such_group"),
        ("carol", {"group": "g1", "name": "f.txt"}, "not_member"),
        ("bob", {"group": "g1", "name": "a/f.txt"}, "bad_request"),
        ("bob", {"group": "g1", "name": ".."}, "bad_request"),
    ],
)
def test_unshare_errors(who: str, args: dict[str, Any], code: str) -> None:
    refused(call(world(), "unshare", who, **args), code)


def test_file_info_lists_other_holders_each_with_a_ticket_for_it() -> None:
    s = world()
    info = answer(call(s, "file_info", "alice", group="g1", name="f.txt"))
    assert info == {"group": "g1", "name": "f.txt", "size": 10, "sha1": SHA_A,
                    "pieces": PIECES, "peers": [{"user": "bob", "addr": "bob.lan:7000",
                                                 "have": None,
                                                 "ticket": ticket_for(SID["alice"], "g1",
                                                                      "bob.lan:7000")}]}
    codec.encode(info)  # it goes on the wire as is
    bobs = answer(call(s, "file_info", "bob", group="g1", name="f.txt"))
    assert bobs["peers"] == [{"user": "alice", "addr": "alice.lan:7000", "have": b"\x00",
                              "ticket": ticket_for(SID["bob"], "g1", "alice.lan:7000")}]
    assert bobs["peers"][0]["ticket"] != info["peers"][0]["ticket"]


@pytest.mark.parametrize(
    ("who", "args", "code"),
    [
        ("alice", {"group": "g1", "name": "nope"}, "no_such_file"),
        ("alice", {"group": "g9", "name": "f.txt"}, "no_such_group"),
        ("carol", {"group": "g1", "name": "f.txt"}, "not_member"),
        ("alice", {"group": "g1", "name": "../../etc/passwd"}, "bad_request"),
        ("alice", {"group": "g1"}, "bad_request"),
    ],
)
def test_file_info_errors(who: str, args: dict[str, Any], code: str) -> None:
    refused(call(world(), "file_info", who, **args), code)


def test_check_ticket() -> None:
    s = world()
    at_bob = "bob.lan:7000"  # bob is the serving peer asking
    good = ticket_for(SID["alice"], "g1", at_bob)
    assert answer(call(s, "check_ticket", "bob", group="g1", user="alice", ticket=good)) is None
    for args in (
        {"group": "g1", "user": "bob", "ticket": good},  # someone else's ticket
        {"group": "g1", "user": "alice", "ticket": ticket_for(SID["alice"], "g2", at_bob)},
        {"group": "g1", "user": "alice", "ticket": ticket_for(SID["alice"], "g1",
                                                               "carol.lan:7000")},  # other peer
        {"group": "g1", "user": "alice", "ticket": "0" * 64},
        {"group": "g1", "user": "alice", "ticket": ""},
        {"group": "g9", "user": "alice", "ticket": good},
        {"group": "g1", "user": "carol",  # no member
         "ticket": ticket_for(SID["carol"], "g1", at_bob)},
        {"group": "g1", "user": "dave",  # no session
         "ticket": ticket_for(SID["dave"], "g1", at_bob)},
    ):
        refused(call(s, "check_ticket", "bob", **args), "bad_ticket")
    refused(call(s, "check_ticket", "bob", group="g1", user="alice", ticket=5), "bad_request")
    refused(call(s, "check_ticket", "bob", group="g1", user="a b", ticket=good), "bad_request")


def test_check_tickets_answers_each_ticket_as_check_ticket_does() -> None:
    s = world()
    at_bob = "bob.lan:7000"
    good = ticket_for(SID["alice"], "g1", at_bob)
    asked = [
        {"group": "g1", "user": "alice", "ticket": good},
        {"group": "g1", "user": "bob", "ticket": good},  # someone else's ticket
        {"group": "g1", "user": "alice", "ticket": ticket_for(SID["alice"], "g1",
                                                               "carol.lan:7000")},  # other peer
        {"group": "g9", "user": "alice", "ticket": good},
        {"group": "g1", "user": "alice", "ticket": good},  # asked twice: same answer
    ]
    verdicts = answer(call(s, "check_tickets", "bob", tickets=asked))
    assert verdicts == [True, False, False, False, True]
    for entry, verdict in zip(asked, verdicts, strict=True):
        single = call(s, "check_ticket", "bob", **entry)
        assert isinstance(single, Reply) and single.ok == verdict


@pytest.mark.parametrize("tickets", [
    [],
    [{"group": "g1", "user": "alice", "ticket": "x"}] * (MAX_TICKETS_PER_CHECK + 1),
    "alice",
    [["g1", "alice", "x"]],
    [{"group": "g1", "user": "alice", "ticket": 5}],
    [{"group": "g1", "user": "a b", "ticket": "x"}],
    [{"group": "g1", "ticket": "x"}],
])
def test_check_tickets_refuses_a_malformed_list_whole(tickets: Any) -> None:
    refused(call(world(), "check_tickets", "bob", tickets=tickets), "bad_request")


def test_check_tickets_takes_a_full_call() -> None:
    asked = [{"group": "g1", "user": "alice", "ticket": "x"}] * MAX_TICKETS_PER_CHECK
    assert answer(call(world(), "check_tickets", "bob", tickets=asked)) == (
        [False] * MAX_TICKETS_PER_CHECK)


def _peer_tickets(info: dict[str, Any]) -> dict[str, str]:
    """addr -> the ticket file_info gave for the peer at that address."""
    return {peer["addr"]: peer["ticket"] for peer in info["peers"]}


def test_a_ticket_is_good_only_at_the_peer_it_was_issued_for() -> None:
    s = world()
    given_(s, "accept_request", group="g1", user="alice", member="carol")
    given_(s, "share", sid=SID["carol"], group="g1", name="f.txt", size=10, sha1=SHA_A,
           pieces=PIECES, have=None)
    tickets = _peer_tickets(answer(call(s, "file_info", "alice", group="g1", name="f.txt")))
    at_bob, at_carol = tickets["bob.lan:7000"], tickets["carol.lan:7000"]
    # Each serving peer (asking with its own session) accepts the ticket issued for it...
    for peer, ticket in (("bob", at_bob), ("carol", at_carol)):
        assert answer(call(s, "check_ticket", peer, group="g1", user="alice",
                           ticket=ticket)) is None
    # ...and not the one alice showed the other peer: a peer cannot pose as her elsewhere.
    for peer, ticket in (("bob", at_carol), ("carol", at_bob)):
        refused(call(s, "check_ticket", peer, group="g1", user="alice", ticket=ticket),
                "bad_ticket")


def test_a_harvested_ticket_is_refused_after_its_holder_leaves() -> None:
    """The reported attack: carol, who served bob a bait file and kept the ticket his
    Hello carried, leaves the group and offers that ticket as bob's to alice's peer."""
    s = world()
    given_(s, "accept_request", group="g1", user="alice", member="carol")
    given_(s, "share", sid=SID["carol"], group="g1", name="bait", size=10, sha1=SHA_B,
           pieces=PIECES, have=None)
    harvested = _peer_tickets(answer(call(s, "file_info", "bob", group="g1",
                                          name="bait")))["carol.lan:7000"]
    takes_effect(s, write(call(s, "leave_group", "carol", group="g1"), "leave_group"))
    refused(call(s, "check_ticket", "alice", group="g1", user="bob", ticket=harvested),
            "bad_ticket")
    # Control: the ticket bob is given for alice (he is still a member, logged in) is
    # good at alice.
    for_alice = _peer_tickets(answer(call(s, "file_info", "bob", group="g1",
                                          name="f.txt")))["alice.lan:7000"]
    assert answer(call(s, "check_ticket", "alice", group="g1", user="bob",
                       ticket=for_alice)) is None


@pytest.mark.parametrize("op", ["logout", "leave_group"])
def test_a_ticket_dies_with_the_session_or_the_membership(op: str) -> None:
    s = world()
    good = ticket_for(SID["alice"], "g1", "bob.lan:7000")
    takes_effect(s, write(call(s, op, "alice", group="g1"), op))
    refused(call(s, "check_ticket", "bob", group="g1", user="alice", ticket=good), "bad_ticket")


# --- nothing a client sends makes plan raise ---------------------------------------------

junk = hst.one_of(
    hst.none(), hst.booleans(), hst.integers(-(2**64), 2**64), hst.floats(),
    hst.text(max_size=70), hst.binary(max_size=45),
    hst.sampled_from(["g1", "g2", "alice", "bob", "f.txt", SHA_A, "h:1", ALICE_PASSWORD]),
    hst.lists(hst.integers(), max_size=2), hst.dictionaries(hst.text(max_size=3), hst.none()),
)
ARG_NAMES = ["user", "password", "addr", "group", "name", "size", "sha1", "pieces", "have",
             "ticket"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    op=hst.sampled_from(sorted(commands.HANDLERS)),
    who=hst.sampled_from([None, "alice", "bob", "carol", "dave", "x"]),
    args=hst.dictionaries(hst.sampled_from(ARG_NAMES), junk, max_size=6),
)
def test_plan_never_raises(op: str, who: str | None, args: dict[str, Any]) -> None:
    s = world()
    before = st.digest(s)
    with patch.object(commands, "hash_password", lambda pw, salt: salt + b"h" * 32), \
            patch.object(commands, "verify_password", lambda pw, rec: pw == ALICE_PASSWORD):
        plan = call(s, op, who, **args)
    assert st.digest(s) == before  # planning never changes the state
    if isinstance(plan, Write):
        takes_effect(s, plan)
    else:
        assert plan.rid == RID
        assert plan.ok or plan.code


# --- a retry planned again by a tracker that lacks the first attempt's event ------------

def _fake_hash(password: str, salt: bytes) -> bytes:
    """A stand-in for scrypt with the same shape (salt, then digest): fast enough for
    hypothesis, and different for different salts as the real record is."""
    return salt + hashlib.sha256(salt + password.encode()).digest()


TWIN_USERS = ("u0", "u1", "u2", "u3", "u4")
TWIN_TOKENS = {user: f"twin-token-{user}" for user in TWIN_USERS}
TWIN_GROUPS = ("g0", "g1", "g2")  # g2 does not exist at first
TWIN_SHARE = {"size": 10, "sha1": SHA_A, "pieces": PIECES}


def _twin_world() -> list[Event]:
    """u0, u1, u2 logged in (u3, u4 not even users); u0 owns g0 with member u1, u2
    asked to join g0; u1 owns g1 and shares a in it."""
    log: list[Event] = []

    def given(etype: str, **data: Any) -> None:
        log.append(Event(3, len(log) + 1, len(log) + 1, "", 0, etype, data))

    for user in TWIN_USERS[:3]:
        given("create_user", user=user, pw=_fake_hash(f"pw-{user}", b"0" * SALT_BYTES))
        given("login", user=user, sid=session_id(TWIN_TOKENS[user]), cid=f"cid-{user}",
              addr=f"{user}.lan:1")
    given("create_group", group="g0", user="u0")
    given("join_group", group="g0", user="u1")
    given("accept_request", group="g0", user="u0", member="u1")
    given("join_group", group="g0", user="u2")
    given("create_group", group="g1", user="u1")
    given("share", sid=session_id(TWIN_TOKENS["u1"]), group="g1", name="a", have=None,
          **TWIN_SHARE)
    return log


twin_request = hst.one_of(
    hst.tuples(hst.just("create_user"), hst.sampled_from(TWIN_USERS), hst.just({})),
    hst.tuples(hst.just("login"), hst.sampled_from(TWIN_USERS), hst.just({})),
    hst.tuples(hst.just("logout"), hst.sampled_from(TWIN_USERS), hst.just({})),
    *(hst.tuples(hst.just(op), hst.sampled_from(TWIN_USERS),
                 hst.fixed_dictionaries({"group": hst.sampled_from(TWIN_GROUPS)}))
      for op in ("create_group", "join_group", "leave_group")),
    *(hst.tuples(hst.just(op), hst.sampled_from(TWIN_USERS),
                 hst.fixed_dictionaries({"group": hst.sampled_from(TWIN_GROUPS),
                                         "user": hst.sampled_from(TWIN_USERS)}))
      for op in ("accept_request", "reject_request")),
    *(hst.tuples(hst.just(op), hst.sampled_from(TWIN_USERS),
                 hst.fixed_dictionaries({"group": hst.sampled_from(TWIN_GROUPS),
                                         "name": hst.sampled_from(["a", "b"])}))
      for op in ("share", "unshare")),
)


def _twin_args(op: str, user: str, args: dict[str, Any]) -> dict[str, Any]:
    if op in ("create_user", "login"):
        args = {"user": user, "password": f"pw-{user}", "addr": f"{user}.lan:1"}
    return args | TWIN_SHARE if op == "share" else args


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=hst.lists(hst.tuples(twin_request, hst.booleans(), hst.booleans()),
                       min_size=3, max_size=30))
@example(steps=[  # every kind of write, each retried, tracker 2's event sorting either way
    (("create_user", "u3", {}), True, False), (("login", "u3", {}), True, True),
    (("join_group", "u3", {"group": "g0"}), True, False),
    (("accept_request", "u0", {"group": "g0", "user": "u3"}), True, True),
    (("reject_request", "u0", {"group": "g0", "user": "u2"}), True, False),
    (("share", "u3", {"group": "g0", "name": "b"}), True, True),
    (("unshare", "u3", {"group": "g0", "name": "b"}), True, False),
    (("create_group", "u3", {"group": "g2"}), True, True),
    (("leave_group", "u0", {"group": "g0"}), True, False),  # u1 takes g0 over
    (("leave_group", "u1", {"group": "g1"}), True, True),  # g1 is left empty: it goes
    (("logout", "u1", {}), True, False),
])
def test_a_retry_planned_at_a_tracker_lacking_the_first_event_takes_effect_once(
        steps: list[tuple[tuple[str, str, dict[str, Any]], bool, bool]]) -> None:
    """Tracker 1 makes an event of a request and its answer is lost; the client retries
    at tracker 2, which has not got that event and plans the request again (with its
    own salt).  Tracker 2 must accept it as tracker 1 did (the user is told ok, not
    ``user_exists``/``already_member``...), and the log holding both events, in either
    order, must fold to the state of the log holding only the first of them."""
    every = _twin_world()
    firsts = list(every)
    state = st.fold(every)
    for rid, ((op, user, args), retried, twin_sorts_first) in enumerate(steps, start=1):
        req = Request(op, f"cid-{user}", rid, _twin_args(op, user, args), TWIN_TOKENS[user])
        first = commands.plan(state, req, Context(b"1" * SALT_BYTES, _fake_hash))
        if not isinstance(first, Write):
            continue
        made = [Event(1, rid, 100 + 10 * rid, req.cid, rid, first.type, first.data)]
        if retried:
            again = commands.plan(state, req, Context(b"2" * SALT_BYTES, _fake_hash))
            assert isinstance(again, Write), (req, again)  # the user is told ok
            assert again.type == first.type
            assert {k: v for k, v in again.data.items() if k != "pw"} == \
                {k: v for k, v in first.data.items() if k != "pw"}
            # tracker 2's clock may be ahead or behind: its event sorts next to the first
            twin_ts = 100 + 10 * rid + (-1 if twin_sorts_first else 1)
            made.append(Event(2, rid, twin_ts, req.cid, rid, again.type, again.data))
        made.sort(key=lambda e: e.key)
        outcomes = [st.apply(state, event) for event in made]
        assert outcomes[0].ok and len(set(outcomes)) == 1, outcomes
        every += made
        firsts.append(made[0])
    assert st.digest(st.fold(every)) == st.digest(st.fold(firsts)) == st.digest(state)
