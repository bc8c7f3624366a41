"""RecentPieces: a piece is kept for the sends it was kept for, then dropped; never
more than its capacity, least recently used first out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from peers.recent_pieces import PieceKey, RecentPieces

pytestmark = pytest.mark.timeout(30)


def key(index: int) -> PieceKey:
    return ("g", "f.bin", "ab" * 20, index)


def test_a_piece_is_dropped_after_the_sends_it_was_kept_for() -> None:
    recent = RecentPieces(4)
    recent.keep(key(0), b"zero", wanted=2)
    assert recent.take(key(0)) == b"zero"
    assert key(0) in recent
    assert recent.take(key(0)) == b"zero"
    assert key(0) not in recent and len(recent) == 0
    assert recent.take(key(0)) is None


def test_nobody_else_wanting_it_keeps_nothing() -> None:
    recent = RecentPieces(4)
    recent.keep(key(0), b"zero", wanted=0)
    assert len(recent) == 0 and recent.take(key(0)) is None
    recent.keep(key(1), b"one", wanted=1)
    recent.keep(key(1), b"one", wanted=0)  # kept again for no one: forgotten
    assert key(1) not in recent


def test_the_least_recently_used_goes_first_beyond_capacity() -> None:
    recent = RecentPieces(2)
    recent.keep(key(0), b"zero", wanted=5)
    recent.keep(key(1), b"one", wanted=5)
    assert recent.take(key(0)) == b"zero"  # now more recent than 1
    recent.keep(key(2), b"two", wanted=5)
    assert key(1) not in recent
    assert key(0) in recent and key(2) in recent


def test_no_capacity_keeps_nothing_and_clear_forgets_all() -> None:
    nothing = RecentPieces(0)
    nothing.keep(key(0), b"zero", wanted=3)
    assert len(nothing) == 0
    recent = RecentPieces(3)
    for index in range(3):
        recent.keep(key(index), b"x", wanted=1)
    recent.clear()
    assert len(recent) == 0
    with pytest.raises(ValueError):
        RecentPieces(-1)


OPS = hst.lists(hst.one_of(
    hst.tuples(hst.just("keep"), hst.integers(0, 6), hst.integers(-1, 4)),
    hst.tuples(hst.just("take"), hst.integers(0, 6), hst.just(0)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(capacity=hst.integers(0, 4), ops=OPS)
def test_takes_never_outnumber_what_a_piece_was_kept_for(
        capacity: int, ops: list[tuple[str, int, int]]) -> None:
    recent = RecentPieces(capacity)
    left: dict[int, int] = {}  # sends still allowed since each piece was last kept
    for op, index, wanted in ops:
        if op == "keep":
            recent.keep(key(index), bytes([index]), wanted)
            left[index] = max(wanted, 0) if capacity else 0
        else:
            got = recent.take(key(index))
            if got is not None:
                assert got == bytes([index])
                assert left.get(index, 0) > 0
                left[index] -= 1
        assert len(recent) <= capacity
        for kept in range(7):
            if key(kept) in recent:
                assert left.get(kept, 0) > 0
