"""trackers.catch_ups: the latest catch-up request per connection, a bounded line of them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.messages.sync import CatchUp
from trackers.catch_ups import CatchUpQueue, Offer

pytestmark = pytest.mark.timeout(60)


def test_a_connections_flood_becomes_one_request_with_its_latest_vector() -> None:
    queue = CatchUpQueue()
    assert queue.offer(b"eve", CatchUp(2, {1: 0})) is Offer.QUEUED
    for seq in range(1, 2000):
        assert queue.offer(b"eve", CatchUp(2, {1: seq})) is Offer.COALESCED
    assert queue.take(10) == [(b"eve", CatchUp(2, {1: 1999}))]
    assert len(queue) == 0


def test_oldest_connection_first_and_a_coalesced_one_keeps_its_place() -> None:
    queue = CatchUpQueue()
    for who in (b"a", b"b", b"c"):
        queue.offer(who, CatchUp(2, {}))
    queue.offer(b"a", CatchUp(3, {2: 5}))  # a newer one from a: still first in line
    assert queue.take(2) == [(b"a", CatchUp(3, {2: 5})), (b"b", CatchUp(2, {}))]
    # Once answered, a connection's next request goes to the back of the line.
    assert queue.offer(b"a", CatchUp(3, {2: 9})) is Offer.QUEUED
    assert [who for who, _ in queue.take(5)] == [b"c", b"a"]
    assert queue.take(5) == []


def test_beyond_the_limit_a_new_connection_is_dropped_and_a_waiting_one_still_coalesces(
        ) -> None:
    queue = CatchUpQueue(limit=2)
    assert queue.offer(b"a", CatchUp(2, {})) is Offer.QUEUED
    assert queue.offer(b"b", CatchUp(2, {})) is Offer.QUEUED
    assert queue.offer(b"c", CatchUp(2, {})) is Offer.DROPPED
    assert queue.offer(b"b", CatchUp(2, {1: 1})) is Offer.COALESCED
    assert len(queue) == 2
    queue.take(1)
    assert queue.offer(b"c", CatchUp(2, {})) is Offer.QUEUED  # room again


offers = st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c", b"d", b"e"]),
                            st.integers(0, 100)), max_size=60)


@given(offers, st.integers(1, 4), st.integers(1, 3))
def test_at_most_limit_waiting_each_once_with_its_latest_vector(
        sent: list[tuple[bytes, int]], limit: int, per_turn: int) -> None:
    queue = CatchUpQueue(limit=limit)
    latest: dict[bytes, int] = {}
    for who, seq in sent:
        offer = queue.offer(who, CatchUp(2, {1: seq}))
        if offer is not Offer.DROPPED:
            latest[who] = seq
        assert len(queue) <= limit
    answered: list[tuple[bytes, CatchUp]] = []
    while batch := queue.take(per_turn):
        assert len(batch) <= per_turn
        answered.extend(batch)
    assert len({who for who, _ in answered}) == len(answered)
    assert {who: request.vector[1] for who, request in answered} == latest
