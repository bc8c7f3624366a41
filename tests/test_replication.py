"""Replicated trackers with real processes: failover (SIGKILL and SIGSTOP), exactly-once
retries, acknowledged writes surviving their tracker, catch-up after a restart, a
whole-cluster restart, concurrent conflicts, and one to three trackers."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from p2p import codec
from p2p.bounded_log import BURST
from p2p.messages.sync import Ack, Batch, CatchUp, Heartbeat, decode_sync, encode_sync
from p2p.pieces import Bitfield
from tests.files_support import (
    PASSWORD,
    done,
    entry,
    group_of,
    have_at_least,
    make_file,
    pieces,
    seeders,
    sharing,
)
from tests.procs import ClientProc, Cluster, cluster, run_module, tracker_events, wait_for
from tests.test_replication_kit import Direct, converged, share_args, status, wait_converged

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def three_trackers(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, trackers=3) as c:
        yield c


def logged_in(c: Cluster, user: str) -> ClientProc:
    client = c.client(user)
    assert client.ok(f"create_user {user} pw") is None
    client.ok(f"login {user} pw")
    return client


def timed_ok(client: ClientProc, line: str) -> float:
    """Run a command that must succeed; return how long its answer took."""
    start = time.monotonic()
    client.ok(line)
    return time.monotonic() - start


def group_names(direct: Direct, tracker: int) -> list[str]:
    return [g["group"] for g in direct.ok(tracker, "list_groups")]


# --- 1. failover ----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["sigkill", "sigstop"])
def test_failover_keeps_the_session_and_answers_within_a_second(
        two_trackers: Cluster, how: str) -> None:
    c = two_trackers
    alice = logged_in(c, "alice")  # tracker 1 is first in tracker_info.txt
    alice.ok("create_group before")
    if how == "sigkill":
        c.tracker(1).kill()
    else:
        c.tracker(1).signal(signal.SIGSTOP)
    assert timed_ok(alice, "create_group after") < 1.0  # a write: replicated, then answered
    assert timed_ok(alice, "list_groups") < 1.0
    assert [g["group"] for g in alice.ok("list_groups")] == ["after", "before"]
    failovers = [e for e in alice.events if e.get("event") == "failover"]
    assert len(failovers) <= 1, failovers
    if how == "sigstop":  # the hung tracker comes back and agrees
        c.tracker(1).signal(signal.SIGCONT)
        wait_converged(c)


# --- 2. exactly once ------------------------------------------------------------------

def test_retry_of_a_request_whose_tracker_hung_takes_effect_once(two_trackers: Cluster) -> None:
    c = two_trackers
    alice, bob = Direct(c), Direct(c)
    alice.login(1, "alice")
    alice.ok(1, "create_group", group="g")
    bob.login(1, "bob")
    c.tracker(1).signal(signal.SIGSTOP)
    bob.prepare("join_group", group="g")
    in_flight = bob.open(1)  # reaches the hung tracker, which will process it later
    assert bob.read(in_flight, 0.4) is None
    reply = bob.resend(2)
    assert reply is not None and reply.ok, reply
    c.tracker(1).signal(signal.SIGCONT)  # it now handles the stale first attempt
    wait_converged(c)
    for tracker in (1, 2):
        assert alice.ok(tracker, "list_requests", group="g") == ["bob"]
        again = bob.resend(tracker)  # the same request once more: same answer
        assert again is not None and again.ok, again


def test_retried_create_group_is_not_told_group_exists(two_trackers: Cluster) -> None:
    c = two_trackers
    alice = Direct(c)
    alice.login(1, "alice")
    # Processed and replicated by tracker 1, whose answer is lost when it dies.
    assert alice.call(1, "create_group", group="g1") is not None
    c.tracker(1).kill()
    reply = alice.resend(2)
    assert reply is not None and reply.ok, reply
    # Never processed: tracker 1 is hung with the request in its queue, then killed.
    c.tracker(1).start()
    wait_converged(c)
    c.tracker(1).signal(signal.SIGSTOP)
    alice.prepare("create_group", group="g2")
    assert alice.read(alice.open(1), 0.4) is None
    c.tracker(1).kill()
    reply = alice.resend(2)
    assert reply is not None and reply.ok, reply
    c.tracker(1).start()
    wait_converged(c)
    assert group_names(alice, 1) == ["g1", "g2"]
    other = Direct(c)
    other.login(2, "bob")
    refused = other.call(1, "create_group", group="g2")
    assert refused is not None and refused.code == "group_exists"


def test_client_retry_through_the_next_tracker_takes_effect_once(two_trackers: Cluster
                                                                 ) -> None:
    c = two_trackers
    alice = logged_in(c, "alice")
    c.tracker(1).signal(signal.SIGSTOP)
    alice.ok("create_group g")  # sent to the hung tracker 1, retried on tracker 2
    c.tracker(1).signal(signal.SIGCONT)
    wait_converged(c)
    assert alice.ok("list_groups") == [{"group": "g", "owner": "alice", "members": 1}]
    bob = logged_in(c, "bob")
    bob.fails("create_group g", "group_exists")


def test_retry_while_the_first_attempt_awaits_acks_joins_its_wait(two_trackers: Cluster
                                                                  ) -> None:
    c = two_trackers
    alice = Direct(c)
    alice.login(1, "alice")
    c.tracker(2).signal(signal.SIGSTOP)  # tracker 1 will wait for it, a little
    start = time.monotonic()
    first = alice.open(1, alice.prepare("create_group", group="g"))
    retry = alice.open(1)  # the same request again, as a client that gave up would
    replies = [alice.read(retry, 3.0), alice.read(first, 3.0)]
    waited = time.monotonic() - start
    assert all(r is not None and r.ok for r in replies), replies
    assert 0.1 < waited < 1.0, waited  # not answered before tracker 2 was given up on
    c.tracker(2).signal(signal.SIGCONT)
    wait_converged(c)


# --- 3. no acknowledged write is lost --------------------------------------------------

def test_acknowledged_write_survives_its_tracker_being_killed_at_once(
        two_trackers: Cluster) -> None:
    c = two_trackers
    alice = Direct(c)
    alice.login(1, "alice")
    for round_no, (writer, reader) in enumerate([(1, 2), (2, 1), (1, 2)]):
        sock = alice.open(writer, alice.prepare("create_group", group=f"g{round_no}"))
        reply = alice.read(sock, 3.0)
        c.tracker(writer).kill()  # the instant after it answered
        assert reply is not None and reply.ok, reply
        assert f"g{round_no}" in group_names(alice, reader)
        c.tracker(writer).start()
    wait_converged(c)


# --- 4. catch-up after a restart -------------------------------------------------------

def test_restarted_tracker_catches_up_by_asking_then_serves_alone(two_trackers: Cluster
                                                                   ) -> None:
    c = two_trackers
    alice = Direct(c)
    alice.login(1, "alice")
    c.tracker(2).kill()
    count = 1100  # more than two catch-up batches
    for i in range(count):
        alice.ok(1, "create_group", group=f"g{i:04d}")
    alice.ok(1, "share", **share_args("g0000", "f.bin"))
    c.tracker(2).start()
    # It answers clients only once caught up with the live tracker 1 (or after a grace).
    assert len(group_names(alice, 2)) == count
    wait_converged(c, timeout=10)
    st2 = status(c, 2)
    assert st2 is not None
    assert st2["replication"]["catch_up_requests"] >= 3, st2
    assert st2["replication"]["batches_received"] >= 3, st2
    c.tracker(1).kill()
    assert len(group_names(alice, 2)) == count
    files = alice.ok(2, "list_files", group="g0000")
    assert [f["name"] for f in files] == ["f.bin"]
    alice.ok(2, "create_group", group="after")


# --- 5. whole-cluster restart ----------------------------------------------------------

def test_whole_cluster_restart_keeps_everything(three_trackers: Cluster) -> None:
    c = three_trackers
    alice, bob, carol, dave = Direct(c), Direct(c), Direct(c), Direct(c)
    alice.login(1, "alice")
    bob.login(2, "bob")
    carol.login(3, "carol")
    dave.login(1, "dave")
    alice.ok(1, "create_group", group="g1")
    bob.ok(2, "create_group", group="g2")
    bob.ok(3, "join_group", group="g1")
    alice.ok(2, "accept_request", group="g1", user="bob")
    carol.ok(3, "join_group", group="g1")  # stays pending
    dave.ok(1, "join_group", group="g2")
    bob.ok(1, "reject_request", group="g2", user="dave")
    alice.ok(3, "share", **share_args("g1", "a.bin"))
    bob.ok(1, "share", **share_args("g1", "b.bin", 5 * 1024))
    wait_converged(c)
    before = status(c, 1)
    assert before is not None
    for tracker in c.trackers:
        tracker.kill()
    for tracker in c.trackers:
        tracker.start(wait=False)
    for tracker in c.trackers:
        wait_for(tracker.status, 20, f"tracker {tracker.number} to answer")
    wait_converged(c)
    for n in (1, 2, 3):
        after = status(c, n)
        assert after is not None and after["digest"] == before["digest"]
        assert alice.ok(n, "list_groups") == [
            {"group": "g1", "owner": "alice", "members": 2},
            {"group": "g2", "owner": "bob", "members": 1},
        ]
        assert alice.ok(n, "list_requests", group="g1") == ["carol"]
        assert bob.ok(n, "list_requests", group="g2") == []
        assert [f["name"] for f in bob.ok(n, "list_files", group="g1")] == ["a.bin", "b.bin"]


# --- 7. concurrent conflicts -----------------------------------------------------------

@pytest.mark.parametrize("op", ["create_user", "create_group"])
def test_concurrent_conflict_has_one_winner_everywhere(two_trackers: Cluster, op: str
                                                       ) -> None:
    c = two_trackers
    a, b = Direct(c), Direct(c)
    a.login(1, "alice", "pa")
    b.login(2, "bob", "pb")
    winners: dict[str, str] = {}
    for k in range(8):
        name = f"x{k}"
        args = ({"user": name, "password": f"p{k}-alice"} if op == "create_user"
                else {"group": name})
        sock_a = a.open(1, a.prepare(op, **args))
        if op == "create_user":
            args = {"user": name, "password": f"p{k}-bob"}
        sock_b = b.open(2, b.prepare(op, **args))
        reply_a, reply_b = a.read(sock_a, 3.0), b.read(sock_b, 3.0)
        assert reply_a is not None and reply_b is not None
        assert [reply_a.ok, reply_b.ok].count(True) == 1, (k, reply_a, reply_b)
        loser = reply_b if reply_a.ok else reply_a
        assert loser.code == ("user_exists" if op == "create_user" else "group_exists")
        winners[name] = "alice" if reply_a.ok else "bob"
    wait_converged(c)
    for tracker in (1, 2):
        if op == "create_group":
            owners = {g["group"]: g["owner"] for g in a.ok(tracker, "list_groups")}
            assert owners == winners
            continue
        for name, winner in winners.items():
            probe = Direct(c)
            probe.new_session()
            good = probe.call(tracker, "login", user=name, password=f"p{name[1:]}-{winner}",
                              addr="127.0.0.1:9")
            assert good is not None and good.ok, (tracker, name, good)


# --- 8. one, two, three trackers; any two of three can die ------------------------------

def test_three_trackers_survive_any_two_dying(three_trackers: Cluster) -> None:
    c = three_trackers
    alice = logged_in(c, "alice")
    for k, survivor in enumerate((3, 2, 1)):
        dead = [n for n in (1, 2, 3) if n != survivor]
        for n in dead:
            c.tracker(n).kill()
        alice.ok(f"create_group g{k}")
        assert [g["group"] for g in alice.ok("list_groups")] == [f"g{i}" for i in range(k + 1)]
        for n in dead:
            c.tracker(n).start(wait=False)
        for n in dead:
            wait_for(c.tracker(n).status, 20, f"tracker {n} to answer")
        wait_converged(c)


def test_status_command_shows_each_tracker(two_trackers: Cluster) -> None:
    c = two_trackers
    alice = Direct(c)
    alice.login(2, "alice")
    wait_converged(c)
    shown = run_module("trackers", str(c.info), "--status")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    one = status(c, 1)
    assert one is not None
    assert len(lines) == 3, lines
    for line in lines[:2]:
        assert f"digest {one['digest']}" in line and "applied 2:2 " in line, line
    assert lines[2] == "trackers agree"
    c.tracker(1).kill()
    shown = run_module("trackers", str(c.info), "--status")
    assert shown.returncode == 1
    assert "DOWN" in shown.stdout.splitlines()[0] and "up" in shown.stdout.splitlines()[1]


# --- sessions ---------------------------------------------------------------------------

def test_session_expiry_counts_pings_heard_by_any_tracker(tmp_path: Path) -> None:
    # alice's pings reach tracker 1 only through tracker 2's heartbeats, about 0.6 s
    # apart: the timeout leaves room for a tracker stalled a second or two on a busy
    # machine (with 1.5 s, a 1.4 s stall of tracker 2 logged alice out too).
    with cluster(tmp_path, trackers=2, tracker_args=["--session-timeout", "3"]) as c:
        alice, bob = Direct(c), Direct(c)
        alice.login(1, "alice")
        bob.login(1, "bob")
        stop = threading.Event()

        def ping_tracker_2() -> None:  # alice talks only to tracker 2
            while not stop.wait(0.3):
                alice.call(2, "ping", timeout=1.0)

        pinger = threading.Thread(target=ping_tracker_2, daemon=True)
        pinger.start()
        try:
            # Tracker 1, the lowest-numbered live one, ends bob's silent session only.
            wait_for(lambda: (status(c, 1) or {}).get("sessions") == 1, 12, "bob's logout")
            wait_converged(c)
            assert alice.ok(1, "list_groups") == []
            gone = bob.call(2, "list_groups")
            assert gone is not None and gone.code == "not_logged_in"
            logouts = [e for e in tracker_events(c.tracker(2).data_dir) if e.type == "logout"]
            assert [e.origin for e in logouts] == [1]
            # Tracker 1 dies: tracker 2 leads, and ends alice's session once she is silent.
            c.tracker(1).kill()
        finally:
            stop.set()
            pinger.join(5)
        wait_for(lambda: (status(c, 2) or {}).get("sessions") == 0, 12, "alice's logout")


# --- robustness of the tracker-to-tracker port ----------------------------------------------

def test_garbage_on_the_peer_port_is_dropped_and_logged_within_bounds(
        two_trackers: Cluster) -> None:
    """Garbage from a holder of the cluster key (a buggy or compromised tracker): what a
    stranger sends never gets past the handshake (tests/test_cluster_key.py)."""
    c = two_trackers
    sock: zmq.Socket[Any] = c.keyed_socket(zmq.Context.instance(), zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{c.ports[0] + 2}")
    try:
        junk = [b"", b"\xc1", codec.encode(["zz", 1]), codec.encode({"a": 1}),
                encode_sync(Heartbeat(2, {})), encode_sync(CatchUp(99, {})),
                encode_sync(Ack(7, 1, 5))]
        for _ in range(20):
            for frame in junk:
                sock.send(frame)
        sock.send_multipart([b"two", b"frames"])
        sock.send(encode_sync(CatchUp(2, {})))  # well formed: answered like any peer
        assert sock.poll(3000), "a valid catch-up request got no batch"
        assert isinstance(decode_sync(sock.recv()), Batch)
    finally:
        sock.close(0)
    alice = Direct(c)
    alice.login(1, "alice")
    alice.ok(1, "create_group", group="still-replicating")
    assert group_names(alice, 2) == ["still-replicating"]
    one = status(c, 1)
    assert one is not None and one["replication"]["bad-peer-port"] >= 40, one
    text = c.tracker(1).log_text()
    # 80 malformed frames: the first few logged (p2p.bounded_log), the rest counted.
    assert 1 <= text.count("dropped a malformed frame") <= BURST, text
    assert "Traceback" not in text


# --- 9. downloads across a tracker's death ---------------------------------------------

def test_download_in_progress_survives_a_tracker_dying(two_trackers: Cluster,
                                                       tmp_path: Path) -> None:
    """Tracker 1 (every client's first choice) dies mid-download: the download completes,
    and its progress, then its completion, reach tracker 2."""
    c, count = two_trackers, 16
    # alice sends two pieces a second, so bob needs about 8 s for the file.
    cl = group_of(c, ["alice", "bob", "carol"], limits={"alice": 1024})
    alice, bob, carol = cl["alice"], cl["bob"], cl["carol"]
    data = make_file(tmp_path / "a" / "f.bin", pieces(count))
    alice.ok(f"upload_file {tmp_path / 'a' / 'f.bin'} g")
    dest = tmp_path / "dl"
    dest.mkdir()
    watcher = Direct(c)  # carol, asking tracker 2 only
    watcher.login(2, "carol", PASSWORD, create=False)

    def bob_on_tracker_2() -> dict[str, Any] | None:
        info = watcher.ok(2, "file_info", group="g", name="f.bin")
        return next((p for p in info["peers"] if p["user"] == "bob"), None)

    bob.ok(f"download_file g f.bin {dest}")
    at_kill = wait_for(lambda: have_at_least(bob, "g", "f.bin", count, 0.25), 20,
                       "bob to have a quarter of the file")
    c.tracker(1).kill()
    had = round(at_kill["progress"] * count)
    assert at_kill["state"] == "downloading" and had < count, at_kill

    def announced_more() -> bool:
        bob_2 = bob_on_tracker_2()
        have = bob_2["have"] if bob_2 else None
        return have is not None and had < Bitfield.from_bytes(count, have).count() < count

    wait_for(announced_more, 10, "tracker 2 to learn of pieces bob verified after the kill")
    assert entry(bob, "g", "f.bin")["state"] == "downloading"

    done(bob, "g", "f.bin", timeout=30)
    assert (dest / "f.bin").read_bytes() == data
    wait_for(lambda: (p := bob_on_tracker_2()) is not None and p["have"] is None, 10,
             "tracker 2 to list bob with the whole file")
    assert seeders(carol, "g", "f.bin") == 2  # carol's client, failed over to tracker 2
    killed = c.tracker(1).proc
    assert killed is not None and killed.poll() is not None


def _trackers_killed_mid_download(
        c: Cluster, tmp_path: Path) -> tuple[ClientProc, ClientProc, bytes, Path]:
    """alice shares a 12-piece file at 1 MiB/s (about 6 s), bob downloads it to the
    returned directory, and every tracker is SIGKILLed once he has a fifth of it."""
    count = 12
    cl, data, dest = sharing(c, tmp_path, ["alice", "bob"], count, 1024)
    alice, bob = cl["alice"], cl["bob"]
    bob.ok(f"download_file g f.bin {dest}")
    wait_for(lambda: have_at_least(bob, "g", "f.bin", count, 0.2), 20,
             "bob to have a fifth of the file")
    for tracker in c.trackers:
        tracker.kill()
    return alice, bob, data, dest


def test_download_goes_on_while_every_tracker_is_down(two_trackers: Cluster,
                                                       tmp_path: Path) -> None:
    """Both trackers die mid-download while the seeder lives: the download keeps taking
    pieces from it (a tracker call that waits 8 s for no answer must not stall the
    transfer, nor make the seeder look silent) and completes; the user hears of it as
    soon as the file is in place, not after tracker calls that give up 8 s later."""
    alice, bob, data, dest = _trackers_killed_mid_download(two_trackers, tmp_path)

    bob.send("wait g f.bin")
    in_place = wait_for(lambda: (dest / "f.bin").exists() and time.monotonic(), 40,
                        "the file in place")
    answer = bob.answer("wait g f.bin", timeout=30)
    waited = time.monotonic() - in_place
    assert answer["ok"] and answer["result"][-1]["state"] == "complete", answer
    assert waited < 2.5, f"wait returned {waited:.1f} s after the file was in place"
    # The notice is printed before wait's answer.
    assert [e["file"] for e in bob.events if e["event"] == "download_complete"] == ["f.bin"]
    assert (dest / "f.bin").read_bytes() == data
    assert alice.ok("show_downloads") == []  # alice's client still answers too


def test_a_logout_no_tracker_took_changes_nothing(two_trackers: Cluster,
                                                   tmp_path: Path) -> None:
    """With every tracker down, logout fails with no_tracker and, like any failed
    command, changes nothing: the download goes on, the shares stay listed."""
    _alice, bob, data, dest = _trackers_killed_mid_download(two_trackers, tmp_path)

    bob.fails("logout", "no_tracker", timeout=30)
    assert [s["name"] for s in bob.ok("list_shares")] == ["f.bin"]
    assert entry(bob, "g", "f.bin")["state"] in ("downloading", "complete")
    done(bob, "g", "f.bin", timeout=40)
    assert (dest / "f.bin").read_bytes() == data


def test_converged_helper_notices_difference(two_trackers: Cluster) -> None:
    """The check the other tests lean on is not vacuous."""
    c = two_trackers
    c.tracker(2).signal(signal.SIGSTOP)
    alice = Direct(c)
    alice.login(1, "alice")
    assert not converged(c)
    c.tracker(2).signal(signal.SIGCONT)
    wait_converged(c)
