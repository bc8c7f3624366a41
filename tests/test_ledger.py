"""The ledger keeps state == fold(events) whatever the arrival order; the hybrid clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from p2p.messages.sync import Event
from tests.test_state import scenario
from trackers import state as st
from trackers.clock import HybridClock
from trackers.ledger import Ledger

pytestmark = pytest.mark.timeout(30)

EVENTS = scenario()
SORTED = sorted(EVENTS, key=lambda e: e.key)
FOLDED = st.digest(st.fold(EVENTS))


def test_empty_ledger() -> None:
    ledger = Ledger()
    assert ledger.events == []
    assert st.digest(ledger.state) == st.digest(st.State())


def test_constructor_sorts_and_folds() -> None:
    ledger = Ledger(list(reversed(EVENTS)))
    assert ledger.events == SORTED
    assert st.digest(ledger.state) == FOLDED
    assert all((e.origin, e.seq) in ledger for e in EVENTS)
    assert (9, 1) not in ledger


def test_in_order_adds_apply_incrementally() -> None:
    ledger = Ledger()
    for e in SORTED:
        ledger.add([e])
    assert ledger.refolds == 0
    assert ledger.events == SORTED
    assert st.digest(ledger.state) == FOLDED


def test_an_event_from_the_past_refolds() -> None:
    ledger = Ledger(SORTED[1:])
    ledger.add([SORTED[0]])
    assert ledger.refolds == 1
    assert ledger.events == SORTED
    assert st.digest(ledger.state) == FOLDED


def test_late_winner_of_a_conflict_takes_over() -> None:
    late = Event(2, 1, 5, "c2", 1, "create_user", {"user": "alice", "pw": b"late"})
    early = Event(1, 1, 9, "c1", 1, "create_user", {"user": "alice", "pw": b"early"})
    ledger = Ledger([early])
    assert ledger.state.users["alice"] == b"early"
    ledger.add([late])
    assert ledger.state.users["alice"] == b"late"
    outcome = st.outcome_of(ledger.state, "c1", 1)
    assert outcome is not None and outcome.code == "user_exists"


def test_duplicates_are_ignored_across_calls() -> None:
    ledger = Ledger(EVENTS)
    ledger.add(EVENTS)
    ledger.add([EVENTS[3], EVENTS[3]])
    assert ledger.events == SORTED
    assert st.digest(ledger.state) == FOLDED


def test_duplicates_given_to_the_constructor_are_ignored() -> None:
    ledger = Ledger(EVENTS + EVENTS[:4])
    assert ledger.events == SORTED
    assert st.digest(ledger.state) == FOLDED


def test_duplicates_within_one_batch_are_ignored() -> None:
    ledger = Ledger()
    ledger.add([EVENTS[0], EVENTS[0], EVENTS[1], EVENTS[0]])
    assert ledger.events == sorted(EVENTS[:2], key=lambda e: e.key)
    assert len(ledger._keys) == 2


def test_a_second_event_with_a_held_id_is_ignored_even_if_it_differs() -> None:
    ledger = Ledger([EVENTS[0]])
    forged = Event(EVENTS[0].origin, EVENTS[0].seq, 1, "x", 1, "create_user",
                   {"user": "mallory", "pw": b"m"})
    ledger.add([forged])
    assert ledger.events == [EVENTS[0]]
    assert "mallory" not in ledger.state.users


@settings(max_examples=60, deadline=None)
@given(hst.data())
def test_any_arrival_order_in_any_batches_with_duplicates_equals_the_fold(
    data: hst.DataObject,
) -> None:
    arrivals = data.draw(hst.permutations(EVENTS + EVENTS[: data.draw(hst.integers(0, 6))]))
    start = data.draw(hst.integers(0, 5))
    ledger = Ledger(arrivals[:start])
    rest = arrivals[start:]
    while rest:
        size = data.draw(hst.integers(1, 4))
        ledger.add(rest[:size])
        rest = rest[size:]
    assert ledger.events == SORTED
    assert st.digest(ledger.state) == FOLDED


# --- the hybrid logical clock ----------------------------------------------------------

def test_clock_follows_the_wall_clock() -> None:
    wall = [1000]
    clock = HybridClock(lambda: wall[0])
    first = clock.now()
    assert first == 1000 << 16
    wall[0] = 2000
    assert clock.now() == 2000 << 16


def test_clock_is_monotonic_when_the_wall_stands_still_or_goes_back() -> None:
    wall = [5000]
    clock = HybridClock(lambda: wall[0])
    stamps = [clock.now() for _ in range(5)]
    wall[0] = 10
    stamps += [clock.now() for _ in range(5)]
    assert stamps == sorted(set(stamps))
    assert stamps[-1] == (5000 << 16) + 9


def test_observe_moves_the_clock_past_a_remote_timestamp() -> None:
    clock = HybridClock(lambda: 1)
    remote = 999 << 16 | 7
    clock.observe(remote)
    assert clock.now() > remote
    clock.observe(5)  # an old timestamp does not move the clock back
    assert clock.now() > remote + 1


def test_default_clock_uses_real_time() -> None:
    clock = HybridClock()
    a, b = clock.now(), clock.now()
    assert 0 < a < b


@settings(max_examples=100, deadline=None)
@given(hst.lists(hst.tuples(hst.booleans(), hst.integers(0, 2**40)), max_size=30))
def test_clock_never_goes_back_whatever_it_sees(steps: list[tuple[bool, int]]) -> None:
    wall = [0]
    clock = HybridClock(lambda: wall[0])
    last, seen = -1, -1
    for is_remote, value in steps:
        if is_remote:
            clock.observe(value << 16)
            seen = max(seen, value << 16)
        else:
            wall[0] = value
            now = clock.now()
            assert now > last and now > seen
            last = now
