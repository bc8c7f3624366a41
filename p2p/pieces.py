"""Piece size, piece ranges, streaming file hashing and piece bitfields."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

PIECE_SIZE = 512 * 1024
DIGEST_SIZE = 20  # SHA1

# Bit positions (low to high) set in each byte value; makes iterating a
# bitfield cost one table lookup per non-zero byte instead of one per bit.
_BYTE_BITS: tuple[tuple[int, ...], ...] = tuple(
    tuple(b for b in range(8) if v >> b & 1) for v in range(256)
)
# Reverses the bit order within a byte: the wire format is MSB-first per byte,
# while the in-memory integer keeps piece i at bit i.
_REVERSE = bytes(int(f"{v:08b}"[::-1], 2) for v in range(256))


def _check_piece_size(piece_size: int) -> None:
    if piece_size <= 0:
        raise ValueError(f"piece size must be positive, got {piece_size}")


def piece_count(size: int, piece_size: int = PIECE_SIZE) -> int:
    """Number of pieces of a file of ``size`` bytes (0 for an empty file)."""
    _check_piece_size(piece_size)
    if size < 0:
        raise ValueError(f"file size must not be negative, got {size}")
    return -(-size // piece_size)


def piece_range(index: int, size: int, piece_size: int = PIECE_SIZE) -> tuple[int, int]:
    """``(offset, length)`` of piece ``index``; the last piece may be short.

    Raises IndexError when ``index`` is not a piece of the file.
    """
    count = piece_count(size, piece_size)
    if not 0 <= index < count:
        raise IndexError(f"piece {index} out of range 0..{count - 1}")
    offset = index * piece_size
    return offset, min(piece_size, size - offset)


def piece_sha1(data: bytes | bytearray | memoryview) -> bytes:
    """The 20-byte SHA1 digest of one piece."""
    return hashlib.sha1(data).digest()


@dataclass(frozen=True)
class FileDigest:
    """Size, whole-file SHA1 (hex) and per-piece SHA1 digests of a file."""

    size: int
    sha1: str
    piece_hashes: tuple[bytes, ...]


def hash_file(path: str | os.PathLike[str], piece_size: int = PIECE_SIZE) -> FileDigest:
    """Hash a file in one streaming pass: whole-file SHA1 and each piece's SHA1.

    Memory use is one piece-sized buffer whatever the file size.
    """
    _check_piece_size(piece_size)
    whole = hashlib.sha1()
    hashes: list[bytes] = []
    size = 0
    buf = bytearray(piece_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            # readinto may return short counts (pipes, network filesystems), so
            # fill the whole piece before hashing or piece boundaries would drift.
            filled = 0
            while filled < piece_size:
                n = f.readinto(view[filled:])
                if not n:
                    break
                filled += n
            if filled == 0:
                break
            chunk = view[:filled]
            whole.update(chunk)
            hashes.append(hashlib.sha1(chunk).digest())
            size += filled
            if filled < piece_size:
                break
    return FileDigest(size=size, sha1=whole.hexdigest(), piece_hashes=tuple(hashes))


def iter_set_bits(value: int) -> Iterator[int]:
    """Positions of the set bits of a non-negative int, lowest first."""
    if value <= 0:
        return
    data = value.to_bytes((value.bit_length() + 7) // 8, "little")
    for byte_index, byte in enumerate(data):
        if byte:
            base = byte_index * 8
            for bit in _BYTE_BITS[byte]:
                yield base + bit


class Bitfield:
    """A fixed-length set of piece indices, serialised MSB-first like BitTorrent.

    Piece 0 is the high bit of byte 0; padding bits after the last piece are zero.
    """

    __slots__ = ("_bits", "_n")

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"bitfield length must not be negative, got {n}")
        self._n = n
        # A Python int as a bit set: set algebra on whole bitfields runs in C.
        self._bits = 0

    @classmethod
    def full(cls, n: int) -> Bitfield:
        """A bitfield with all ``n`` pieces present."""
        bf = cls(n)
        bf._bits = (1 << n) - 1
        return bf

    @classmethod
    def from_bytes(cls, n: int, data: bytes | bytearray | memoryview) -> Bitfield:
        """Parse the wire form; ValueError on a wrong length or non-zero padding."""
        bf = cls(n)
        raw = bytes(data)
        expected = (n + 7) // 8
        if len(raw) != expected:
            raise ValueError(f"bitfield of {n} pieces needs {expected} bytes, got {len(raw)}")
        bits = int.from_bytes(raw.translate(_REVERSE), "little")
        if bits >> n:
            raise ValueError("bitfield has non-zero padding bits")
        bf._bits = bits
        return bf

    @classmethod
    def from_int(cls, n: int, bits: int) -> Bitfield:
        """Build from an int whose bit i means piece i; ValueError on bits >= n."""
        bf = cls(n)
        if bits < 0 or bits >> n:
            raise ValueError("bits outside the bitfield")
        bf._bits = bits
        return bf

    def to_bytes(self) -> bytes:
        """The wire form: ceil(n/8) bytes, piece 0 in the high bit of byte 0."""
        return self._bits.to_bytes((self._n + 7) // 8, "little").translate(_REVERSE)

    def to_int(self) -> int:
        """The set as an int whose bit i means piece i."""
        return self._bits

    def copy(self) -> Bitfield:
        """An independent copy."""
        return Bitfield.from_int(self._n, self._bits)

    def _check(self, index: int) -> None:
        if not 0 <= index < self._n:
            raise IndexError(f"piece {index} out of range for {self._n} pieces")

    def add(self, index: int) -> None:
        """Mark piece ``index`` present; IndexError when out of range."""
        self._check(index)
        self._bits |= 1 << index

    def discard(self, index: int) -> None:
        """Mark piece ``index`` absent; IndexError when out of range."""
        self._check(index)
        self._bits &= ~(1 << index)

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int) or not 0 <= index < self._n:
            return False
        return bool(self._bits >> index & 1)

    def count(self) -> int:
        """Number of pieces present."""
        return self._bits.bit_count()

    @property
    def complete(self) -> bool:
        """True when every piece is present (also for a 0-piece bitfield)."""
        return self._bits.bit_count() == self._n

    def missing(self) -> list[int]:
        """Indices of absent pieces, ascending."""
        return list(iter_set_bits(~self._bits & ((1 << self._n) - 1)))

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[int]:
        return iter_set_bits(self._bits)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bitfield):
            return NotImplemented
        return self._n == other._n and self._bits == other._bits

    # Mutable, so not hashable.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Bitfield({self._n}, count={self.count()})"
