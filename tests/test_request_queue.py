"""RequestQueue: requests in arrival order, and a count per downloader that always
matches what is waiting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from peers.request_queue import Request, RequestQueue

pytestmark = pytest.mark.timeout(30)

KEY = ("g", "f.bin")


def test_requests_come_out_in_order_and_held_ones_go_back_in_front() -> None:
    queue = RequestQueue()
    for ident, index in [(b"a", 0), (b"b", 1), (b"a", 2)]:
        queue.append((ident, KEY, index))
    assert len(queue) == 3 and queue.count(b"a") == 2 and queue.count(b"b") == 1
    held = [queue.popleft(), queue.popleft()]
    assert queue.count(b"a") == 1 and queue.count(b"b") == 0
    queue.put_back(held)
    assert [queue.popleft() for _ in range(3)] == [(b"a", KEY, 0), (b"b", KEY, 1),
                                                   (b"a", KEY, 2)]
    assert len(queue) == 0 and queue.count(b"a") == 0
    with pytest.raises(IndexError):
        queue.first()


def test_drop_removes_what_it_is_told_and_recounts() -> None:
    queue = RequestQueue()
    for index in range(4):
        queue.append((b"a" if index % 2 else b"b", KEY, index))
    queue.drop(lambda request: request[0] == b"a")
    assert queue.count(b"a") == 0 and queue.count(b"b") == 2
    assert (b"b", KEY, 2) in queue and (b"a", KEY, 1) not in queue


OPS = hst.lists(hst.one_of(
    hst.tuples(hst.just("append"), hst.sampled_from([b"a", b"b", b"c"]), hst.integers(0, 3)),
    hst.tuples(hst.just("pop"), hst.just(b""), hst.just(0)),
    hst.tuples(hst.just("put_back"), hst.just(b""), hst.just(0)),
    hst.tuples(hst.just("drop"), hst.sampled_from([b"a", b"b", b"c"]), hst.integers(0, 3)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=OPS)
def test_counts_always_match_what_is_waiting(ops: list[tuple[str, bytes, int]]) -> None:
    queue, model = RequestQueue(), []
    taken: list[Request] = []
    for op, ident, index in ops:
        if op == "append":
            queue.append((ident, KEY, index))
            model.append((ident, KEY, index))
        elif op == "pop" and model:
            taken.append(queue.popleft())
            assert taken[-1] == model.pop(0)
        elif op == "put_back":
            queue.put_back(taken)
            model[:0] = taken
            taken = []
        elif op == "drop":
            def unwanted(request: Request, who: bytes = ident, piece: int = index) -> bool:
                return request[0] == who and request[2] == piece

            queue.drop(unwanted)
            model = [r for r in model if not unwanted(r)]
        assert len(queue) == len(model)
        for who in (b"a", b"b", b"c"):
            assert queue.count(who) == sum(1 for r in model if r[0] == who)
    assert [queue.popleft() for _ in range(len(model))] == model
