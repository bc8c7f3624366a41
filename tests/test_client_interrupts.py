"""The client's tracker connection survives Ctrl-C mid-request (its keep-alive and its
shutdown survive unexpected errors), and an outage of every tracker gives at most one
failover notice, not one per attempt."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from p2p import codec
from p2p.config import TrackerAddress, load_tracker_info
from p2p.errors import LocalError, ProtocolError, RemoteError
from p2p.messages import piece as msg
from p2p.pieces import PIECE_SIZE, piece_sha1
from peers.client import Client
from peers.piece_server import PieceServer
from peers.repl import Repl
from peers.shares import SavedShare, Source
from peers.tracker_client import TrackerClient
from tests.files_support import (
    StandIn,
    client_without_trackers,
    group_of,
    make_file,
    seeders,
)
from tests.procs import ClientProc, Cluster, cluster, free_port, tracker_events, wait_for
from tests.test_replication_kit import wait_converged

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def short_sessions(tmp_path: Path) -> Iterator[Cluster]:
    """One tracker that logs out a client silent for 4 s (the client pings every 2 s)."""
    with cluster(tmp_path, trackers=1, tracker_args=["--session-timeout", "4"]) as c:
        yield c


def waits_in_poll(client: ClientProc) -> bool:
    """The client's main thread blocks in poll(): a tracker request is out."""
    pid = client.proc.pid
    return "poll" in Path(f"/proc/{pid}/task/{pid}/wchan").read_text()


def failovers(client: ClientProc) -> list[dict[str, Any]]:
    return [e for e in client.events if e.get("event") == "failover"]


# --- Ctrl-C during a tracker request --------------------------------------------------

def logged_in_alice(c: Cluster) -> ClientProc:
    alice = c.client("alice")
    alice.ok("create_user alice pw")
    alice.ok("login alice pw")
    return alice


def test_ctrl_c_while_the_tracker_hangs_leaves_the_client_working(
        short_sessions: Cluster) -> None:
    c = short_sessions
    alice = logged_in_alice(c)

    c.tracker(1).signal(signal.SIGSTOP)
    alice.send("list_groups")
    wait_for(lambda: waits_in_poll(alice), 12,  # the ping may hold the lock 8 s
             "list_groups to wait for the hung tracker")
    alice.proc.send_signal(signal.SIGINT)
    answer = alice.answer("list_groups")
    assert answer["code"] == "interrupted", answer
    c.tracker(1).signal(signal.SIGCONT)

    # The keep-alive thread still runs: once the tracker has logged the client out
    # (frozen past the 4 s session timeout), its next ping says so.
    c.end_session_by_freezing(alice)

    # Later commands reach the tracker as usual.
    alice.ok("login alice pw")
    assert alice.ok("list_groups") == []
    alice.ok("create_group g")
    assert [g["group"] for g in alice.ok("list_groups")] == ["g"]
    assert c.sessions() == 1

    # End of input logs out and exits cleanly.
    assert alice.close() == 0
    assert c.sessions() == 0
    log = alice.log_path.read_text()
    assert "Traceback" not in log and "ZMQError" not in log, log


def test_ctrl_c_while_exit_waits_for_the_tracker_quits_at_once(
        short_sessions: Cluster) -> None:
    c = short_sessions
    alice = logged_in_alice(c)
    c.tracker(1).signal(signal.SIGSTOP)
    try:
        alice.send("exit")
        wait_for(lambda: waits_in_poll(alice), 12, "exit to wait for the hung tracker")
        alice.proc.send_signal(signal.SIGINT)
        answer = alice.answer("exit", timeout=10)
        assert answer["ok"], answer
        assert alice.proc.wait(10) == 0
    finally:
        c.tracker(1).signal(signal.SIGCONT)
    assert "quitting without logging out" in alice.log_path.read_text()
    # The logout already sent takes effect when the tracker wakes, or the session times
    # out once the pings stop: either way the tracker forgets it.
    wait_for(lambda: c.sessions() == 0, 15, "the tracker to time the session out")


def test_ctrl_c_between_commands_prints_no_line_in_json_mode(tmp_path: Path) -> None:
    """With --json every stdout line is JSON: a Ctrl-C while the client waits for the
    next command adds none (it used to print an empty line there)."""
    info = tmp_path / "tracker_info.txt"
    info.write_text(f"127.0.0.1 {free_port()}\n")  # help needs no tracker
    client = ClientProc(info, tmp_path / "data", tmp_path / "client.log")
    try:
        assert client.ok("help")["commands"]
        pid = client.proc.pid
        wchan = Path(f"/proc/{pid}/task/{pid}/wchan")
        wait_for(lambda: "pipe_read" in wchan.read_text(), 10,
                 "the client to wait for the next command")
        client.proc.send_signal(signal.SIGINT)
        # Handled once it printed something: a line on stdout, or one on stderr (the log).
        # (A command sent at the very moment of a Ctrl-C could be taken by it.)
        wait_for(lambda: client.log_path.read_text() or not client._lines.empty(), 10,
                 "the client to handle the Ctrl-C")
        assert client.ok("help")["commands"]  # fails on any non-JSON line before it
        assert client.close() == 0
    finally:
        client.kill()


