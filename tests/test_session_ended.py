"""A session the trackers end (the client was frozen past the session timeout) leaves
nothing of its user behind on that client for the next user who logs in there."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2p.errors import ProtocolError, RemoteError
from peers.tracker_client import TrackerClient
from tests.files_support import StandIn, client_without_trackers, login, make_file
from tests.procs import Cluster, cluster, free_port, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def short_sessions(tmp_path: Path) -> Iterator[Cluster]:
    """One tracker that logs out a client silent for 4 s (the client pings every 2 s)."""
    with cluster(tmp_path, trackers=1, tracker_args=["--session-timeout", "4"]) as c:
        yield c


def test_the_next_user_does_not_see_or_serve_the_shares_of_an_ended_session(
        short_sessions: Cluster, tmp_path: Path) -> None:
    c = short_sessions
    shared = c.client("shared")
    login(shared, "alice")
    shared.ok("create_group g")
    make_file(tmp_path / "a" / "f.bin", 3000)
    shared.ok(f"upload_file {tmp_path / 'a' / 'f.bin'} g")
    assert [s["name"] for s in shared.ok("list_shares")] == ["f.bin"]

    c.end_session_by_freezing(shared)

    login(shared, "bob")
    assert shared.ok("list_shares") == []
    shared.ok("create_group g2")  # bob shares his own files as usual
    assert shared.ok(f"upload_file {tmp_path / 'a' / 'f.bin'} g2")["name"] == "f.bin"
    assert [(s["group"], s["name"]) for s in shared.ok("list_shares")] == [("g2", "f.bin")]

    # Alice's share is only set aside: her next login here shares it again.
    shared.ok("logout")
    assert login(shared, "alice", create=False)["reshared"] == ["g/f.bin"]
    assert [(s["group"], s["name"]) for s in shared.ok("list_shares")] == [("g", "f.bin")]
    assert shared.close() == 0


# --- the ping thread against a login on the REPL thread --------------------------------

class SlowToTellTracker(StandIn):
    """Knows the tokens of live sessions, and holds a refused ping's answer until told,
    like a ping thread that heard ``not_logged_in`` and was descheduled before acting on
    it."""

    def __init__(self, real: TrackerClient) -> None:
        super().__init__(real)
        self.live: set[str] = set()
        self.refused = threading.Event()  # a ping was refused and waits to say so
        self.release = threading.Event()
        self.pings_ok: list[str] = []

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        token = self.token
        if op == "login":
            assert token is not None
            self.live.add(token)
            return None
        if token not in self.live:
            if op == "ping" and not self.refused.is_set():
                self.refused.set()
                self.release.wait(10)
            raise RemoteError("not logged in: use login <user_id> <password>", "not_logged_in")
        if op == "ping":
            self.pings_ok.append(token)
        if op == "logout":
            self.live.discard(token)
        return None


def test_a_refused_ping_of_an_old_session_does_not_end_the_next_login(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    client = client_without_trackers(tmp_path, monkeypatch,
                                     lambda name, data: events.append((name, data)))
    fake = SlowToTellTracker(client.tracker)
    client.tracker = fake  # type: ignore[assignment]
    try:
        client.login("alice", "pw")
        wait_for(lambda: fake.pings_ok, 5, "a ping of alice's session")
        fake.live.clear()  # the trackers end alice's session
        wait_for(fake.refused.is_set, 5, "a ping to be refused")
        # Meanwhile, on the REPL thread, the user logs out and bob logs in.
        client.logout()
        client.login("bob", "pw")
        bob_token = fake.token
        fake.release.set()  # the ping thread now acts on alice's refused ping
        wait_for(lambda: bob_token in fake.pings_ok or events, 5,
                 "a ping of bob's session, or an event")
        assert client.user == "bob"
        assert fake.token == bob_token
        assert [e for e in events if e[0] == "session_ended"] == []
    finally:
        fake.release.set()
        client.close(logout=False)


class InterruptedLogin(StandIn):
    """A tracker connection whose login call is interrupted by Ctrl-C mid-way: the
    tracker may or may not have taken it."""

    def __init__(self, real: TrackerClient) -> None:
        super().__init__(real)
        self.pinged = threading.Event()

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        if op == "login":
            raise KeyboardInterrupt
        if op == "ping":
            self.pinged.set()
        return None


def test_a_login_interrupted_by_ctrl_c_keeps_no_session_alive(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pings with the half-made session's token would keep it alive at a tracker that
    # took the login, for a user this client does not count as logged in.
    client = client_without_trackers(tmp_path, monkeypatch)
    fake = InterruptedLogin(client.tracker)
    client.tracker = fake  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            client.login("alice", "pw")
        assert client.user is None and fake.token is None
        # Ten ping intervals without a ping.
        assert not fake.pinged.wait(0.5), "a ping went out for the interrupted login"
    finally:
        client.close(logout=False)


# --- a download answered just before the session ends ----------------------------------

class SlowFileInfo(StandIn):
    """Knows the tokens of live sessions, and holds its answer to file_info until told
    (the trackers can end the session meanwhile)."""

    def __init__(self, real: TrackerClient, peer: str) -> None:
        super().__init__(real)
        self.peer = peer
        self.live: set[str] = set()
        self.asked = threading.Event()
        self.release = threading.Event()

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        token = self.token
        if op == "login":
            assert token is not None
            self.live.add(token)
            return None
        if op == "file_info":
            self.asked.set()
            self.release.wait(10)
            # Answered: the session was live when the tracker took the request.
            return {"group": "g", "name": "f.bin", "size": 3000, "sha1": "a" * 40,
                    "pieces": bytes(20),
                    "peers": [{"user": "bob", "addr": self.peer, "have": None,
                               "ticket": "ab"}]}
        if token not in self.live:
            raise RemoteError("not logged in: use login <user_id> <password>", "not_logged_in")
        return None


def test_a_download_answered_as_the_session_ends_does_not_outlive_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    client = client_without_trackers(tmp_path, monkeypatch,
                                     lambda name, data: events.append(name))
    fake = SlowFileInfo(client.tracker, f"127.0.0.1:{free_port()}")  # nobody listens
    client.tracker = fake  # type: ignore[assignment]
    outcome: list[BaseException | dict[str, Any]] = []

    def download() -> None:
        try:
            outcome.append(client.download_file("g", "f.bin", str(tmp_path)))
        except BaseException as exc:  # the test looks at it
            outcome.append(exc)

    try:
        client.login("alice", "pw")
        thread = threading.Thread(target=download)
        thread.start()
        wait_for(fake.asked.is_set, 5, "the download's file_info call")
        fake.live.clear()  # the trackers end the session while file_info is out
        wait_for(lambda: "session_ended" in events, 5, "the ping thread to end the session")
        fake.release.set()
        thread.join(10)
        assert len(outcome) == 1
        refused = outcome[0]
        assert isinstance(refused, ProtocolError) and refused.code == "not_logged_in", outcome
        assert client.downloads.all() == []
        assert not [t for t in threading.enumerate() if t.name.startswith("download")]
        # Nothing recorded either, so no later login resumes it for the wrong user.
        record = tmp_path / "data" / "downloads.json"
        assert not record.exists() or json.loads(record.read_text())["downloads"] == []
    finally:
        fake.release.set()
        client.close(logout=False)
