"""What a seeder serves: pieces of a whole file, checked when the file changed."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from p2p.pieces import PIECE_SIZE, hash_file
from peers.shares import SavedShare, ShareRegistry, Source

pytestmark = pytest.mark.timeout(30)


def shared(tmp_path: Path, size: int = 3 * PIECE_SIZE) -> tuple[Path, Source, bytes]:
    path = tmp_path / "f.bin"
    data = os.urandom(size)
    path.write_bytes(data)
    digest = hash_file(path)
    source = Source(("g", "f.bin"), size, b"".join(digest.piece_hashes), path,
                    sha1=digest.sha1, mtime_ns=path.stat().st_mtime_ns)
    return path, source, data


def test_unchanged_file_is_served(tmp_path: Path) -> None:
    _path, source, data = shared(tmp_path)
    assert source.read(1) == data[PIECE_SIZE:2 * PIECE_SIZE]
    source.close()


def test_file_altered_after_sharing_never_serves_a_wrong_piece(tmp_path: Path) -> None:
    path, source, data = shared(tmp_path)
    with open(path, "r+b") as f:  # same size, other bytes in piece 2 only
        f.seek(2 * PIECE_SIZE + 5)
        f.write(b"tampered")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert source.read(2) is None
    piece0 = source.read(0)  # untouched pieces still check out and are served
    assert piece0 is not None and hashlib.sha1(piece0).digest() == source.pieces[:20]
    source.close()


def test_truncated_file_serves_nothing_past_its_end(tmp_path: Path) -> None:
    path, source, _data = shared(tmp_path)
    os.truncate(path, PIECE_SIZE)
    assert source.read(2) is None
    source.close()


def test_recent_mtime_never_vouches_for_content(tmp_path: Path) -> None:
    # A write in the same timestamp tick as the recorded mtime leaves it unchanged,
    # so a file hashed right after it was written is checked piece by piece.
    from peers.shares import MTIME_MARGIN_NS, trusted_mtime

    assert trusted_mtime(10**18, 10**18 + MTIME_MARGIN_NS) == 10**18
    assert trusted_mtime(10**18, 10**18 + MTIME_MARGIN_NS - 1) is None
    path, source, _data = shared(tmp_path)
    source.mtime_ns = trusted_mtime(path.stat().st_mtime_ns, time.time_ns())
    assert source.mtime_ns is None
    before = path.stat().st_mtime_ns
    with open(path, "r+b") as f:
        f.seek(5)
        f.write(b"tampered")
    os.utime(path, ns=(path.stat().st_atime_ns, before))  # as if in the same tick
    assert source.read(0) is None
    assert source.read(1) is not None
    source.close()


def test_shares_remembered_at_the_same_moment_are_all_kept(tmp_path: Path) -> None:
    # Downloads finishing together each remember their file from their own thread.
    registry = ShareRegistry(tmp_path)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def remember(i: int) -> None:
        barrier.wait()
        try:
            for j in range(10):
                registry.remember(SavedShare("u", "g", f"f{i}-{j}", "/x", 1, "0" * 40, "", 0))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=remember, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert len(registry.saved()) == 80
