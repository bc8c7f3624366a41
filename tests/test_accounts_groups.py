"""Accounts and groups end to end: one real tracker, clients driven through stdin with --json.

Every rule and error code of the account and group commands, the owner hand-over, the
tracker SIGKILLed and restarted, logout on exit / end of input, and where passwords go.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.procs import ClientProc, Cluster, cluster, free_port, run_module, tracker_events

pytestmark = pytest.mark.timeout(60)


def logged_in(c: Cluster, user: str, password: str = "pw") -> ClientProc:
    """A fresh client with a new account, logged in."""
    client = c.client(user)
    assert client.ok(f"create_user {user} {password}") is None
    client.ok(f"login {user} {password}")
    return client


def groups(client: ClientProc) -> dict[str, tuple[str, int]]:
    """list_groups as {group: (owner, members)}."""
    return {g["group"]: (g["owner"], g["members"]) for g in client.ok("list_groups")}


def tracker_state(c: Cluster) -> tuple[str, int]:
    """(state digest, number of events) of tracker 1: equal iff nothing changed."""
    status = c.tracker(1).answered_status()
    return status["digest"], status["events"]


# --- the whole life cycle --------------------------------------------------------------

def test_account_and_group_life_cycle_with_two_owners(one_tracker: Cluster) -> None:
    c = one_tracker
    alice, bob, carol, dave = (logged_in(c, u) for u in ("alice", "bob", "carol", "dave"))

    # Accounts.
    assert "alice" in bob.fails("create_user alice other", "user_exists")
    eve = c.client("eve")
    eve.fails("login nobody pw", "no_such_user")
    eve.fails("login alice wrong", "bad_credentials")
    eve.fails("list_groups", "not_logged_in")
    eve.ok("login alice pw")  # a user may be logged in from two clients
    eve.fails("login alice pw", "already_logged_in")
    eve.ok("logout")
    eve.fails("logout", "not_logged_in")

    # Two groups, two owners.
    assert alice.ok("create_group g1") is None
    assert bob.ok("create_group g2") is None
    carol.fails("create_group g1", "group_exists")
    assert alice.ok("list_groups") == [
        {"group": "g1", "owner": "alice", "members": 1},
        {"group": "g2", "owner": "bob", "members": 1},
    ]
    assert groups(dave) == groups(alice)  # every group is visible to everyone logged in

    # Join requests.
    assert alice.ok("list_requests g1") == []
    bob.ok("join_group g1")
    carol.ok("join_group g1")
    dave.ok("join_group g1")
    bob.fails("join_group g1", "already_requested")
    alice.fails("join_group g1", "already_member")
    carol.fails("join_group g9", "no_such_group")
    assert alice.ok("list_requests g1") == ["bob", "carol", "dave"]
    assert bob.ok("list_requests g2") == []

    # Only the owner answers requests; a requester is not a member yet.
    bob.fails("accept_request g1 carol", "not_owner")
    carol.fails("list_requests g1", "not_owner")
    alice.fails("accept_request g2 carol", "not_owner")
    bob.fails("leave_group g1", "not_member")
    alice.fails("accept_request g9 carol", "no_such_group")
    alice.fails("list_requests g9", "no_such_group")

    # Accept and reject.
    assert alice.ok("accept_request g1 bob") is None
    assert alice.ok("reject_request g1 dave") is None
    alice.fails("accept_request g1 bob", "no_such_request")  # already a member
    alice.fails("reject_request g1 dave", "no_such_request")  # already rejected
    alice.fails("accept_request g1 nobody", "no_such_request")
    assert alice.ok("list_requests g1") == ["carol"]
    assert groups(carol)["g1"] == ("alice", 2)

    # A member who is not the owner still cannot answer requests.
    bob.fails("accept_request g1 carol", "not_owner")
    bob.fails("reject_request g1 carol", "not_owner")
    bob.fails("list_requests g1", "not_owner")
    bob.fails("join_group g1", "already_member")

    # A rejected user may ask again; the other owner manages their own group.
    dave.ok("join_group g1")
    dave.ok("join_group g2")
    assert bob.ok("list_requests g2") == ["dave"]
    bob.ok("accept_request g2 dave")
    alice.ok("accept_request g1 carol")
    alice.ok("accept_request g1 dave")
    assert groups(alice) == {"g1": ("alice", 4), "g2": ("bob", 2)}

    # Members leave; the owner leaves and hands g1 to the longest-standing member (bob).
    carol.ok("leave_group g1")
    carol.fails("leave_group g1", "not_member")
    alice.ok("leave_group g1")
    assert groups(dave) == {"g1": ("bob", 2), "g2": ("bob", 2)}
    alice.fails("list_requests g1", "not_owner")
    assert bob.ok("list_requests g1") == []

    # A group left empty is deleted, and its name is free again.
    bob.ok("leave_group g1")
    dave.ok("leave_group g1")
    assert groups(alice) == {"g2": ("bob", 2)}
    carol.fails("join_group g1", "no_such_group")
    carol.ok("create_group g1")
    assert groups(alice)["g1"] == ("carol", 1)

    for client in (alice, bob, carol, dave, eve):
        assert client.close() == 0


def test_owner_hands_over_to_longest_standing_member(one_tracker: Cluster) -> None:
    c = one_tracker
    alice, bob, carol, dave = (logged_in(c, u) for u in ("alice", "bob", "carol", "dave"))
    alice.ok("create_group g")
    bob.ok("join_group g")
    carol.ok("join_group g")
    dave.ok("join_group g")
    # Carol is accepted before Bob: membership, not the request, is what counts.
    alice.ok("accept_request g carol")
    alice.ok("accept_request g bob")

    alice.ok("leave_group g")
    assert groups(bob)["g"] == ("carol", 2)
    # Pending requests go with the group to its new owner.
    assert carol.ok("list_requests g") == ["dave"]
    bob.fails("accept_request g dave", "not_owner")
    carol.ok("accept_request g dave")

    carol.ok("leave_group g")
    assert groups(alice)["g"] == ("bob", 2)
    bob.ok("leave_group g")
    assert groups(alice)["g"] == ("dave", 1)

    # The last member (an owner with a request pending) leaves: the group goes, and so
    # does the request.
    alice.ok("join_group g")
    dave.ok("leave_group g")
    assert "g" not in groups(alice)
    alice.fails("join_group g", "no_such_group")
    dave.fails("list_requests g", "no_such_group")


# --- rules every command keeps ---------------------------------------------------------

def test_failed_commands_change_nothing(one_tracker: Cluster) -> None:
    c = one_tracker
    alice, bob = logged_in(c, "alice"), logged_in(c, "bob")
    carol = logged_in(c, "carol")
    alice.ok("create_group g1")
    bob.ok("join_group g1")
    carol.ok("create_group g2")

    before_groups = alice.ok("list_groups")
    before_requests = alice.ok("list_requests g1")
    before = tracker_state(c)
    failures = [
        (bob, "accept_request g1 bob", "not_owner"),
        (bob, "reject_request g1 bob", "not_owner"),
        (carol, "accept_request g1 bob", "not_owner"),
        (alice, "accept_request g1 carol", "no_such_request"),
        (alice, "reject_request g1 carol", "no_such_request"),
        (alice, "accept_request g2 bob", "not_owner"),
        (alice, "accept_request nope bob", "no_such_group"),
        (bob, "join_group g1", "already_requested"),
        (alice, "join_group g1", "already_member"),
        (bob, "leave_group g1", "not_member"),
        (bob, "leave_group nope", "no_such_group"),
        (alice, "create_group g2", "group_exists"),
        (alice, "create_user bob pw2", "user_exists"),
        (alice, "login bob pw", "already_logged_in"),
        (alice, "create_group bad/name", "bad_request"),
        (alice, "create_user bad/name pw", "bad_request"),
        (alice, "accept_request g1", "usage"),
        (alice, "leave_group g1 extra", "usage"),
        (alice, "frobnicate g1", "unknown_command"),
    ]
    for client, line, code in failures:
        error = client.fails(line, code)
        assert error and "\n" not in error, f"{line!r}: error must be one line, got {error!r}"
    assert tracker_state(c) == before
    assert alice.ok("list_groups") == before_groups
    assert alice.ok("list_requests g1") == before_requests

    # A failed login leaves the client logged out, and a failed create_user adds nobody.
    dave = c.client("dave")
    dave.fails("login bob wrong", "bad_credentials")
    dave.fails("list_groups", "not_logged_in")
    dave.fails("create_user dave " + "x" * 2000, "bad_request")
    dave.fails("login dave x", "no_such_user")
    assert tracker_state(c) == before


def test_local_usage_help_and_session_errors(one_tracker: Cluster) -> None:
    client = one_tracker.client()
    usage = {
        "create_user": "create_user alice",
        "login": "login alice pw extra",
        "logout": "logout now",
        "create_group": "create_group",
        "join_group": "join_group a b",
        "leave_group": "leave_group",
        "list_requests": "list_requests",
        "accept_request": "accept_request g1",
        "reject_request": "reject_request g1 a b",
        "list_groups": "list_groups all",
        "help": "help a b",
        "exit": "exit now",
    }
    for name, line in usage.items():
        error = client.fails(line, "usage")
        assert error.startswith(f"usage: {name}"), f"{line!r} -> {error!r}"
    # The usage line names the arguments.
    assert client.fails("accept_request g1", "usage") == (
        "usage: accept_request <group_id> <user_id>")

    client.fails("frobnicate", "unknown_command")
    client.fails("help frobnicate", "unknown_command")

    # Commands that need a session say so before anything reaches the tracker.
    for line in ("logout", "create_group g", "join_group g", "leave_group g",
                 "list_requests g", "accept_request g u", "reject_request g u", "list_groups"):
        client.fails(line, "not_logged_in")

    listing = client.ok("help")
    assert set(listing["commands"]) >= {
        "create_user", "login", "logout", "create_group", "join_group", "leave_group",
        "list_requests", "accept_request", "reject_request", "list_groups", "help", "exit"}
    assert client.ok("help login")["usage"] == "login <user_id> <password>"
    assert client.ok("help exit")["usage"] == "exit"
    client.ok("create_user alice pw")
    client.ok("login alice pw")
    client.fails("login alice pw", "already_logged_in")
    client.fails("login bob pw", "already_logged_in")
    assert client.close() == 0


def test_json_from_a_pipe_one_line_per_command_in_order(one_tracker: Cluster,
                                                       tmp_path: Path) -> None:
    script = "\n".join([
        "create_user alice pw",
        "",
        "   ",
        "login alice pw",
        "create_group g1",
        "join_group g1",
        "list_groups",
        "bogus",
        "help list_groups",
        "exit",
        "create_group never_run",
    ]) + "\n"
    done = run_module("peers", f"127.0.0.1:{free_port()}", str(one_tracker.info),
                      "--data-dir", str(tmp_path / "c"), "--json", input=script)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(x["command"], x["ok"]) for x in lines] == [
        ("create_user", True), ("login", True), ("create_group", True),
        ("join_group", False), ("list_groups", True), ("bogus", False),
        ("help", True), ("exit", True),
    ]
    assert lines[3]["code"] == "already_member"
    assert lines[4]["result"] == [{"group": "g1", "owner": "alice", "members": 1}]
    assert lines[5]["code"] == "unknown_command"
    assert lines[6]["result"]["usage"] == "list_groups"
    assert "p2p>" not in done.stdout  # no prompt when stdin is not a terminal
    # The commands after exit never ran; exit logged alice out.
    status = one_tracker.tracker(1).answered_status()
    assert status["groups"] == 1 and status["sessions"] == 0


# --- sessions end with the client -------------------------------------------------------


def test_exit_and_end_of_input_log_out(one_tracker: Cluster) -> None:
    c = one_tracker
    alice, bob = logged_in(c, "alice"), logged_in(c, "bob")
    assert c.sessions() == 2

    # A failed exit is a failed command: it changes nothing, the client carries on.
    alice.fails("exit now", "usage")
    assert alice.ok("list_groups") == []
    assert alice.proc.poll() is None and c.sessions() == 2

    assert alice.ok("exit") is None
    assert alice.proc.wait(15) == 0
    assert c.sessions() == 1  # the logout was acknowledged before exit answered

    assert bob.close() == 0  # end of input
    assert c.sessions() == 0

    # Both can log in again from fresh clients, and only those sessions exist.
    again = c.client("alice-again")
    again.ok("login alice pw")
    other = c.client("bob-again")
    other.ok("login bob pw")
    assert c.sessions() == 2
    assert again.ok("list_groups") == []
    again.ok("logout")
    assert c.sessions() == 1
    again.fails("list_groups", "not_logged_in")


# --- durability ------------------------------------------------------------------------

def test_sigkilled_tracker_restarts_with_everything(one_tracker: Cluster) -> None:
    c = one_tracker
    alice, bob, carol = logged_in(c, "alice"), logged_in(c, "bob"), logged_in(c, "carol")
    alice.ok("create_group g1")
    bob.ok("create_group g2")
    bob.ok("join_group g1")
    alice.ok("accept_request g1 bob")
    carol.ok("join_group g1")  # stays pending
    carol.ok("join_group g2")
    bob.ok("reject_request g2 carol")
    logged_out = logged_in(c, "dave", "dave-pw")
    logged_out.ok("logout")
    before = tracker_state(c)
    groups_before = alice.ok("list_groups")

    c.tracker(1).kill()
    c.tracker(1).start()
    assert tracker_state(c) == before

    # The clients carry on with their sessions; every user, group, membership and
    # pending request is there.
    assert alice.ok("list_groups") == groups_before
    assert alice.ok("list_requests g1") == ["carol"]
    assert bob.ok("list_requests g2") == []
    bob.fails("join_group g1", "already_member")
    carol.fails("join_group g1", "already_requested")
    fresh = c.client("dave-again")
    fresh.fails("login dave pw", "bad_credentials")
    fresh.ok("login dave dave-pw")
    fresh.fails("create_user alice x", "user_exists")

    # And it keeps working: a write after the restart survives the next SIGKILL too.
    alice.ok("accept_request g1 carol")
    bob.ok("leave_group g1")
    after = tracker_state(c)
    c.tracker(1).kill()
    c.tracker(1).start()
    assert tracker_state(c) == after
    assert groups(carol) == {"g1": ("alice", 2), "g2": ("bob", 1)}
    carol.fails("join_group g1", "already_member")


def test_passwords_only_as_salted_hashes_never_in_logs(tmp_path: Path) -> None:
    secret = "Tr0ub4dor-7f3e9c1a"
    wrong = "Wr0ng-b8d2e6f4"
    other = "An0ther-5c1d9e2b"
    with cluster(tmp_path, trackers=1, tracker_args=["-v"]) as c:
        alice = c.client("alice")
        alice.ok(f"create_user alice {secret}")
        alice.ok(f"create_user bob {secret}")  # same password, different salt
        alice.ok(f"create_user carol {other}")
        alice.fails(f"login alice {wrong}", "bad_credentials")
        alice.fails(f"login nobody {wrong}", "no_such_user")
        alice.ok(f"login alice {secret}")
        alice.fails(f"create_user alice {wrong}", "user_exists")
        alice.ok("create_group g1")
        alice.ok("logout")
        data_dir = c.tracker(1).data_dir

        records = {e.data["user"]: e.data["pw"] for e in tracker_events(data_dir)
                   if e.type == "create_user"}
        assert set(records) == {"alice", "bob", "carol"}
        assert records["alice"] != records["bob"]  # salted
        from trackers.passwords import verify_password
        assert verify_password(secret, records["alice"])
        assert verify_password(secret, records["bob"])
        assert not verify_password(wrong, records["alice"])

        files = [p for p in data_dir.rglob("*") if p.is_file()]
        assert any(p.name.endswith("-wal") for p in files), files
        stored = b"".join(p.read_bytes() for p in files)
        logs = c.tracker(1).log_path.read_bytes()
        c.tracker(1).kill()
        stored += b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
        client_log = alice.log_path.read_bytes()
        for password in (secret, wrong, other):
            for where, blob in (("data dir", stored), ("tracker log", logs),
                                ("client stderr", client_log)):
                assert password.encode() not in blob, f"{password} found in the {where}"
                assert password.encode("utf-16-le") not in blob


def test_users_and_groups_survive_a_clean_stop(one_tracker: Cluster) -> None:
    c = one_tracker
    alice = logged_in(c, "alice")
    alice.ok("create_group g1")
    before = tracker_state(c)
    tracker = c.tracker(1)
    tracker.stop()
    assert tracker.proc is not None and tracker.proc.returncode == 0
    tracker.start()
    assert tracker_state(c) == before
    assert groups(alice) == {"g1": ("alice", 1)}


def test_nothing_typed_crashes_the_client(one_tracker: Cluster, tmp_path: Path) -> None:
    lines = [
        b"create_user \xff\xfe pw",  # not UTF-8
        b"\xc3\x28 list_groups",
        b"create_user a\x00b pw",
        b"create_user \xc3\xa5lice pw",  # UTF-8, but not a valid id
        b"create_user " + b"u" * 65 + b" pw",
        b"create_user " + b"x" * 200_000 + b" pw",
        b"\x1b[A\x1b[B\x07\x08",
        b"\tcreate_user   tabbed \t pw\t",
        b"login tabbed pw",
        b"create_group " + b"\xe2\x80\x8b",  # a lone zero-width space
        b"list_groups",
    ]
    done = run_module("peers", f"127.0.0.1:{free_port()}", str(one_tracker.info),
                      "--data-dir", str(tmp_path / "c"), "--json",
                      input=b"\n".join(lines) + b"\n", timeout=40)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == len(lines), answers
    assert [a["ok"] for a in answers] == [False] * 7 + [True, True, False, True], answers
    assert answers[0]["code"] == answers[1]["code"] == "bad_request"
    assert answers[-1]["result"] == []
    tracker = one_tracker.tracker(1).proc
    assert tracker is not None and tracker.poll() is None