def test_an_exception_mid_exchange_drops_the_req_socket(
        one_tracker: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt after the request is sent must not leave the REQ socket
    waiting for a reply: the next request goes through."""
    tracker = TrackerClient(load_tracker_info(one_tracker.info))
    real_poll = zmq.Socket.poll

    def interrupted_poll(self: zmq.Socket[Any], *args: Any, **kwargs: Any) -> int:
        monkeypatch.setattr(zmq.Socket, "poll", real_poll)  # only the first poll
        raise KeyboardInterrupt

    monkeypatch.setattr(zmq.Socket, "poll", interrupted_poll)
    try:
        with pytest.raises(KeyboardInterrupt):
            tracker.call("status")
        assert tracker.call("status")["tracker"] == 1
    finally:
        tracker.close()


class FailingTracker(StandIn):
    """Every request fails with a bug."""

    token: str | None = "t"

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        self.calls.append(op)
        raise RuntimeError(f"bug in {op}")


def test_ping_loop_and_close_survive_unexpected_errors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a ping does not end the keep-alive; one in the logout of ``exit`` is
    logged and the client still shuts down, while Ctrl-C there still reaches the REPL."""
    client = client_without_trackers(tmp_path, monkeypatch)
    fake = FailingTracker(client.tracker)
    client.tracker = fake  # type: ignore[assignment]
    try:
        wait_for(lambda: fake.calls.count("ping") >= 3, 10,
                 "the ping thread to keep pinging after a ping raised")
        assert client._pinger.is_alive()

        def interrupted_logout() -> None:
            raise KeyboardInterrupt

        client.user = "alice"  # logged in: close() logs out first
        with monkeypatch.context() as patched:
            patched.setattr(client, "logout", interrupted_logout)
            with pytest.raises(KeyboardInterrupt):
                client.close()
        client.close()  # the real logout raises RuntimeError: logged, not raised
        assert "logout" in fake.calls
        wait_for(lambda: not client._pinger.is_alive(), 5, "the ping thread to stop")
    finally:
        client._stop.set()
        client.server.stop()
        fake.real.close()


# --- every tracker down ---------------------------------------------------------------

def test_all_trackers_down_gives_one_notice_not_one_per_attempt(tmp_path: Path) -> None:
    with cluster(tmp_path, trackers=2) as c:
        # -v: its log shows every attempt.  A request tries the trackers for 3 s, not 8:
        # several rounds all the same, and no wait for the 8 s of the default.
        alice = c.client("alice", extra_args=["-v", "--request-timeout", "3"])
        alice.ok("create_user alice pw")
        alice.ok("login alice pw")  # answered by tracker 1
        c.tracker(1).kill()
        c.tracker(2).kill()

        def attempts() -> int:
            return alice.log_path.read_text().count("did not answer")

        seen = attempts()
        answer = alice.cmd("list_groups", timeout=40)
        assert answer["code"] == "no_tracker", answer
        assert answer["error"] == "no tracker answered within 3 s", answer
        # Both trackers tried in turn, round after round (the ping thread's tries add
        # to these): one notice at most for all of them.
        assert attempts() - seen >= 4, attempts() - seen
        assert len(failovers(alice)) <= 1, failovers(alice)

        # Idle, the ping thread keeps trying both trackers: nothing more to announce.
        before = len(failovers(alice))
        seen = attempts()
        wait_for(lambda: attempts() >= seen + 6, 20, "six more failed ping attempts")
        alice.ok("help")  # events printed before this answer have been read
        assert failovers(alice)[before:] == []

        # Tracker 2 comes back: the client uses it (announcing at most that switch).
        c.tracker(2).start()
        before = len(failovers(alice))
        alice.ok("list_groups", timeout=30)
        assert [(e["from"], e["to"]) for e in failovers(alice)[before:]] in ([], [(1, 2)])

        # A later real failover is announced again, exactly once.
        c.tracker(1).start()
        wait_converged(c, timeout=20)
        c.tracker(2).kill()
        before = len(failovers(alice))
        alice.ok("create_group g")
        assert [(e["from"], e["to"]) for e in failovers(alice)[before:]] == [(2, 1)]
        assert [g["group"] for g in alice.ok("list_groups")] == ["g"]
        assert alice.close() == 0
        assert c.sessions() == 0


def test_tracker_client_announces_each_switch_once(tmp_path: Path) -> None:
    """A switch is announced once; a request that tries every dead tracker until it
    gives up announces nothing more."""
    with cluster(tmp_path, trackers=2) as c:
        seen: list[tuple[int, int]] = []
        tracker = TrackerClient(load_tracker_info(c.info), give_up_after=2.0,
                                on_failover=lambda old, new: seen.append((old.number,
                                                                          new.number)))
        try:
            assert tracker.call("status")["tracker"] == 1
            assert seen == []  # the first tracker to answer is no switch
            c.tracker(1).kill()
            assert tracker.call("status")["tracker"] == 2
            assert seen == [(1, 2)]
            c.tracker(2).kill()
            with pytest.raises(ProtocolError) as failed:
                tracker.call("status")
            assert failed.value.code == "no_tracker"
            assert seen == [(1, 2)]
        finally:
            tracker.close()


def test_a_client_started_while_the_first_tracker_is_down_says_so_once(
        tmp_path: Path) -> None:
    with cluster(tmp_path, trackers=2) as c:
        c.tracker(1).kill()
        alice = logged_in_alice(c)
        assert [(e["from"], e["to"]) for e in failovers(alice)] == [(1, 2)]
        assert alice.close() == 0


# --- Ctrl-C during exit, in-process (no tracker answers; peers wait on ticket checks) --

class Stranded:
    """A logged-in client whose trackers are gone, sharing one file, with six hellos
    (six made-up tickets) waiting on ticket checks that hold its tracker connection."""

    def __init__(self, tmp_path: Path) -> None:
        data = bytes(range(256)) * (PIECE_SIZE // 256)
        path = tmp_path / "f.bin"
        path.write_bytes(data)
        sha1 = hashlib.sha1(data).hexdigest()
        port = free_port()
        self.client = Client([TrackerAddress(1, "127.0.0.1", free_port())],  # nobody there
                             "127.0.0.1", port, tmp_path / "data", give_up_after=3.0)
        self.client.user, self.client.tracker.token = "alice", "token"
        self.client.registry.active = True
        self.client.registry.put(Source(("g", "f.bin"), len(data), piece_sha1(data), path,
                                        sha1=sha1))
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        for n in range(6):
            self.sock.send(codec.encode(msg.Hello("g", "f.bin", sha1, "bob", f"t{n}")
                                        .to_wire()))
        wait_for(lambda: self.client.server._tickets.asking, 5, "the ticket checks")
        self.out = io.StringIO()
        self.repl = Repl(self.client, self.out, io.StringIO(), True)

    def exit(self, interrupts: list[float]) -> tuple[bool, float]:
        """Type exit, with Ctrl-C ``interrupts`` seconds in; (quit?, seconds taken)."""
        main = threading.main_thread().ident
        assert main is not None
        # A real SIGINT to the main thread, as Ctrl-C sends: it also cuts short a wait
        # for a lock, which _thread.interrupt_main does not.
        timers = [threading.Timer(t, signal.pthread_kill, (main, signal.SIGINT))
                  for t in interrupts]
        for timer in timers:
            timer.start()
        began = time.monotonic()
        try:
            quits = not self.repl.execute("exit")
        finally:
            for timer in timers:
                timer.cancel()
        return quits, time.monotonic() - began

    def close(self) -> None:
        """Wait for the client's threads too: a tracker call left running would go on
        drawing from ``random`` (its retry backoff) into the tests after this one."""
        self.sock.close(0)
        self.client._stop.set()
        self.client.server.stop()
        threads = [self.client._pinger, self.client.server._checker._thread]
        wait_for(lambda: not any(t.is_alive() for t in threads), 15,
                 "the client's threads to end")


def test_ctrl_c_during_exit_quits_at_once_with_ticket_checks_queued(tmp_path: Path) -> None:
    stranded = Stranded(tmp_path)
    try:
        quits, took = stranded.exit([0.5])
        assert quits and took < 2.0, took  # not the 3 s a check holds the tracker connection
        assert json.loads(stranded.out.getvalue())["ok"]
        # The check under way gives up within its 3 s; none of the other five starts.
        wait_for(lambda: not stranded.client.server._checker._thread.is_alive(), 8,
                 "the ticket checks to stop")
    finally:
        stranded.close()


def test_a_second_ctrl_c_during_exit_still_quits(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    stranded = Stranded(tmp_path)
    real_stop = PieceServer.stop

    def slow_stop(server: PieceServer) -> None:  # the user presses Ctrl-C again meanwhile
        time.sleep(1.0)
        real_stop(server)

    monkeypatch.setattr(PieceServer, "stop", slow_stop)
    try:
        quits, took = stranded.exit([0.3, 0.8])
        assert quits, stranded.out.getvalue()
        assert json.loads(stranded.out.getvalue())["ok"]
    finally:
        monkeypatch.undo()
        stranded.close()


# --- Ctrl-C while a tracker takes an upload's share -----------------------------------

def test_ctrl_c_while_the_tracker_takes_an_upload_leaves_it_not_shared(
        one_tracker: Cluster, tmp_path: Path) -> None:
    """The share request sits at the hung tracker when the user presses Ctrl-C; it takes
    it once it wakes.  The file must not end up listed with nobody serving it."""
    c = one_tracker
    cl = group_of(c, ["alice", "bob"])
    alice, bob = cl["alice"], cl["bob"]
    path = tmp_path / "a" / "f.bin"
    make_file(path, 3000)
    c.tracker(1).signal(signal.SIGSTOP)
    try:
        alice.send(f"upload_file {path} g")
        wait_for(lambda: waits_in_poll(alice), 12, "the share to wait for the hung tracker")
        alice.proc.send_signal(signal.SIGINT)
    finally:
        c.tracker(1).signal(signal.SIGCONT)
    answer = alice.answer("upload_file", timeout=20)
    assert answer["code"] == "interrupted", answer
    assert answer["error"] == "interrupted: f.bin is not shared in g", answer

    def shared_events() -> list[str]:
        return [e.type for e in tracker_events(c.tracker(1).data_dir)
                if e.type in ("share", "unshare") and e.data.get("name") == "f.bin"]

    # The tracker took the share (the request sent before the Ctrl-C, or the client's
    # retry of it); whatever it did with it, it lists nothing alice does not serve.
    wait_for(lambda: "share" in shared_events(), 10, "the tracker to take the share")
    assert alice.ok("list_shares") == []
    assert [f["name"] for f in bob.ok("list_files g")] == []
    # And the file can be shared as usual afterwards.
    alice.ok(f"upload_file {path} g")
    assert seeders(bob, "g", "f.bin") == 1


class HungShare(StandIn):
    """The share is cut short by Ctrl-C, and no tracker answers afterwards."""

    token: str | None = "t"

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        self.calls.append(op)
        if op == "share":
            raise KeyboardInterrupt
        if op == "unshare" and "settle" not in self.calls:
            raise AssertionError("unshare before the interrupted share was settled")
        raise LocalError("no tracker answered within 8 s", "no_tracker")


def test_an_interrupted_upload_no_tracker_takes_back_is_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a confirmed withdrawal a tracker may list the file: it is served then, so
    that downloaders are not refused, until stop_share; and not shared at the next login."""
    client = client_without_trackers(tmp_path, monkeypatch)
    fake = HungShare(client.tracker)
    client.tracker = fake  # type: ignore[assignment]
    try:
        client.user, client.registry.active = "alice", True
        path = tmp_path / "f.bin"
        make_file(path, 3000)
        with pytest.raises(ProtocolError) as interrupted:
            client.upload_file(str(path), "g")
        assert interrupted.value.code == "interrupted"
        assert "could not withdraw f.bin" in interrupted.value.message
        assert fake.calls == ["share", "settle", "unshare"]
        assert [(s["group"], s["name"]) for s in client.list_shares()] == [("g", "f.bin")]
        assert client.registry.saved() == []  # not shared again at the next login
    finally:
        client.close(logout=False)


class InterruptedReshare(StandIn):
    """At a login: the first share of a saved file is cut short by Ctrl-C; every other
    request is taken."""

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        self.calls.append(op)
        if op == "share" and self.calls.count("share") == 1:
            raise KeyboardInterrupt
        if op == "unshare":
            raise RemoteError("you do not share it", "not_shared")
        return None


def test_ctrl_c_while_a_login_shares_saved_files_again_stops_the_login(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during a login's re-sharing (slow when trackers are) must stop it, as in
    any command: not just skip that one file and go on sharing the others, each of
    which can take as long again."""
    client = client_without_trackers(tmp_path, monkeypatch)
    fake = InterruptedReshare(client.tracker)
    client.tracker = fake  # type: ignore[assignment]
    try:
        for name in ("f1.bin", "f2.bin"):
            path = tmp_path / name
            make_file(path, 3000)
            data = path.read_bytes()
            client.registry.remember(SavedShare(
                "alice", "g", name, str(path), len(data), hashlib.sha1(data).hexdigest(),
                piece_sha1(data).hex(), path.stat().st_mtime_ns))
        with pytest.raises(ProtocolError) as interrupted:
            client.login("alice", "pw")
        assert interrupted.value.code == "interrupted", interrupted.value
        assert fake.calls == ["login", "share", "settle", "unshare"], fake.calls
        assert client.list_shares() == []
        # Both are still remembered: the next login shares them again.
        assert sorted(s.name for s in client.registry.saved()) == ["f1.bin", "f2.bin"]
    finally:
        client.close(logout=False)
