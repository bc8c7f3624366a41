"""Ticket answers: how long a yes holds, when to ask again, and the thread that asks."""

from __future__ import annotations

import threading
import types
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.errors import LocalError, ProtocolError
from p2p.messages.tracker import MAX_TICKETS_PER_CHECK
from peers.client import Client
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


def _collect(checker: TicketChecker, woken: threading.Semaphore,
             n: int) -> list[tuple[Credentials, Verdict]]:
    answers: list[tuple[Credentials, Verdict]] = []
    while len(answers) < n:
        assert woken.acquire(timeout=5)
        answers += checker.answers()
    return answers


def test_the_checker_says_what_a_tracker_said_or_that_none_could_tell() -> None:
    woken = threading.Semaphore(0)

    def check(asked: list[Credentials]) -> list[bool]:
        users = [user for user, _group, _ticket in asked]
        if "down" in users:
            raise LocalError("no tracker answered within 8 s", "no_tracker")
        if "bug" in users:
            raise RuntimeError("a bug")
        if "short" in users:
            return [True]  # fewer verdicts than tickets: believe none of them
        return [user == "bob" for user in users]

    checker = TicketChecker(check, woken.release)
    checker.start()
    try:
        cases: list[tuple[list[Credentials], list[Verdict]]] = [
            ([BOB, ("eve", "g", "x")], [True, False]),
            ([("down", "g", "x")], [None]),
            ([("bug", "g", "x")], [None]),
            ([BOB, ("short", "g", "x")], [None, None])]
        for asked, verdicts in cases:
            for credentials in asked:
                checker.ask(credentials)
            assert _collect(checker, woken, len(asked)) == list(zip(asked, verdicts,
                                                                    strict=True))
        assert checker.answers() == []
    finally:
        checker.stop()


def test_tickets_that_queue_while_a_call_is_out_go_in_the_next_calls_together() -> None:
    """A flood of made-up tickets costs a real one a few round trips, not one each."""
    woken = threading.Semaphore(0)
    calls: list[list[str]] = []
    first = threading.Event()
    release = threading.Event()

    def check(asked: list[Credentials]) -> list[bool]:
        calls.append([user for user, _group, _ticket in asked])
        first.set()
        assert release.wait(10)
        return [user == "bob" for user, _group, _ticket in asked]

    checker = TicketChecker(check, woken.release)
    checker.start()
    try:
        checker.ask(("u0", "g", "x"))
        assert first.wait(5)  # the first call is out
        flood = [(f"u{n}", "g", "x") for n in range(1, 2 * MAX_TICKETS_PER_CHECK + 1)]
        for credentials in [*flood, BOB]:
            checker.ask(credentials)
        release.set()
        answers = dict(_collect(checker, woken, len(flood) + 2))
        assert answers[BOB] is True and not any(answers[c] for c in flood)
        assert [len(c) for c in calls] == [1, MAX_TICKETS_PER_CHECK, MAX_TICKETS_PER_CHECK, 1]
        assert calls[-1] == ["bob"]
    finally:
        checker.stop()


def test_a_stopped_checker_asks_nothing_more() -> None:
    asked: list[list[str]] = []
    first = threading.Event()
    release = threading.Event()

    def check(batch: list[Credentials]) -> list[bool]:
        asked.append([user for user, _group, _ticket in batch])
        first.set()
        assert release.wait(10)
        return [True] * len(batch)

    checker = TicketChecker(check, lambda: None)
    checker.start()
    checker.ask(("u0", "g", "t"))
    assert first.wait(5)
    for n in range(1, 20):
        checker.ask((f"u{n}", "g", "t"))
    checker.stop()  # while the first call hangs
    release.set()
    checker._thread.join(5)
    assert not checker._thread.is_alive()
    assert asked == [["u0"]]


class _Tracker:
    """A tracker connection that records calls; ``batch`` says what check_tickets does."""

    def __init__(self, batch: str) -> None:
        self.batch = batch
        self.calls: list[tuple[str, Any]] = []

    def call(self, op: str, args: dict[str, Any]) -> Any:
        self.calls.append((op, args))
        if self.batch == "down":
            raise LocalError("no tracker answered within 8 s", "no_tracker")
        if self.batch == "ended":
            raise ProtocolError("not logged in", "not_logged_in")
        if op == "check_tickets":
            if self.batch == "old":
                raise ProtocolError("unknown command 'check_tickets'", "unknown_command")
            return [t["user"] == "bob" for t in args["tickets"]]
        if args["user"] != "bob":
            raise ProtocolError("nope", "bad_ticket")
        return None


def _client(tracker: _Tracker, user: str | None = "me") -> Any:
    fake = types.SimpleNamespace(user=user, tracker=tracker)
    fake._check_ticket = lambda *c: Client._check_ticket(fake, *c)  # type: ignore[arg-type]
    return fake


ASKED: list[Credentials] = [BOB, ("a b", "g", "x"), ("eve", "g", "x"), ("bob", "", "x")]


def test_the_client_asks_once_and_never_about_ids_a_tracker_would_refuse() -> None:
    tracker = _Tracker("new")
    assert Client._check_tickets(_client(tracker), ASKED) == [True, False, False, False]
    assert tracker.calls == [("check_tickets", {"tickets": [
        {"user": "bob", "group": "g", "ticket": "t1"},
        {"user": "eve", "group": "g", "ticket": "x"}]})]


def test_the_client_asks_an_older_tracker_one_ticket_at_a_time() -> None:
    tracker = _Tracker("old")
    assert Client._check_tickets(_client(tracker), ASKED) == [True, False, False, False]
    assert [op for op, _args in tracker.calls] == ["check_tickets", "check_ticket",
                                                   "check_ticket"]


def test_the_client_says_when_no_tracker_answered_and_refuses_when_logged_out() -> None:
    with pytest.raises(ProtocolError) as err:
        Client._check_tickets(_client(_Tracker("down")), ASKED)
    assert err.value.code == "no_tracker"
    tracker = _Tracker("new")
    assert Client._check_tickets(_client(tracker, user=None), ASKED) == [False] * 4
    assert tracker.calls == []


def test_a_server_whose_own_session_ended_cannot_tell_rather_than_says_no() -> None:
    # Its downloaders are members all the same: a refusal would send them away as
    # non-members, where "cannot check now" has them come back in a moment.
    tracker = _Tracker("ended")
    with pytest.raises(ProtocolError) as err:
        Client._check_tickets(_client(tracker), ASKED)
    assert err.value.code == "not_logged_in"
    assert [op for op, _args in tracker.calls] == ["check_tickets"]
    with pytest.raises(ProtocolError):
        Client._check_ticket(_client(tracker), *BOB)
