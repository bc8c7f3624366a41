"""RequestQueue: requests in arrival order, and a count per user that always matches
what is waiting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from peers.request_queue import Request, RequestQueue

pytestmark = pytest.mark.timeout(30)

KEY = ("g", "f.bin")


def test_requests_come_out_in_order_and_held_ones_go_back_in_front() -> None:
    queue = RequestQueue()
    requests = [(b"a", KEY, 0, "ann"), (b"b", KEY, 1, "bob"), (b"c", KEY, 2, "ann")]
    for request in requests:
        queue.append(request)
    assert len(queue) == 3 and queue.count("ann") == 2 and queue.count("bob") == 1
    held = [queue.popleft(), queue.popleft()]
    assert queue.count("ann") == 1 and queue.count("bob") == 0
    queue.put_back(held)
    assert [queue.popleft() for _ in range(3)] == requests
    assert len(queue) == 0 and queue.count("ann") == 0
    with pytest.raises(IndexError):
        queue.first()


def test_drop_removes_what_it_is_told_and_recounts() -> None:
    queue = RequestQueue()
    for index in range(4):
        queue.append((b"a", KEY, index, "ann" if index % 2 else "bob"))
    queue.drop(lambda request: request[3] == "ann")
    assert queue.count("ann") == 0 and queue.count("bob") == 2
    assert (b"a", KEY, 2, "bob") in queue and (b"a", KEY, 1, "ann") not in queue


OPS = hst.lists(hst.one_of(
    hst.tuples(hst.just("append"), hst.sampled_from(["ann", "bob", "cy"]), hst.integers(0, 3)),
    hst.tuples(hst.just("pop"), hst.just(""), hst.just(0)),
    hst.tuples(hst.just("put_back"), hst.just(""), hst.just(0)),
    hst.tuples(hst.just("drop"), hst.sampled_from(["ann", "bob", "cy"]), hst.integers(0, 3)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=OPS)
def test_counts_always_match_what_is_waiting(ops: list[tuple[str, str, int]]) -> None:
    queue, model = RequestQueue(), []
    taken: list[Request] = []
    for op, user, index in ops:
        if op == "append":
            queue.append((b"x", KEY, index, user))
            model.append((b"x", KEY, index, user))
        elif op == "pop" and model:
            taken.append(queue.popleft())
            assert taken[-1] == model.pop(0)
        elif op == "put_back":
            queue.put_back(taken)
            model[:0] = taken
            taken = []
        elif op == "drop":
            def unwanted(request: Request, who: str = user, piece: int = index) -> bool:
                return request[3] == who and request[2] == piece

            queue.drop(unwanted)
            model = [r for r in model if not unwanted(r)]
        assert len(queue) == len(model)
        for who in ("ann", "bob", "cy"):
            assert queue.count(who) == sum(1 for r in model if r[3] == who)
    assert [queue.popleft() for _ in range(len(model))] == model
