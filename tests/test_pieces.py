"""Piece arithmetic, streaming file hashing and bitfields."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.pieces import (
    PIECE_SIZE,
    Bitfield,
    FileDigest,
    hash_file,
    piece_count,
    piece_range,
    piece_sha1,
)

pytestmark = pytest.mark.timeout(30)

EDGE_SIZES = [0, 1, PIECE_SIZE - 1, PIECE_SIZE, PIECE_SIZE + 1]


def _expected(data: bytes, piece_size: int) -> FileDigest:
    return FileDigest(
        size=len(data),
        sha1=hashlib.sha1(data).hexdigest(),
        piece_hashes=tuple(
            hashlib.sha1(data[o : o + piece_size]).digest() for o in range(0, len(data), piece_size)
        ),
    )


@pytest.mark.parametrize(
    ("size", "count"),
    [(0, 0), (1, 1), (PIECE_SIZE - 1, 1), (PIECE_SIZE, 1), (PIECE_SIZE + 1, 2)],
)
def test_piece_count(size: int, count: int) -> None:
    assert piece_count(size) == count


def test_piece_range_edges() -> None:
    assert piece_range(0, 1) == (0, 1)
    assert piece_range(0, PIECE_SIZE - 1) == (0, PIECE_SIZE - 1)
    assert piece_range(0, PIECE_SIZE) == (0, PIECE_SIZE)
    assert piece_range(0, PIECE_SIZE + 1) == (0, PIECE_SIZE)
    assert piece_range(1, PIECE_SIZE + 1) == (PIECE_SIZE, 1)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 1), (-1, 10), (2, PIECE_SIZE + 1)])
def test_piece_range_out_of_range(index: int, size: int) -> None:
    with pytest.raises(IndexError):
        piece_range(index, size)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        piece_count(-1)
    with pytest.raises(ValueError):
        piece_count(10, 0)


@given(size=st.integers(0, 10_000), piece_size=st.integers(1, 700))
def test_ranges_tile_the_file(size: int, piece_size: int) -> None:
    n = piece_count(size, piece_size)
    ranges = [piece_range(i, size, piece_size) for i in range(n)]
    end = 0
    for offset, length in ranges:
        assert offset == end
        assert 0 < length <= piece_size
        end += length
    assert end == size
    assert all(length == piece_size for _, length in ranges[:-1])


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_hash_file_edge_sizes(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    digest = hash_file(path)
    assert digest == _expected(data, PIECE_SIZE)
    assert len(digest.piece_hashes) == piece_count(size)
    assert all(len(h) == 20 for h in digest.piece_hashes)
    for i, h in enumerate(digest.piece_hashes):
        offset, length = piece_range(i, size)
        assert piece_sha1(data[offset : offset + length]) == h
        assert piece_sha1(memoryview(data)[offset : offset + length]) == h


def test_hash_file_accepts_str_path(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    assert hash_file(str(path)) == _expected(b"hello", PIECE_SIZE)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=2000), piece_size=st.integers(1, 300))
def test_hash_file_matches_hashlib(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, piece_size: int
) -> None:
    path = tmp_path_factory.mktemp("h") / "f"
    path.write_bytes(data)
    assert hash_file(path, piece_size) == _expected(data, piece_size)


# -- Bitfield ------------------------------------------------------------------


def _bitfields() -> st.SearchStrategy[tuple[int, set[int]]]:
    return st.integers(0, 300).flatmap(
        lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)) if n else st.just(set()))
    )


@given(_bitfields())
def test_bitfield_round_trip(case: tuple[int, set[int]]) -> None:
    n, members = case
    bf = Bitfield(n)
    for i in members:
        bf.add(i)
    assert len(bf) == n
    assert bf.count() == len(members)
    assert list(bf) == sorted(members)
    assert bf.missing() == sorted(set(range(n)) - members)
    assert bf.complete == (len(members) == n)
    for i in range(n):
        assert (i in bf) == (i in members)
    data = bf.to_bytes()
    assert len(data) == (n + 7) // 8
    back = Bitfield.from_bytes(n, data)
    assert back == bf
    assert Bitfield.from_int(n, bf.to_int()) == bf
    assert bf.copy() == bf


def test_bitfield_wire_order_is_msb_first() -> None:
    bf = Bitfield(10)
    bf.add(0)
    bf.add(9)
    assert bf.to_bytes() == bytes([0b1000_0000, 0b0100_0000])
    assert list(Bitfield.from_bytes(10, b"\x01\x80")) == [7, 8]


def test_bitfield_full_and_empty() -> None:
    full = Bitfield.full(13)
    assert full.complete and full.count() == 13 and full.missing() == []
    assert full.to_bytes() == b"\xff\xf8"
    empty = Bitfield(13)
    assert not empty.complete and empty.missing() == list(range(13))
    assert Bitfield(0).complete and Bitfield(0).to_bytes() == b""
    assert Bitfield.full(0) == Bitfield(0)


def test_bitfield_equality() -> None:
    a, b = Bitfield(8), Bitfield(8)
    assert a == b
    a.add(3)
    assert a != b
    b.add(3)
    assert a == b
    assert Bitfield(8) != Bitfield(9)
    assert Bitfield(8) != "not a bitfield"


def test_bitfield_bounds() -> None:
    bf = Bitfield(5)
    with pytest.raises(IndexError):
        bf.add(5)
    with pytest.raises(IndexError):
        bf.add(-1)
    assert 5 not in bf and -1 not in bf
    bf.add(4)
    bf.discard(4)
    assert 4 not in bf


@pytest.mark.parametrize(("n", "data"), [(8, b""), (8, b"\x00\x00"), (9, b"\x00"), (0, b"\x00")])
def test_bitfield_from_bytes_rejects_bad_length(n: int, data: bytes) -> None:
    with pytest.raises(ValueError):
        Bitfield.from_bytes(n, data)


@pytest.mark.parametrize(("n", "data"), [(1, b"\x40"), (7, b"\x01"), (9, b"\x00\x40")])
def test_bitfield_from_bytes_rejects_padding(n: int, data: bytes) -> None:
    with pytest.raises(ValueError):
        Bitfield.from_bytes(n, data)
