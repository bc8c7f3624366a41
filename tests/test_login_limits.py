"""The pure bounds on password hashing: slots per source and in all, and wrong-password
counts per (user, source) over a sliding window."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trackers.login_limits import Guesses, HashSlots

pytestmark = pytest.mark.timeout(60)


def test_a_source_gets_at_most_its_slots_and_others_still_get_theirs() -> None:
    slots = HashSlots(per_source=2, total=5)
    assert [slots.admit("a") for _ in range(3)] == [True, True, False]
    assert slots.admit("b") and slots.admit("b") and slots.admit("c")
    assert not slots.admit("d")  # the tracker is full
    slots.release("a")
    assert slots.admit("d") and len(slots) == 5


def test_releasing_a_slot_never_taken_is_a_bug() -> None:
    with pytest.raises(ValueError):
        HashSlots().release("a")


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcd")), max_size=200),
       st.integers(1, 4), st.integers(1, 10))
def test_slots_never_exceed_either_bound(ops: list[tuple[bool, str]], per_source: int,
                                         total: int) -> None:
    slots = HashSlots(per_source, total)
    held: dict[str, int] = {}
    for take, source in ops:
        if take:
            ok = slots.admit(source)
            assert ok == (held.get(source, 0) < per_source and sum(held.values()) < total)
            held[source] = held.get(source, 0) + ok
        elif held.get(source):
            slots.release(source)
            held[source] -= 1
        assert len(slots) == sum(held.values()) <= total
        assert all(n <= per_source for n in held.values())


def test_the_sixth_guess_within_the_window_waits_until_the_first_leaves_it() -> None:
    g = Guesses(limit=5, window=60.0)
    for t in range(5):
        assert g.wait("alice", "1.2.3.4", 100.0 + t) == 0.0
        g.failed("alice", "1.2.3.4", 100.0 + t)
    assert g.wait("alice", "1.2.3.4", 110.0) == pytest.approx(50.0)
    assert g.left("alice", "1.2.3.4", 110.0) == 0
    assert g.left("alice", "1.2.3.4", 160.0) == 1
    assert g.wait("alice", "5.6.7.8", 110.0) == 0.0  # elsewhere: not locked out
    assert g.wait("bob", "1.2.3.4", 110.0) == 0.0
    assert g.wait("alice", "1.2.3.4", 160.0) == 0.0  # the first failure left the window
    g.failed("alice", "1.2.3.4", 160.0)
    assert g.wait("alice", "1.2.3.4", 160.0) == pytest.approx(1.0)  # the second's turn


def test_the_right_password_clears_the_count() -> None:
    g = Guesses(limit=3, window=60.0)
    for t in range(2):
        g.failed("alice", "a", float(t))
    g.succeeded("alice", "a")
    for t in range(2):
        g.failed("alice", "a", 10.0 + t)
    assert g.wait("alice", "a", 12.0) == 0.0


def test_made_up_names_never_grow_the_table_beyond_its_bound() -> None:
    g = Guesses(limit=2, window=60.0, max_keys=100)
    for n in range(10_000):
        g.failed(f"user{n}", "a", 0.0)
    assert len(g) == 100
    g.failed("user0", "b", 61.0)
    assert len(g) <= 100
    assert g.wait("alice", "a", 0.0) == 0.0


@given(st.lists(st.tuples(st.sampled_from(["fail", "ok", "ask"]), st.sampled_from("xy"),
                          st.floats(0, 5)), max_size=80),
       st.integers(1, 4), st.floats(0.5, 20))
def test_wait_matches_counting_the_failures_in_the_window(
        ops: list[tuple[str, str, float]], limit: int, window: float) -> None:
    g = Guesses(limit=limit, window=window, max_keys=10)
    model: dict[str, list[float]] = {}
    now = 0.0
    for op, user, step in ops:
        now += step
        if op == "fail":
            g.failed(user, "s", now)
            model.setdefault(user, []).append(now)
        elif op == "ok":
            g.succeeded(user, "s")
            model.pop(user, None)
        recent = [t for t in model.get(user, []) if now - t < window]
        expected = recent[-limit] + window - now if len(recent) >= limit else 0.0
        assert g.wait(user, "s", now) == pytest.approx(expected)
        assert 0.0 <= g.wait(user, "s", now) <= window
