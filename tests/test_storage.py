"""Pieces on disk: verification, resume after a crash, final rename, cleanup."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from p2p.pieces import PIECE_SIZE, Bitfield, piece_count, piece_range
from peers import storage
from peers.storage import DestinationTaken, IntegrityError, PartialDownload, WholeFileHasher

pytestmark = pytest.mark.timeout(30)


class Source:
    """The original file, and its tracker metadata."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.data = (
            bytes((i * 31 + seed) % 251 for i in range(size)) if size < 4096 else (os.urandom(size))
        )
        self.size = size
        self.sha1 = hashlib.sha1(self.data).hexdigest()
        self.hashes = [hashlib.sha1(self.piece(i)).digest() for i in range(piece_count(size))]

    def piece(self, index: int) -> bytes:
        offset, length = piece_range(index, self.size)
        return self.data[offset : offset + length]


@pytest.fixture
def src() -> Source:
    return Source(2 * PIECE_SIZE + 1000)


def open_dl(tmp_path: Path, src: Source, sha1: str | None = None) -> PartialDownload:
    return PartialDownload.open(
        tmp_path / "out.bin",
        src.size,
        sha1 or src.sha1,
        src.hashes,
        tmp_path / "out.resume.json",
    )


def listing(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


def test_paths_and_preallocation(tmp_path: Path, src: Source) -> None:
    dl = open_dl(tmp_path, src)
    assert dl.part_path == tmp_path / ".out.bin.part"
    assert dl.final_path == tmp_path / "out.bin"
    assert dl.part_path.stat().st_size == src.size
    assert not dl.final_path.exists()
    assert len(dl.have) == 3 and dl.have.count() == 0
    dl.close()


def test_write_good_and_bad_pieces(tmp_path: Path, src: Source) -> None:
    dl = open_dl(tmp_path, src)
    assert dl.write_piece(2, src.piece(2))
    assert list(dl.have) == [2]
    assert dl.read_piece(2) == src.piece(2)

    wrong = bytearray(src.piece(0))
    wrong[5] ^= 1
    assert not dl.write_piece(0, bytes(wrong))
    assert not dl.write_piece(0, src.piece(0)[:-1])  # wrong length
    assert not dl.write_piece(0, src.piece(1))  # another piece's data: right length, wrong hash
    assert 0 not in dl.have
    with open(dl.part_path, "rb") as f:
        assert f.read(PIECE_SIZE) == bytes(PIECE_SIZE)  # nothing written
    with pytest.raises(KeyError):
        dl.read_piece(0)
    with pytest.raises(IndexError):
        dl.write_piece(3, b"x")

    assert dl.write_piece(0, memoryview(src.piece(0)))
    assert dl.write_piece(0, src.piece(0))  # a duplicate is harmless
    assert dl.read_piece(0) == src.piece(0)
    dl.close()


def test_finish_renames_on_match(tmp_path: Path, src: Source) -> None:
    dl = open_dl(tmp_path, src)
    with pytest.raises(ValueError):
        dl.finish()  # pieces missing
    for i in (1, 0, 2):
        assert dl.write_piece(i, src.piece(i))
    dl.finish()
    assert dl.final_path.read_bytes() == src.data
    assert listing(tmp_path) == {"out.bin"}
    # Still servable after the rename: the descriptor follows the file.
    assert dl.read_piece(1) == src.piece(1)
    dl.close()
    assert listing(tmp_path) == {"out.bin"}


def test_finish_mismatch_removes_everything(tmp_path: Path, src: Source) -> None:
    # Piece hashes all match, but the tracker's whole-file hash is different.
    dl = open_dl(tmp_path, src, sha1="0" * 40)
    for i in range(3):
        assert dl.write_piece(i, src.piece(i))
    with pytest.raises(IntegrityError):
        dl.finish()
    assert listing(tmp_path) == set()


def test_resume_after_crash_keeps_verified_pieces(
    tmp_path: Path, src: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No throttling, so the record is written on each piece as a crash would find it.
    monkeypatch.setattr(storage, "SAVE_EVERY_PIECES", 1)
    dl = open_dl(tmp_path, src)
    for i in range(3):
        assert dl.write_piece(i, src.piece(i))
    record = json.loads((tmp_path / "out.resume.json").read_text())
    assert Bitfield.from_bytes(3, bytes.fromhex(record["bitfield"])) == Bitfield.full(3)
    # "Crash": the fd is dropped without close(), and piece 1 is torn on disk.
    assert dl._fd is not None
    os.close(dl._fd)
    with open(dl.part_path, "r+b") as f:
        f.seek(PIECE_SIZE + 10)
        f.write(b"\xff\xfe")

    dl2 = open_dl(tmp_path, src)
    assert list(dl2.have) == [0, 2]
    assert dl2.read_piece(0) == src.piece(0)
    assert dl2.write_piece(1, src.piece(1))
    dl2.finish()
    assert dl2.final_path.read_bytes() == src.data
    assert listing(tmp_path) == {"out.bin"}
    dl2.close()


def test_close_persists_throttled_progress(tmp_path: Path, src: Source) -> None:
    dl = open_dl(tmp_path, src)
    assert dl.write_piece(1, src.piece(1))
    dl.close()
    dl2 = open_dl(tmp_path, src)
    assert list(dl2.have) == [1]
    dl2.close()


def test_resume_ignores_record_for_other_file(tmp_path: Path, src: Source) -> None:
    dl = open_dl(tmp_path, src)
    assert dl.write_piece(0, src.piece(0))
    dl.close()
    other = Source(src.size, seed=1)
    dl2 = PartialDownload.open(
        tmp_path / "out.bin", other.size, other.sha1, other.hashes, tmp_path / "out.resume.json"
    )
    assert dl2.have.count() == 0
    with open(dl2.part_path, "rb") as f:
        assert f.read(PIECE_SIZE) == bytes(PIECE_SIZE)  # restarted from zeros
    dl2.discard()


@pytest.mark.parametrize(
    "garbage", ["", "{", "[]", '{"version": 1}', '{"version": 1, "size": "x"}']
)
def test_resume_ignores_garbage_record(tmp_path: Path, src: Source, garbage: str) -> None:
    (tmp_path / "out.resume.json").write_text(garbage)
    dl = open_dl(tmp_path, src)
    assert dl.have.count() == 0
    dl.discard()


def test_resume_without_part_file_starts_empty(tmp_path: Path, src: Source) -> None:
    dl = open_dl(tmp_path, src)
    assert dl.write_piece(0, src.piece(0))
    dl.close()
    dl.part_path.unlink()
    dl2 = open_dl(tmp_path, src)
    assert dl2.have.count() == 0
    assert dl2.part_path.stat().st_size == src.size
    dl2.discard()


def test_discard_leaves_no_files(tmp_path: Path, src: Source) -> None:
    dl = open_dl(tmp_path, src)
    assert dl.write_piece(0, src.piece(0))
    dl.flush()
    assert listing(tmp_path) == {".out.bin.part", "out.resume.json"}
    dl.discard()
    assert listing(tmp_path) == set()
    with pytest.raises(ValueError):
        dl.write_piece(0, src.piece(0))


def test_discard_where_the_partial_file_cannot_be_deleted_still_closes(
        tmp_path: Path, src: Source) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    dl = PartialDownload.open(dest / "out.bin", src.size, src.sha1, src.hashes,
                              tmp_path / "out.resume.json")
    assert dl.write_piece(0, src.piece(0))
    dl.part_path.unlink()
    dest.rmdir()
    dest.write_bytes(b"the user's own")  # unlinking .out.bin.part now fails: ENOTDIR
    dl.discard()
    with pytest.raises(ValueError, match="closed"):
        dl.read_piece(0)
    assert listing(tmp_path) == {"dest"}


def test_close_that_cannot_save_progress_still_releases_the_file(
        tmp_path: Path, src: Source) -> None:
    records = tmp_path / "records"
    records.mkdir()
    dl = PartialDownload.open(tmp_path / "out.bin", src.size, src.sha1, src.hashes,
                              records / "r.json")
    assert dl.write_piece(0, src.piece(0))  # not saved yet: within SAVE_INTERVAL
    (records / "r.json").unlink()
    records.rmdir()
    with pytest.raises(OSError):
        dl.close()
    records.mkdir()
    again = PartialDownload.open(tmp_path / "out.bin", src.size, src.sha1, src.hashes,
                                 records / "r.json")  # not "another download is writing"
    again.discard()


def test_a_download_whose_resume_record_cannot_be_written_leaves_nothing(
        tmp_path: Path, src: Source) -> None:
    # As on a disk with room for the preallocated file but not for the record.
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "r.json").mkdir()
    (tmp_path / "r.json" / "x").write_text("")  # os.replace onto it fails
    with pytest.raises(OSError):
        PartialDownload.open(dest / "out.bin", src.size, src.sha1, src.hashes,
                             tmp_path / "r.json")
    assert listing(dest) == set()  # no hidden preallocated file holding the space
    assert listing(tmp_path) == {"dest", "r.json"}  # nor a half-written record


def test_a_resume_record_that_cannot_be_written_is_named_in_the_error(
        tmp_path: Path, src: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    # The data dir is often on another disk than the destination: a full one must be
    # named, or the user frees space on the wrong disk.
    dl = open_dl(tmp_path, src)
    real = storage._pwrite_all

    def full_for_records(fd: int, data: memoryview, offset: int) -> None:
        if bytes(data[:10]) == b'{"version"':
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data, offset)

    monkeypatch.setattr(storage, "_pwrite_all", full_for_records)
    assert dl.write_piece(0, src.piece(0))
    with pytest.raises(OSError, match="out.resume.json") as raised:
        dl.flush()
    assert raised.value.errno == errno.ENOSPC
    dl.discard()
    assert listing(tmp_path) == set()


def write_all(dl: PartialDownload, src: Source) -> None:
    for i in range(piece_count(src.size)):
        assert dl.write_piece(i, src.piece(i))


def test_a_symlink_at_the_partial_files_name_is_never_written_through(
        tmp_path: Path, src: Source) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    (tmp_path / ".out.bin.part").symlink_to(outside)
    with pytest.raises(DestinationTaken, match="symbolic link"):
        open_dl(tmp_path, src)
    assert outside.read_bytes() == b"precious"
    assert listing(tmp_path) == {"outside.txt", ".out.bin.part"}


def test_a_second_download_to_the_same_file_is_refused_and_harms_nothing(
        tmp_path: Path, src: Source) -> None:
    first = open_dl(tmp_path, src)
    assert first.write_piece(0, src.piece(0))
    first.flush()
    with pytest.raises(DestinationTaken, match="another download"):
        open_dl(tmp_path, src)  # the same file: in another process it is just as locked
    for i in (1, 2):
        assert first.write_piece(i, src.piece(i))
    first.finish()
    assert (tmp_path / "out.bin").read_bytes() == src.data
    first.close()


def test_a_file_that_appears_at_the_destination_is_never_replaced(
        tmp_path: Path, src: Source) -> None:
    dl = open_dl(tmp_path, src)
    write_all(dl, src)
    dl.final_path.write_bytes(b"the user's own")
    with pytest.raises(DestinationTaken, match="left as it is"):
        dl.finish()
    dl.discard()
    assert dl.final_path.read_bytes() == b"the user's own"
    assert listing(tmp_path) == {"out.bin"}


def test_a_name_too_long_for_a_partial_name_still_downloads(tmp_path: Path) -> None:
    src = Source(1000)
    final = tmp_path / ("n" * 251 + ".bin")  # 255 bytes: legal, but ".{name}.part" is not
    dl = PartialDownload.open(final, src.size, src.sha1, src.hashes, tmp_path / "r.json")
    assert len(dl.part_path.name) <= 255 and dl.part_path.parent == tmp_path
    write_all(dl, src)
    dl.finish()
    dl.close()
    assert final.read_bytes() == src.data
    assert listing(tmp_path) == {final.name}


def test_abandon_removes_the_partial_file_and_record_unless_in_use(
        tmp_path: Path, src: Source) -> None:
    dl = open_dl(tmp_path, src)
    assert dl.write_piece(0, src.piece(0))
    PartialDownload.abandon(dl.final_path, dl.resume_path)  # still being written: kept
    assert dl.part_path.exists()
    dl.close()
    dl2 = open_dl(tmp_path, src)
    dl2.close()
    PartialDownload.abandon(dl2.final_path, dl2.resume_path)
    assert listing(tmp_path) == set()


def test_empty_file(tmp_path: Path) -> None:
    src = Source(0)
    dl = open_dl(tmp_path, src)
    assert len(dl.have) == 0 and dl.have.complete
    dl.finish()
    assert dl.final_path.read_bytes() == b""
    assert listing(tmp_path) == {"out.bin"}
    dl.close()


def test_empty_file_wrong_hash(tmp_path: Path) -> None:
    src = Source(0)
    dl = open_dl(tmp_path, src, sha1="1" * 40)
    with pytest.raises(IntegrityError):
        dl.finish()
    assert listing(tmp_path) == set()


def test_one_byte_file(tmp_path: Path) -> None:
    src = Source(1)
    dl = open_dl(tmp_path, src)
    assert not dl.write_piece(0, b"")
    assert not dl.write_piece(0, bytes([src.data[0] ^ 1]))
    assert dl.write_piece(0, src.data)
    assert dl.read_piece(0) == src.data
    dl.finish()
    assert dl.final_path.read_bytes() == src.data
    dl.close()


def test_open_validates_metadata(tmp_path: Path, src: Source) -> None:
    with pytest.raises(ValueError):
        open_dl(tmp_path, src, sha1="xyz")
    with pytest.raises(ValueError):
        PartialDownload.open(
            tmp_path / "out.bin", src.size, src.sha1, src.hashes[:2], tmp_path / "r.json"
        )
    with pytest.raises(ValueError):
        PartialDownload.open(
            tmp_path / "out.bin", src.size, src.sha1, [b"short"] * 3, tmp_path / "r.json"
        )
    assert listing(tmp_path) == set()


def test_context_manager_closes(tmp_path: Path, src: Source) -> None:
    with open_dl(tmp_path, src) as dl:
        assert dl.write_piece(2, src.piece(2))
    with pytest.raises(ValueError):
        dl.read_piece(2)


@pytest.mark.parametrize("order", ["forward", "backward", "shuffled"])
def test_whole_file_hash_follows_any_arrival_order(tmp_path: Path, order: str) -> None:
    src = Source(40 * PIECE_SIZE + 7)  # more pieces than the hasher holds in memory
    indices = list(range(piece_count(src.size)))
    if order == "backward":
        indices.reverse()
    elif order == "shuffled":
        import random

        random.Random(5).shuffle(indices)
    dl = open_dl(tmp_path, src)
    for i in indices:
        assert dl.write_piece(i, src.piece(i))
    dl.finish()
    assert (tmp_path / "out.bin").read_bytes() == src.data


def test_whole_file_hash_reads_back_what_is_on_disk(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Pieces written too far ahead of the hashing are hashed from the file when
    # their turn comes, so bytes damaged on disk after their piece check still
    # fail the final check.
    monkeypatch.setattr(WholeFileHasher, "_KEEP", 4)
    src = Source(40 * PIECE_SIZE)
    dl = open_dl(tmp_path, src)
    last = piece_count(src.size) - 1
    assert dl.write_piece(last, src.piece(last))
    with open(dl.part_path, "r+b") as f:
        f.seek(last * PIECE_SIZE)
        f.write(b"\0" * 10)
    for i in range(last):
        assert dl.write_piece(i, src.piece(i))
    with pytest.raises(IntegrityError):
        dl.finish()
    assert listing(tmp_path) == set()


@pytest.fixture(params=["direct", "no_o_direct", "refused_at_io"])
def io_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Pieces go through O_DIRECT; or the platform has no O_DIRECT; or the
    filesystem opens with O_DIRECT but refuses the I/O itself (EINVAL)."""
    mode: str = request.param
    if mode == "no_o_direct":
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    elif mode == "refused_at_io":
        direct_fds: set[int] = set()
        real_open, real_pwrite, real_preadv = storage._open_direct, os.pwrite, os.preadv

        def open_direct(path: Path, buffered: int) -> int | None:
            fd = real_open(path, buffered)
            if fd is None:
                fd = os.open(path, os.O_RDWR)  # a filesystem without it: pretend
            direct_fds.add(fd)
            return fd

        def refuse(real: Any) -> Any:
            def call(fd: int, *args: Any) -> Any:
                if fd in direct_fds:
                    raise OSError(errno.EINVAL, "Invalid argument")
                return real(fd, *args)
            return call

        monkeypatch.setattr(storage, "_open_direct", open_direct)
        monkeypatch.setattr(os, "pwrite", refuse(real_pwrite))
        monkeypatch.setattr(os, "preadv", refuse(real_preadv))
    return mode


@pytest.mark.parametrize("size", [0, 1, PIECE_SIZE - 1, PIECE_SIZE, 3 * PIECE_SIZE + 4096,
                                  3 * PIECE_SIZE + 1])
def test_pieces_round_trip_whatever_the_io_path(tmp_path: Path, io_mode: str, size: int) -> None:
    # Out of order, read back for serving, resumed, hashed whole: the bytes that
    # land are the bytes sent, with or without direct I/O.
    src = Source(size)
    n = piece_count(size)
    dl = open_dl(tmp_path, src)
    for i in reversed(range(n // 2, n)):
        assert dl.write_piece(i, src.piece(i))
        assert dl.read_piece(i) == src.piece(i)
    dl.close()
    dl = open_dl(tmp_path, src)  # resume re-reads and re-verifies what is there
    assert dl.have.count() == n - n // 2
    for i in range(n // 2):
        assert dl.write_piece(i, src.piece(i))
    dl.finish()
    dl.close()
    assert (tmp_path / "out.bin").read_bytes() == src.data
    assert listing(tmp_path) == {"out.bin"}


def _hasher_with_backlog(monkeypatch: pytest.MonkeyPatch, gate: threading.Event,
                         first_present: bool) -> tuple[WholeFileHasher, Bitfield]:
    """A hasher over 20 pieces whose piece 0 is read from 'disk' only once ``gate``
    opens (so it stays busy), or is missing (so it waits), and 1..9 held in memory."""
    monkeypatch.setattr(WholeFileHasher, "BACKLOG", 4)
    n = 20
    have = Bitfield(n)
    piece = memoryview(b"x" * 10)

    def read(index: int) -> memoryview:
        gate.wait(10)
        return piece

    if first_present:
        have.add(0)
    hasher = WholeFileHasher(read, n * PIECE_SIZE, have)
    for i in range(1, 10):
        hasher.offer(i, piece)
        have.add(i)
    return hasher, have


def _writer(hasher: WholeFileHasher, released: threading.Event) -> threading.Thread:
    """A writer that waits for room in ``hasher``, then sets ``released``."""
    def run() -> None:
        hasher.wait_for_room()
        released.set()
    return threading.Thread(target=run)


@pytest.mark.parametrize("keep", [64, 2])
def test_writers_wait_for_a_busy_hasher_until_it_catches_up(
        monkeypatch: pytest.MonkeyPatch, keep: int) -> None:
    # With keep=2 the hasher is too far behind to hold the pieces: they still count,
    # or a hasher far enough behind would see no backlog and never be waited for.
    monkeypatch.setattr(WholeFileHasher, "_KEEP", keep)
    gate = threading.Event()
    hasher, _have = _hasher_with_backlog(monkeypatch, gate, first_present=True)
    released = threading.Event()
    writer = _writer(hasher, released)
    writer.start()
    try:
        assert len(hasher._held) <= keep
        assert not released.wait(0.3)  # 9 pieces behind a busy hasher: wait
        gate.set()
        assert released.wait(5)  # it hashed its backlog: go on
    finally:
        gate.set()
        writer.join(5)
        hasher.stop()


def test_writers_never_wait_for_a_hasher_that_waits_for_a_piece(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    gate.set()
    hasher, _have = _hasher_with_backlog(monkeypatch, gate, first_present=False)
    try:
        done = threading.Event()
        writer = _writer(hasher, done)
        writer.start()
        # Piece 0 is what the hasher needs: holding up the writer (who may be about
        # to store it) would deadlock.
        assert done.wait(5)
        writer.join(5)
    finally:
        hasher.stop()


def test_stopping_the_hasher_releases_waiting_writers(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    hasher, _have = _hasher_with_backlog(monkeypatch, gate, first_present=True)
    released = threading.Event()
    writer = _writer(hasher, released)
    writer.start()
    assert not released.wait(0.2)
    stopper = threading.Thread(target=hasher.stop)
    stopper.start()
    assert released.wait(5)
    gate.set()  # lets the hasher's pending read return, so stop() can join it
    stopper.join(5)
    writer.join(5)
