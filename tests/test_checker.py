"""Pieces checked and written on worker threads: results, bad pieces, write errors."""

from __future__ import annotations

import errno
import hashlib
import os
import select
import time
from pathlib import Path

import pytest

from p2p.pieces import PIECE_SIZE, piece_count, piece_range
from peers.checker import Checked, PieceChecker
from peers.storage import PartialDownload

pytestmark = pytest.mark.timeout(30)

SIZE = 6 * PIECE_SIZE + 123


@pytest.fixture
def data() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def partial(tmp_path: Path, data: bytes) -> PartialDownload:
    hashes = [hashlib.sha1(data[o:o + n]).digest()
              for o, n in (piece_range(i, SIZE) for i in range(piece_count(SIZE)))]
    return PartialDownload.open(tmp_path / "f.bin", SIZE, hashlib.sha1(data).hexdigest(), hashes,
                                tmp_path / "f.resume")


def piece(data: bytes, index: int) -> bytes:
    offset, length = piece_range(index, SIZE)
    return data[offset:offset + length]


def collect(checker: PieceChecker, count: int) -> list[Checked]:
    """Wait (on the descriptor, as the download loop does) for ``count`` results."""
    results: list[Checked] = []
    deadline = time.monotonic() + 10
    while len(results) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(results)} of {count} results"
        readable, _, _ = select.select([checker.fileno()], [], [], left)
        if readable:
            results += checker.done()
    return results


def test_good_pieces_are_stored_but_count_only_when_committed(
        partial: PartialDownload, data: bytes) -> None:
    checker = PieceChecker(partial, workers=2)
    try:
        for i in range(piece_count(SIZE)):
            checker.submit(i, piece(data, i))
        results = collect(checker, piece_count(SIZE))
    finally:
        checker.close()
    assert sorted(r.index for r in results) == list(range(piece_count(SIZE)))
    assert all(r.view is not None and r.error is None for r in results)
    assert partial.have.count() == 0  # stored, not yet committed
    for r in results:
        assert r.view is not None
        partial.commit(r.index, r.view)
    partial.finish()
    partial.close()
    assert partial.final_path.read_bytes() == data


def test_a_bad_piece_is_reported_and_never_written(partial: PartialDownload,
                                                   data: bytes) -> None:
    checker = PieceChecker(partial, workers=2)
    bad = bytearray(piece(data, 2))
    bad[100] ^= 1
    try:
        checker.submit(2, bytes(bad))
        checker.submit(3, piece(data, 3)[:-1])  # short
        results = collect(checker, 2)
    finally:
        checker.close()
    assert {r.index: (r.view, r.error) for r in results} == {2: (None, None), 3: (None, None)}
    with open(partial.part_path, "rb") as f:
        f.seek(2 * PIECE_SIZE)
        assert f.read(2 * PIECE_SIZE) == b"\0" * (2 * PIECE_SIZE)
    partial.discard()


def test_a_write_error_reaches_the_caller(partial: PartialDownload, data: bytes,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(index: int, view: memoryview) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(partial, "store", full_disk)
    checker = PieceChecker(partial, workers=1)
    try:
        checker.submit(0, piece(data, 0))
        [result] = collect(checker, 1)
    finally:
        checker.close()
    assert result.view is None
    assert result.error is not None and result.error.errno == errno.ENOSPC
    partial.discard()


def test_close_finishes_what_was_submitted_and_stops_the_threads(
        partial: PartialDownload, data: bytes) -> None:
    checker = PieceChecker(partial, workers=2)
    for i in range(piece_count(SIZE)):
        checker.submit(i, piece(data, i))
    checker.close()
    assert not any(t.is_alive() for t in checker._threads)
    with open(partial.part_path, "rb") as f:
        assert f.read() == data  # every submitted piece was written before close returned
    partial.discard()
