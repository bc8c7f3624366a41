"""A session the trackers end (the client was frozen past the session timeout) leaves
nothing of its user behind on that client for the next user who logs in there."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.files_support import login, make_file
from tests.procs import ClientProc, Cluster, cluster, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def short_sessions(tmp_path: Path) -> Iterator[Cluster]:
    """One tracker that logs out a client silent for 4 s (the client pings every 2 s)."""
    with cluster(tmp_path, trackers=1, tracker_args=["--session-timeout", "4"]) as c:
        yield c


def sessions(c: Cluster) -> int:
    status = c.tracker(1).status()
    assert status is not None
    return int(status["sessions"])


def end_session_by_freezing(c: Cluster, client: ClientProc) -> None:
    """Freeze the client until the tracker has timed its session out, then wake it and
    wait for its ping to hear so."""
    client.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: sessions(c) == 0, 15, "the tracker to time the session out")
    finally:
        client.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: any(e["event"] == "session_ended" for e in client.events), 10,
             "the ping thread to report the ended session")


def test_the_next_user_does_not_see_or_serve_the_shares_of_an_ended_session(
        short_sessions: Cluster, tmp_path: Path) -> None:
    c = short_sessions
    shared = c.client("shared")
    login(shared, "alice")
    shared.ok("create_group g")
    make_file(tmp_path / "a" / "f.bin", 3000)
    shared.ok(f"upload_file {tmp_path / 'a' / 'f.bin'} g")
    assert [s["name"] for s in shared.ok("list_shares")] == ["f.bin"]

    end_session_by_freezing(c, shared)

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
