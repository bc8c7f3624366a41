"""The pure replication decisions: what we lack, who is live, when a write is confirmed,
and what its client is told."""

from __future__ import annotations

import pytest

from p2p.messages.sync import Event
from trackers.quorum import (
    ACK_TIMEOUT,
    LIVE_TIMEOUT,
    MAX_WAIT,
    SILENCE_LIMIT,
    View,
    Waits,
    combine,
    contiguous,
    lacking,
    placement,
)
from trackers.state import OK, fail

pytestmark = pytest.mark.timeout(30)

T0 = 1000.0
TAKEN = fail("user_exists", "user alice already exists")


def ev(origin: int, seq: int) -> Event:
    return Event(origin, seq, seq, "", 0, "logout", {"sid": "s"})


def test_lacking_names_the_origins_behind() -> None:
    assert lacking({1: 5, 2: 3}, {1: 5, 2: 4, 3: 1}) == {2: 4, 3: 1}
    assert lacking({1: 5}, {1: 4}) == {}


def test_placement_and_contiguous_runs() -> None:
    have = {1: 3}
    assert placement(have, 1, 2) == "held"
    assert placement(have, 1, 4) == "next"
    assert placement(have, 1, 6) == "gap"
    assert placement(have, 2, 1) == "next"
    fresh, gap = contiguous(have, [ev(1, 5), ev(1, 4), ev(2, 1), ev(2, 3), ev(1, 2)])
    assert [e.id for e in fresh] == [(1, 4), (1, 5), (2, 1)]
    assert gap  # (2, 3) waits for (2, 2)
    assert contiguous(have, [ev(1, 4)]) == ([ev(1, 4)], False)


def test_combine_prefers_a_reported_failure_over_local_ok() -> None:
    assert combine(OK, None) == OK
    assert combine(OK, TAKEN) == TAKEN
    assert combine(TAKEN, None) == TAKEN
    assert not combine(None, None).ok


def test_peers_are_presumed_live_at_start_then_expire() -> None:
    view = View(1, [1, 2, 3], T0)
    assert view.live(T0) == [2, 3]
    assert view.leader(T0) == 1
    view.heard(3, T0 + 0.9)
    assert view.live(T0 + LIVE_TIMEOUT + 0.1) == [3]
    assert not view.heard(9, T0)  # an unknown tracker is ignored


def test_leader_is_the_lowest_live_tracker() -> None:
    view = View(3, [1, 2, 3], T0)
    assert view.leader(T0) == 1
    view.suspect(1)
    assert view.leader(T0) == 2
    view.heard(1, T0 + 0.1)
    assert view.leader(T0 + 0.1) == 1


def test_catch_up_asks_live_peers_holding_more_once_at_a_time() -> None:
    view = View(1, [1, 2, 3], T0)
    view.holds_vector(2, {1: 4, 2: 9})
    view.holds_vector(3, {1: 4})
    assert view.catch_up_from({1: 4, 2: 3}, T0) == [2]
    view.asked(2, T0)
    assert view.catch_up_from({1: 4, 2: 3}, T0 + 0.1) == []
    view.asked(2, None)
    assert view.catch_up_from({1: 4, 2: 3}, T0 + 0.2) == [2]


def test_local_write_needs_acks_from_every_live_peer() -> None:
    view = View(1, [1, 2, 3], T0)
    waits = Waits(view)
    waits.start((1, 5), "c", 1, T0, "client")
    assert waits.settle(T0) == []
    view.acked(2, 1, 5)
    view.holds_vector(3, {1: 5})  # a heartbeat carries no verdict: not enough
    assert waits.settle(T0 + 0.01) == []
    view.acked(3, 1, 7)  # acks are cumulative
    done = waits.settle(T0 + 0.02)
    assert [w.waiters for w in done] == [["client"]]
    assert len(waits) == 0


def test_a_reported_failure_sticks_to_the_wait() -> None:
    view = View(1, [1, 2], T0)
    waits = Waits(view)
    waits.start((1, 1), "c", 1, T0, "a")
    waits.report(1, 1, OK)
    waits.report(1, 1, TAKEN)
    view.acked(2, 1, 1)
    (done,) = waits.settle(T0)
    assert done.reported == TAKEN


