"""Pieces a piece server just sent, kept for the other downloaders of the same file.

Downloaders of one file ask for much the same pieces at about the same time.  A
piece kept here is read from disk once and then goes to each of them by
reference (the server sends it without copying), instead of one read and one
copy per downloader.  Pure bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

__all__ = ["PieceKey", "RecentPieces"]

# group, file name, file SHA1, piece index: the bytes under one key never change
PieceKey = tuple[str, str, str, int]


@dataclass(slots=True)
class _Kept:
    data: bytes
    wanted: int  # sends still expected


class RecentPieces:
    """At most ``capacity`` pieces, each kept until the sends it was kept for are done.

    A piece is kept for the downloaders other than the one it was read for
    (``keep``'s ``wanted``); each ``take`` counts one of them, and after the last
    the piece is dropped.  Beyond ``capacity`` the least recently used goes first,
    so memory stays bounded when the others fetch it elsewhere or never.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must not be negative, got {capacity}")
        self._capacity = capacity
        self._kept: collections.OrderedDict[PieceKey, _Kept] = collections.OrderedDict()

    def take(self, key: PieceKey) -> bytes | None:
        """The piece under ``key`` if kept, counting this send; else None."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        kept.wanted -= 1
        if kept.wanted <= 0:
            del self._kept[key]
        else:
            self._kept.move_to_end(key)
        return kept.data

    def keep(self, key: PieceKey, data: bytes, wanted: int) -> None:
        """Keep ``data`` for ``wanted`` more sends (0 or less: not kept)."""
        if wanted <= 0 or self._capacity == 0:
            self._kept.pop(key, None)
            return
        self._kept[key] = _Kept(data, wanted)
        self._kept.move_to_end(key)
        while len(self._kept) > self._capacity:
            self._kept.popitem(last=False)

    def clear(self) -> None:
        self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, key: object) -> bool:
        return key in self._kept
