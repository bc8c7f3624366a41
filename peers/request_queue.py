"""Piece requests waiting at a piece server, oldest first, counted per user.

The count lets the server bound what one user can have waiting, over all their
connections.  Pure bookkeeping: no I/O.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable

from peers.shares import Key

__all__ = ["Request", "RequestQueue"]

# the downloader's identity on the ROUTER, the file, the piece index, the user
Request = tuple[bytes, Key, int, str]


class RequestQueue:
    """Requests in arrival order; ``count`` says how many one user has waiting."""

    def __init__(self) -> None:
        self._requests: collections.deque[Request] = collections.deque()
        self._per: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, request: object) -> bool:
        return request in self._requests

    def count(self, user: str) -> int:
        """Requests ``user`` has waiting."""
        return self._per[user]

    def append(self, request: Request) -> None:
        self._requests.append(request)
        self._per[request[3]] += 1

    def first(self) -> Request:
        """The oldest request (IndexError if none)."""
        return self._requests[0]

    def popleft(self) -> Request:
        """Take the oldest request out (IndexError if none)."""
        request = self._requests.popleft()
        self._uncount(request[3])
        return request

    def put_back(self, requests: Iterable[Request]) -> None:
        """Put requests taken with ``popleft`` back in front, in the order given."""
        requests = list(requests)
        self._requests.extendleft(reversed(requests))
        for request in requests:
            self._per[request[3]] += 1

    def drop(self, unwanted: Callable[[Request], bool]) -> None:
        """Remove every request ``unwanted`` says yes to."""
        if any(unwanted(r) for r in self._requests):
            self._requests = collections.deque(r for r in self._requests if not unwanted(r))
            self._per = collections.Counter(r[3] for r in self._requests)

    def _uncount(self, user: str) -> None:
        self._per[user] -= 1
        if self._per[user] <= 0:
            del self._per[user]