def test_retry_joins_the_wait_of_its_first_attempt() -> None:
    view = View(1, [1, 2], T0)
    waits = Waits(view)
    waits.start((1, 1), "c", 4, T0, "first")
    assert waits.join("c", 4, "retry")
    assert not waits.join("c", 5, "other")
    view.acked(2, 1, 1)
    (done,) = waits.settle(T0)
    assert done.waiters == ["first", "retry"]


def test_no_live_peer_means_answer_at_once() -> None:
    view = View(1, [1], T0)
    waits = Waits(view)
    waits.start((1, 1), "c", 1, T0, "a")
    assert len(waits.settle(T0)) == 1


def test_an_event_from_elsewhere_is_confirmed_by_heartbeat_vectors() -> None:
    view = View(2, [1, 2, 3], T0)
    waits = Waits(view)
    waits.start((1, 4), "c", 1, T0, "retry")  # the origin (1) holds it by definition
    assert waits.settle(T0) == []
    view.holds_vector(3, {1: 4})
    assert len(waits.settle(T0)) == 1


def test_silent_peer_is_given_up_after_ack_timeout_and_becomes_suspect() -> None:
    view = View(1, [1, 2], T0)
    view.heard(2, T0)  # contacted: it gets ACK_TIMEOUT, not LIVE_TIMEOUT
    waits = Waits(view)
    waits.start((1, 1), "c", 1, T0, "a")
    assert waits.next_deadline(T0) == pytest.approx(T0 + ACK_TIMEOUT)
    assert waits.settle(T0 + ACK_TIMEOUT - 0.01) == []
    assert len(waits.settle(T0 + ACK_TIMEOUT + 0.001)) == 1
    assert view.peers[2].suspect and view.live(T0 + ACK_TIMEOUT + 0.001) == []
    waits.start((1, 2), "c", 2, T0 + 0.4, "b")  # the next write does not wait for it
    assert len(waits.settle(T0 + 0.4)) == 1


def test_peer_that_keeps_talking_is_waited_for_up_to_max_wait() -> None:
    view = View(1, [1, 2], T0)
    waits = Waits(view)
    waits.start((1, 1), "c", 1, T0, "a")
    for step in range(1, 10):
        now = T0 + step * 0.1
        view.heard(2, now)  # heartbeats, but no ack: slow, not dead
        assert waits.settle(now) == [], now
    assert len(waits.settle(T0 + MAX_WAIT)) == 1


def test_peer_silent_for_two_heartbeats_is_given_up_at_once() -> None:
    view = View(1, [1, 2], T0)
    view.heard(2, T0)
    waits = Waits(view)
    waits.start((1, 1), "c", 1, T0 + 0.45, "a")  # the peer hung just after T0
    assert waits.next_deadline(T0 + 0.45) == pytest.approx(T0 + SILENCE_LIMIT)
    assert waits.settle(T0 + 0.45) == []
    assert len(waits.settle(T0 + SILENCE_LIMIT + 0.001)) == 1


def test_peer_never_heard_since_start_gets_the_live_timeout() -> None:
    view = View(1, [1, 2], T0)
    waits = Waits(view)
    waits.start((1, 1), "c", 1, T0 + 0.1, "a")
    assert waits.settle(T0 + 0.1 + ACK_TIMEOUT) == []  # may still be starting
    assert len(waits.settle(T0 + LIVE_TIMEOUT + 0.01)) == 1


def test_describe_reports_each_peer() -> None:
    view = View(1, [1, 2], T0)
    assert view.describe(T0)["2"]["live"] is False  # presumed, not yet heard
    view.heard(2, T0 + 0.05)
    view.holds_vector(2, {1: 3})
    shown = view.describe(T0 + 0.1)["2"]
    assert shown["live"] and shown["heard_ms"] == 50 and shown["holds"] == {"1": 3}
