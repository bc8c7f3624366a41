"""The ledger keeps state == fold(events) whatever the arrival order; the hybrid clock."""

from __future__ import annotations

import copy
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from p2p.messages.sync import Event
from tests.test_state import scenario, world
from trackers import state as st
from trackers.clock import OBSERVE_CEILING, HybridClock
from trackers.ledger import SNAPSHOT_EVERY, SNAPSHOTS_KEPT, Ledger

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


# --- snapshots: a late event replays from the nearest one before it ----------------------

def assert_snapshots_are_prefix_folds(ledger: Ledger) -> None:
    """Every kept snapshot is still exactly the fold of the events before it."""
    for n, snapshot in ledger._snapshots:
        assert st.digest(snapshot) == st.digest(st.fold(ledger.events[:n])), n


def test_snapshots_are_taken_every_k_events_and_only_the_last_ones_kept() -> None:
    ledger = Ledger(snapshot_every=3, snapshots_kept=2)
    for e in SORTED:
        ledger.add([e])
    assert [n for n, _ in ledger._snapshots] == [12, 15]
    assert_snapshots_are_prefix_folds(ledger)
    assert ledger.refolds == ledger.replays == 0


def test_the_constructor_snapshots_only_the_tail() -> None:
    ledger = Ledger(EVENTS, snapshot_every=2, snapshots_kept=3)
    assert [n for n, _ in ledger._snapshots] == [12, 14, 16]
    assert_snapshots_are_prefix_folds(ledger)


def test_a_late_event_replays_from_the_snapshot_before_it() -> None:
    ledger = Ledger(SORTED[:10] + SORTED[11:], snapshot_every=4, snapshots_kept=8)
    assert [n for n, _ in ledger._snapshots] == [4, 8, 12, 16]
    ledger.add([SORTED[10]])
    assert (ledger.replays, ledger.refolds, ledger.replayed) == (1, 0, 8)  # from n=8
    assert ledger.events == SORTED
    assert st.digest(ledger.state) == FOLDED
    assert [n for n, _ in ledger._snapshots] == [4, 8, 12, 16]  # 12, 16 taken again
    assert_snapshots_are_prefix_folds(ledger)


def test_a_snapshot_right_at_the_insertion_point_is_used() -> None:
    ledger = Ledger(SORTED[:8] + SORTED[9:], snapshot_every=4, snapshots_kept=8)
    ledger.add([SORTED[8]])
    assert (ledger.replays, ledger.refolds, ledger.replayed) == (1, 0, 8)
    assert st.digest(ledger.state) == FOLDED
    assert_snapshots_are_prefix_folds(ledger)


def test_an_event_older_than_every_kept_snapshot_refolds() -> None:
    ledger = Ledger(SORTED[:2] + SORTED[3:], snapshot_every=4, snapshots_kept=2)
    assert [n for n, _ in ledger._snapshots] == [12, 16]
    ledger.add([SORTED[2]])
    assert (ledger.replays, ledger.refolds, ledger.replayed) == (0, 1, 16)
    assert st.digest(ledger.state) == FOLDED
    assert [n for n, _ in ledger._snapshots] == [12, 16]
    assert_snapshots_are_prefix_folds(ledger)


def test_no_snapshots_kept_means_a_refold_every_time() -> None:
    ledger = Ledger(SORTED[1:], snapshot_every=1, snapshots_kept=0)
    ledger.add([SORTED[0]])
    assert (ledger.replays, ledger.refolds) == (0, 1)
    assert ledger._snapshots == []
    assert st.digest(ledger.state) == FOLDED


def test_with_the_default_settings_a_late_event_in_a_long_log_replays() -> None:
    log = [Event(1, i, 10 * i, "", 0, "create_group", {"group": f"g{i}", "user": "u"})
           for i in range(1, 1001)]
    late = Event(2, 1, 10 * 990 + 5, "c", 1, "create_group", {"group": "g995", "user": "v"})
    ledger = Ledger(log)
    assert len(ledger._snapshots) == SNAPSHOTS_KEPT
    ledger.add([late])
    assert (ledger.replays, ledger.refolds) == (1, 0)
    assert ledger.replayed < 2 * SNAPSHOT_EVERY
    assert st.digest(ledger.state) == st.digest(st.fold([*log, late]))
    assert_snapshots_are_prefix_folds(ledger)


