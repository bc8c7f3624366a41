"""p2p.bounded_log: the first lines of each kind and source in a window, then one count."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.bounded_log import OTHER_SOURCES, BoundedLog, LineBudget, Summary

pytestmark = pytest.mark.timeout(60)


def test_a_burst_then_held_back_then_told_when_the_window_ends() -> None:
    budget = LineBudget(burst=3, window=10.0)
    admitted = [budget.admit("malformed requests", "10.0.0.7", 100.0 + i * 0.01)
                for i in range(1000)]
    assert admitted == [True] * 3 + [False] * 997
    assert budget.ended(109.99) == []  # still in the window
    assert budget.ended(110.0) == [Summary("malformed requests", "10.0.0.7", 997, 10.0)]
    assert budget.ended(200.0) == []  # told once
    # The next line starts a new window with a burst of its own.
    assert budget.admit("malformed requests", "10.0.0.7", 200.0)


def test_a_window_without_lines_held_back_ends_silently() -> None:
    budget = LineBudget(burst=3, window=10.0)
    assert all(budget.admit("k", "s", 0.0) for _ in range(3))
    assert budget.ended(10.0) == []


def test_each_kind_and_source_has_its_own_budget() -> None:
    budget = LineBudget(burst=1, window=10.0)
    assert budget.admit("bad", "a", 0.0) and not budget.admit("bad", "a", 0.0)
    assert budget.admit("bad", "b", 0.0)  # another source
    assert budget.admit("worse", "a", 0.0)  # another kind
    assert not budget.admit("bad", "b", 1.0)
    assert budget.ended(10.0) == [Summary("bad", "a", 1, 10.0), Summary("bad", "b", 1, 10.0)]


def test_windows_end_in_the_order_they_started() -> None:
    budget = LineBudget(burst=1, window=10.0)
    for start, source in ((0.0, "a"), (4.0, "b"), (8.0, "c")):
        budget.admit("bad", source, start)
        budget.admit("bad", source, start)
    assert [s.source for s in budget.ended(12.0)] == ["a"]
    assert [s.source for s in budget.ended(18.0)] == ["b", "c"]


def test_a_window_found_over_by_admit_is_still_told() -> None:
    """Without ended() in between, the next line about the same key closes the old
    window: its count is kept for the next ended(), not lost."""
    budget = LineBudget(burst=1, window=10.0)
    budget.admit("bad", "a", 0.0)
    budget.admit("bad", "a", 1.0)
    assert budget.admit("bad", "a", 15.0)  # a new window
    assert not budget.admit("bad", "a", 16.0)
    assert budget.ended(16.0) == [Summary("bad", "a", 1, 10.0)]
    assert budget.ended(25.0) == [Summary("bad", "a", 1, 10.0)]


def test_sources_beyond_the_table_share_one_budget_per_kind() -> None:
    budget = LineBudget(burst=1, window=10.0, max_sources=2)
    assert budget.admit("bad", "a", 0.0) and budget.admit("bad", "b", 0.0)
    assert budget.admit("bad", "c", 0.0)  # the first of the others
    assert not any(budget.admit("bad", f"x{i}", 0.0) for i in range(500))
    assert budget.admit("other kind", "y", 0.0)  # one other-sources entry per kind
    assert budget.ended(10.0) == [Summary("bad", OTHER_SOURCES, 500, 10.0)]


@given(st.lists(st.tuples(st.sampled_from(["k1", "k2"]), st.sampled_from(["a", "b", "c"]),
                          st.floats(0, 5)), max_size=300))
def test_every_line_is_written_or_counted_once(
        lines: list[tuple[str, str, float]]) -> None:
    budget = LineBudget(burst=2, window=10.0)
    now, written, told = 0.0, 0, 0
    for kind, source, step in lines:
        now += step
        written += budget.admit(kind, source, now)
        if step > 4:  # the owner's loop flushes now and then
            told += sum(s.held for s in budget.ended(now))
    told += sum(s.held for s in budget.ended(now + 10.0))
    assert written + told == len(lines)
    # At most burst lines per key and window, and a window lasts 10 s.
    assert written <= 2 * 6 * (now // 10 + 2)


def test_bounded_log_writes_the_lines_and_the_summary(caplog: pytest.LogCaptureFixture) -> None:
    now = [50.0]
    logger = logging.getLogger("tests.bounded_log")
    bounded = BoundedLog(logger, LineBudget(burst=2, window=10.0), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="tests.bounded_log"):
        for i in range(20_000):
            bounded.warning("malformed requests", "10.0.0.7", "bad request %d from %s", i,
                            "10.0.0.7")
        bounded.flush()
        now[0] = 60.0
        bounded.flush()
        bounded.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "bad request 0 from 10.0.0.7", "bad request 1 from 10.0.0.7",
        "... and 19998 more malformed requests from 10.0.0.7 in the last 10 s"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_bounded_log_keeps_a_traceback_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    bounded = BoundedLog(logging.getLogger("tests.bounded_log"), clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="tests.bounded_log"):
        try:
            raise RuntimeError("a bug")
        except RuntimeError:
            assert bounded.warning("broken handlers", "", "it broke", exc_info=True)
    [record] = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


def test_a_summary_without_a_source_says_none() -> None:
    assert Summary("odd messages", "", 3, 10.0).line() == (
        "... and 3 more odd messages in the last 10 s")
