"""Ticket answers: how long a yes holds, when to ask again, and the thread that asks."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.errors import LocalError
from peers.ticket_checks import (
    REFRESH_AHEAD,
    TICKET_CACHE_SECONDS,
    Credentials,
    TicketCache,
    TicketChecker,
    Verdict,
)

pytestmark = pytest.mark.timeout(30)

BOB: Credentials = ("bob", "g", "t1")


def test_a_yes_holds_for_the_cache_period_and_is_asked_again_before_it_ends() -> None:
    cache = TicketCache()
    assert not cache.valid(BOB, 100.0) and cache.due(BOB, 100.0)
    assert cache.ask(BOB, 100.0)
    assert not cache.due(BOB, 100.0) and not cache.ask(BOB, 100.0)  # once is enough
    assert cache.answered(BOB, True, 100.0)
    assert BOB not in cache.asking
    end = 100.0 + TICKET_CACHE_SECONDS
    assert cache.valid(BOB, end - 0.01)
    assert not cache.due(BOB, end - REFRESH_AHEAD - 0.01)
    assert cache.due(BOB, end - REFRESH_AHEAD)  # in use near the end: ask again now
    assert not cache.valid(BOB, end)


def test_a_yes_is_served_on_while_asked_about_again_only_if_it_held_when_asked() -> None:
    cache = TicketCache()
    cache.ask(BOB, 100.0)
    assert not cache.servable(BOB, 100.0)  # never vouched for: waits for the answer
    cache.answered(BOB, True, 100.0)
    end = 100.0 + TICKET_CACHE_SECONDS
    assert cache.servable(BOB, end - 0.01) and not cache.servable(BOB, end)
    cache.ask(BOB, end - REFRESH_AHEAD)
    assert cache.servable(BOB, end + 7.0)  # the tracker is slow to answer
    cache.answered(BOB, False, end + 7.0)
    assert not cache.servable(BOB, end + 7.0)
    # A yes that ran out unused is not served on while asked about again.
    cache.answered(BOB, True, 200.0)
    cache.ask(BOB, 200.0 + TICKET_CACHE_SECONDS + 60.0)
    assert not cache.servable(BOB, 200.0 + TICKET_CACHE_SECONDS + 60.0)


def test_a_refusal_ends_a_yes_at_once_and_is_not_remembered() -> None:
    cache = TicketCache()
    cache.answered(BOB, True, 100.0)
    cache.ask(BOB, 101.0)
    assert not cache.answered(BOB, False, 101.0)
    assert not cache.valid(BOB, 101.0)
    assert cache.due(BOB, 101.0)  # they may have joined again: ask next time


def test_with_no_tracker_only_a_ticket_good_when_asked_holds_one_period_more() -> None:
    cache = TicketCache()
    cache.ask(BOB, 100.0)
    assert not cache.answered(BOB, None, 100.0)  # never vouched for
    assert not cache.valid(BOB, 100.0)
    cache.answered(BOB, True, 100.0)
    cache.ask(BOB, 104.5)  # in use, about to run out
    assert cache.answered(BOB, None, 108.0)  # the call gave up after a while
    assert cache.valid(BOB, 108.0 + TICKET_CACHE_SECONDS - 0.01)
    assert not cache.valid(BOB, 108.0 + TICKET_CACHE_SECONDS)
    # Unused since its yes ran out (the user may have left meanwhile): not held over.
    cache.ask(BOB, 200.0)
    assert not cache.answered(BOB, None, 208.0)
    assert not cache.servable(BOB, 208.0)


def test_many_tickets_stay_bounded_keeping_those_still_good(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("peers.ticket_checks.MAX_CACHED", 10)
    cache = TicketCache()
    for n in range(10):
        cache.answered(("u", "g", str(n)), True, 0.0)
    cache.answered(BOB, True, 100.0)  # the old ten have expired
    assert len(cache._until) == 1 and cache.valid(BOB, 101.0)


@given(st.lists(st.tuples(st.floats(0, 10), st.booleans(),
                          st.sampled_from([True, False, None])), max_size=30),
       st.floats(0, 10))
def test_valid_means_a_trusting_answer_within_the_period_and_no_refusal_since(
        steps: list[tuple[float, bool, Verdict]], after: float) -> None:
    cache = TicketCache()
    now, trusted_at = 0.0, None
    for gap, ask_first, verdict in steps:
        now += gap
        good_when_asked = False
        if ask_first:
            good_when_asked = cache.valid(BOB, now)
            cache.ask(BOB, now)
            now += gap  # the answer takes a while
        trusted = cache.answered(BOB, verdict, now)
        assert trusted == (verdict is True or (verdict is None and good_when_asked))
        trusted_at = now if trusted else None
        assert not cache.asking
    now += after
    expected = trusted_at is not None and now < trusted_at + TICKET_CACHE_SECONDS
    assert cache.valid(BOB, now) == expected


def test_the_checker_asks_in_turn_and_says_when_no_tracker_could_tell() -> None:
    woken = threading.Semaphore(0)

    def check(user: str, _group: str, _ticket: str) -> bool:
        if user == "down":
            raise LocalError("no tracker answered within 8 s", "no_tracker")
        if user == "bug":
            raise RuntimeError("a bug")
        return user == "bob"

    checker = TicketChecker(check, woken.release)
    checker.start()
    try:
        asked = [BOB, ("eve", "g", "x"), ("down", "g", "x"), ("bug", "g", "x")]
        for credentials in asked:
            checker.ask(credentials)
        answers: list[tuple[Credentials, Verdict]] = []
        while len(answers) < len(asked):
            assert woken.acquire(timeout=5)
            answers += checker.answers()
        assert answers == list(zip(asked, [True, False, None, None], strict=True))
        assert checker.answers() == []
    finally:
        checker.stop()


def test_a_stopped_checker_asks_nothing_more() -> None:
    asked: list[str] = []
    first = threading.Event()
    release = threading.Event()

    def check(user: str, _group: str, _ticket: str) -> bool:
        asked.append(user)
        first.set()
        assert release.wait(10)
        return True

    checker = TicketChecker(check, lambda: None)
    checker.start()
    for n in range(20):
        checker.ask((f"u{n}", "g", "t"))
    assert first.wait(5)
    checker.stop()  # while the first call hangs
    release.set()
    checker._thread.join(5)
    assert not checker._thread.is_alive()
    assert asked == ["u0"]