def test_bad_snapshot_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Ledger(snapshot_every=0)
    with pytest.raises(ValueError):
        Ledger(snapshots_kept=-1)


@settings(max_examples=60, deadline=None)
@given(hst.data())
def test_any_arrival_order_with_snapshots_equals_the_fold(data: hst.DataObject) -> None:
    arrivals = data.draw(hst.permutations(EVENTS + EVENTS[: data.draw(hst.integers(0, 6))]))
    start = data.draw(hst.integers(0, 8))
    ledger = Ledger(arrivals[:start], snapshot_every=data.draw(hst.integers(1, 5)),
                    snapshots_kept=data.draw(hst.integers(0, 4)))
    rest = arrivals[start:]
    while rest:
        size = data.draw(hst.integers(1, 4))
        ledger.add(rest[:size])
        rest = rest[size:]
        assert st.digest(ledger.state) == st.digest(st.fold(ledger.events))
    assert ledger.events == SORTED
    assert st.digest(ledger.state) == FOLDED
    assert_snapshots_are_prefix_folds(ledger)


# Random logs over a few users, groups, sessions and files, so that events conflict,
# fail their checks, mutate groups' lists and files' holders, and repeat client requests.
_USERS, _GROUPS = ["u0", "u1", "u2", "u3"], ["g0", "g1"]
_SIDS, _FILES = ["s0", "s1", "s2"], ["f0", "f1"]


def _random_data(draw: hst.DrawFn, etype: str) -> dict[str, object]:
    user, group = draw(hst.sampled_from(_USERS)), draw(hst.sampled_from(_GROUPS))
    sid, name = draw(hst.sampled_from(_SIDS)), draw(hst.sampled_from(_FILES))
    if etype == "create_user":
        return {"user": user, "pw": draw(hst.sampled_from([b"p", b"q"]))}
    if etype == "login":
        return {"user": user, "sid": sid, "cid": "c", "addr": "h:1"}
    if etype == "logout":
        return {"sid": sid}
    if etype in ("accept_request", "reject_request"):
        return {"group": group, "user": user, "member": draw(hst.sampled_from(_USERS))}
    if etype in ("share", "have"):
        return {"sid": sid, "group": group, "name": name, "size": 1, "sha1": "a" * 40,
                "pieces": b"\x01" * 20, "have": draw(hst.sampled_from([None, b"\x01"]))}
    if etype == "unshare":
        return {"sid": sid, "group": group, "name": name}
    return {"group": group, "user": user}


# Users in groups with sessions, so that most random events take effect.
_PRELUDE: list[tuple[str, dict[str, Any]]] = [
    ("create_user", {"user": "u0", "pw": b"p"}), ("create_user", {"user": "u1", "pw": b"p"}),
    ("create_user", {"user": "u2", "pw": b"p"}),
    ("login", {"user": "u0", "sid": "s0", "cid": "c", "addr": "h:1"}),
    ("login", {"user": "u1", "sid": "s1", "cid": "c", "addr": "h:1"}),
    ("create_group", {"group": "g0", "user": "u0"}),
    ("create_group", {"group": "g1", "user": "u1"}),
    ("join_group", {"group": "g0", "user": "u1"}), ("join_group", {"group": "g1", "user": "u0"}),
    ("accept_request", {"group": "g0", "user": "u0", "member": "u1"}),
    ("accept_request", {"group": "g1", "user": "u1", "member": "u0"}),
]


@hst.composite
def random_log(draw: hst.DrawFn) -> list[Event]:
    events = [Event(1, seq, 0, "", 0, etype, data)
              for seq, (etype, data) in enumerate(_PRELUDE, 1)]
    seqs = {1: len(events), 2: 0, 3: 0}
    for _ in range(draw(hst.integers(0, 60))):
        origin = draw(hst.integers(1, 3))
        seqs[origin] += 1
        etype = draw(hst.sampled_from(sorted(st.RULES)))
        cid = draw(hst.sampled_from(["", "c0", "c1"]))
        events.append(Event(origin, seqs[origin], draw(hst.integers(1, 40)), cid,
                            draw(hst.integers(0, 20)) if cid else 0, etype,
                            _random_data(draw, etype)))
    return events


