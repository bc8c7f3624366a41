"""Hostile programs on the network against real trackers and clients: whatever they send,
the process keeps running, its state stays whole, and what it holds for them stays small."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from p2p.messages.sync import Event, encode_sync
from tests.procs import Cluster, wait_for
from tests.test_replication_kit import Direct

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def _still_serves_writes(c: Cluster) -> None:
    """Tracker 1 is alive, takes a write and a login, and logged no traceback."""
    one = c.tracker(1)
    alice = Direct(c)
    alice.login(1, "alice")
    alice.ok(1, "create_group", group="after")
    groups = alice.ok(1, "list_groups")
    assert [g["group"] for g in groups] == ["after"], groups
    assert one.proc is not None and one.proc.poll() is None, one.log_text()[-3000:]
    assert "Traceback" not in one.log_text(), one.log_text()[-3000:]


# --- tracker to tracker: a stranger where a dead tracker's PUB port was ----------------------

@pytest.mark.parametrize("ts", [2**64 - 1, 2**63 - 1], ids=["beyond-int64", "int64-max"])
def test_an_event_with_an_enormous_timestamp_does_not_stop_a_tracker(
        tmp_path: Path, zctx: zmq.Context[Any], ts: int) -> None:
    """Tracker 2 is down and a stranger publishes on its PUB port an event stamped at the
    top of (or beyond) a 64-bit integer.  Tracker 1 keeps serving, writes included."""
    c = Cluster(tmp_path, trackers=2)
    pub: zmq.Socket[Any] = zctx.socket(zmq.PUB)
    try:
        one = c.tracker(1).start()
        pub.bind(f"tcp://127.0.0.1:{c.ports[1] + 1}")
        frame = encode_sync(Event(2, 1, ts, "", 0, "logout", {"sid": "nobody"}))

        def taken_or_refused() -> str | None:
            pub.send(frame)  # again and again: a SUB drops what comes before it connects
            assert one.proc is not None
            if one.proc.poll() is not None:
                return "died"
            st = one.status()
            if st and (st["events"] or st["replication"].get("bad-subscription")):
                return "answered"
            return None

        outcome = wait_for(taken_or_refused, 15, "tracker 1 to take or refuse the event",
                           interval=0.1)
        assert outcome == "answered", one.log_text()[-3000:]
        _still_serves_writes(c)
    finally:
        pub.close(0)
        c.close()