@settings(max_examples=150, deadline=None)
@given(random_log(), hst.data())
def test_random_logs_in_nearly_sorted_arrival_equal_the_fold(
    events: list[Event], data: hst.DataObject,
) -> None:
    """Mostly in order with some late events, as replication delivers them."""
    arrivals = sorted(events, key=lambda e: e.key)
    for _ in range(data.draw(hst.integers(0, 10))):
        if len(arrivals) > 1:
            i = data.draw(hst.integers(0, len(arrivals) - 1))
            late = arrivals.pop(i)
            arrivals.insert(min(len(arrivals), i + data.draw(hst.integers(1, 12))), late)
    ledger = Ledger(snapshot_every=data.draw(hst.integers(1, 8)),
                    snapshots_kept=data.draw(hst.integers(0, 4)))
    rest = arrivals
    while rest:
        size = data.draw(hst.integers(1, 3))
        ledger.add(rest[:size])
        rest = rest[size:]
        assert st.digest(ledger.state) == st.digest(st.fold(ledger.events))
    assert_snapshots_are_prefix_folds(ledger)
    assert len(ledger._snapshots) <= ledger._kept


# --- copying the state -----------------------------------------------------------------

def _mutable_ids(value: object, seen: dict[int, object] | None = None) -> dict[int, object]:
    """id -> object for every mutable object reachable from ``value``."""
    seen = {} if seen is None else seen
    if isinstance(value, str | bytes | int | float | bool | type(None) | st.Outcome):
        return seen
    if id(value) in seen:
        return seen
    seen[id(value)] = value
    if isinstance(value, dict):
        for k, v in value.items():
            _mutable_ids(k, seen)
            _mutable_ids(v, seen)
    elif isinstance(value, list | tuple | set):
        for v in value:
            _mutable_ids(v, seen)
    else:
        for v in vars(value).values():
            _mutable_ids(v, seen)
    return seen


def test_copy_state_equals_the_original_and_shares_nothing_mutable() -> None:
    state = world()
    st.apply(state, Event(1, 1, 1, "c9", 3, "logout", {"sid": "s-carol"}))
    copied = st.copy_state(state)
    assert copied == state and copied is not state
    assert st.canonical(copied) == st.canonical(state)
    shared = _mutable_ids(state).keys() & _mutable_ids(copied).keys()
    assert not shared, [_mutable_ids(state)[i] for i in shared]
    assert st.canonical(copy.deepcopy(state)) == st.canonical(copied)
    # A field added to the state must be added to copy_state too, then here.
    assert [f.name for f in fields(st.State)] == ["users", "groups", "sessions", "files",
                                                   "outcomes"]


def test_changing_a_copy_leaves_the_original_alone() -> None:
    state = world()
    before = st.canonical(state)
    copied = st.copy_state(state)
    st.apply(copied, Event(1, 1, 1, "c-alice", 9, "leave_group", {"group": "g1", "user": "alice"}))
    st.apply(copied, Event(1, 2, 2, "", 0, "logout", {"sid": "s-bob"}))
    st.apply(copied, Event(1, 3, 3, "", 0, "accept_request",
                           {"group": "g1", "user": "bob", "member": "dave"}))
    assert st.canonical(copied) != before
    assert st.canonical(state) == before


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


def test_a_timestamp_at_the_top_of_the_range_leaves_room_for_storable_stamps() -> None:
    """A hostile event stamped 2**63 - 1 must not push every later stamp past what the
    log can store (sqlite's signed 64-bit integers)."""
    clock = HybridClock(lambda: 1000)
    clock.observe(2**63 - 1)
    stamps = [clock.now() for _ in range(1000)]
    assert stamps == sorted(set(stamps))
    assert stamps[0] > OBSERVE_CEILING and stamps[-1] < 2**63


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
