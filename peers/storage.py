"""Pieces on disk for one download: a preallocated hidden partial file, the
bitfield of verified pieces, and an atomically written resume record."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from p2p.pieces import DIGEST_SIZE, PIECE_SIZE, Bitfield, piece_count, piece_range

__all__ = ["IntegrityError", "PartialDownload"]

log = logging.getLogger(__name__)

RESUME_VERSION = 1
# Persisting the resume record after every piece would cost an fsync per
# 512 KiB; losing up to this much progress in a crash is cheap, since pieces
# are re-verified on resume anyway.
SAVE_INTERVAL = 0.5
SAVE_EVERY_PIECES = 16


class IntegrityError(Exception):
    """The assembled file does not match the expected whole-file SHA1."""


def _fsync_dir(path: Path) -> None:
    # Makes a rename or unlink durable; not every platform can open a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _pread_exact(fd: int, buf: memoryview, offset: int) -> None:
    """Fill ``buf`` from ``fd`` at ``offset``; OSError if the file is too short."""
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            raise OSError(errno.EIO, f"short read at offset {offset + done}")
        done += n


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


class PartialDownload:
    """One file being downloaded: pieces are verified against the tracker's
    hashes, written in place with pwrite, and the file appears at ``final_path``
    only once its whole-file SHA1 matches."""

    final_path: Path
    part_path: Path
    resume_path: Path
    have: Bitfield

    def __init__(
        self,
        final_path: Path,
        size: int,
        sha1: str,
        piece_hashes: Sequence[bytes],
        resume_path: Path,
        fd: int,
        have: Bitfield,
    ) -> None:
        """Use ``PartialDownload.open``."""
        self.final_path = final_path
        self.part_path = self.part_path_for(final_path)
        self.resume_path = resume_path
        self.size = size
        self.sha1 = sha1
        self.piece_hashes = tuple(piece_hashes)
        self.have = have
        self._fd: int | None = fd
        self._unsaved = 0
        self._last_save = time.monotonic()
        self._finished = False

    @staticmethod
    def part_path_for(final_path: Path) -> Path:
        """The hidden partial file beside the destination."""
        return final_path.with_name("." + final_path.name + ".part")

    @classmethod
    def open(
        cls,
        final_path: Path,
        size: int,
        sha1: str,
        piece_hashes: Sequence[bytes],
        resume_path: Path,
    ) -> PartialDownload:
        """Open (resuming if a valid record and partial file exist) or start a download.

        Pieces the resume record marks present are re-hashed from the partial
        file and dropped if they no longer match.
        """
        final_path = Path(final_path)
        resume_path = Path(resume_path)
        sha1 = sha1.lower()
        if size < 0:
            raise ValueError(f"size must not be negative, got {size}")
        if len(sha1) != 40 or any(c not in "0123456789abcdef" for c in sha1):
            raise ValueError(f"not a hex SHA1: {sha1!r}")
        n = piece_count(size)
        if len(piece_hashes) != n:
            raise ValueError(f"{len(piece_hashes)} piece hashes for {n} pieces")
        if any(len(h) != DIGEST_SIZE for h in piece_hashes):
            raise ValueError("every piece hash must be a 20-byte SHA1 digest")

        part_path = cls.part_path_for(final_path)
        have = cls._load_resume(resume_path, size, sha1, n)
        fd: int | None = None
        if have is not None:
            try:
                fd = os.open(part_path, os.O_RDWR)
                if os.fstat(fd).st_size != size:
                    os.close(fd)
                    fd = None
            except FileNotFoundError:
                fd = None
        if fd is None:
            have = Bitfield(n)
            fd = os.open(part_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                cls._preallocate(fd, size)
            except BaseException:
                os.close(fd)
                _unlink(part_path)
                raise
        assert have is not None
        self = cls(final_path, size, sha1, piece_hashes, resume_path, fd, have)
        if have.count():
            self._reverify()
        self._save()
        return self

    @staticmethod
    def _preallocate(fd: int, size: int) -> None:
        os.ftruncate(fd, size)
        if size and hasattr(os, "posix_fallocate"):
            # Reserving the blocks now turns a full disk into an error at the
            # start rather than halfway through; filesystems without support
            # keep the sparse file from ftruncate.
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise

    @staticmethod
    def _load_resume(path: Path, size: int, sha1: str, n: int) -> Bitfield | None:
        try:
            record: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable resume record %s: %s", path, exc)
            return None
        try:
            if (
                record["version"] != RESUME_VERSION
                or record["size"] != size
                or record["sha1"] != sha1
                or record["piece_size"] != PIECE_SIZE
                or record["pieces"] != n
            ):
                return None
            return Bitfield.from_bytes(n, bytes.fromhex(record["bitfield"]))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring malformed resume record %s: %s", path, exc)
            return None

    def _reverify(self) -> None:
        # A crash can leave the record ahead of the data (pieces not yet on
        # disk) or a torn write; trusting the record would only be caught by
        # the whole-file check at the very end.
        buf = bytearray(PIECE_SIZE)
        view = memoryview(buf)
        for index in list(self.have):
            offset, length = piece_range(index, self.size)
            chunk = view[:length]
            _pread_exact(self._require_fd(), chunk, offset)
            if hashlib.sha1(chunk).digest() != self.piece_hashes[index]:
                log.info("resume: piece %d of %s failed re-verification", index, self.part_path)
                self.have.discard(index)

    def _require_fd(self) -> int:
        if self._fd is None:
            raise ValueError("download is closed")
        return self._fd

    # -- pieces --------------------------------------------------------------

    def write_piece(self, index: int, data: bytes | bytearray | memoryview) -> bool:
        """Verify ``data`` against the expected hash of piece ``index`` and store it.

        Returns False, writing nothing, on a wrong length or hash mismatch.
        IndexError for an index outside the file.
        """
        fd = self._require_fd()
        offset, length = piece_range(index, self.size)
        view = memoryview(data).cast("B")
        if len(view) != length:
            return False
        if hashlib.sha1(view).digest() != self.piece_hashes[index]:
            return False
        if index in self.have:
            return True
        _pwrite_all(fd, view, offset)
        self.have.add(index)
        self._unsaved += 1
        if (
            self._unsaved >= SAVE_EVERY_PIECES
            or time.monotonic() - self._last_save >= SAVE_INTERVAL
        ):
            self._save()
        return True

    def read_piece(self, index: int) -> bytes:
        """The bytes of a verified piece (to serve onward); KeyError if absent."""
        fd = self._require_fd()
        offset, length = piece_range(index, self.size)
        if index not in self.have:
            raise KeyError(index)
        buf = bytearray(length)
        _pread_exact(fd, memoryview(buf), offset)
        return bytes(buf)

    # -- persistence ---------------------------------------------------------

    def _save(self) -> None:
        record = {
            "version": RESUME_VERSION,
            "size": self.size,
            "sha1": self.sha1,
            "piece_size": PIECE_SIZE,
            "pieces": len(self.have),
            "bitfield": self.have.to_bytes().hex(),
        }
        tmp = self.resume_path.with_name(self.resume_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _pwrite_all(fd, memoryview(json.dumps(record).encode()), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.resume_path)
        self._unsaved = 0
        self._last_save = time.monotonic()

    def save_pending(self) -> None:
        """Persist the resume record if pieces were verified since it was last saved.

        ``write_piece`` saves only when a piece arrives, so a download that stalls
        calls this now and then: a crash then loses at most that interval's pieces.
        """
        if self._fd is not None and not self._finished and self._unsaved:
            self._save()

    def flush(self) -> None:
        """Make written pieces durable and persist the resume record now."""
        fd = self._require_fd()
        if self._finished:
            return
        # Data first, so the record never claims pieces the disk may not hold.
        os.fsync(fd)
        self._save()

    # -- end of life ---------------------------------------------------------

    def _whole_sha1(self, fd: int) -> str:
        whole = hashlib.sha1()
        buf = bytearray(PIECE_SIZE)
        view = memoryview(buf)
        for offset in range(0, self.size, PIECE_SIZE):
            chunk = view[: min(PIECE_SIZE, self.size - offset)]
            _pread_exact(fd, chunk, offset)
            whole.update(chunk)
        return whole.hexdigest()

    def finish(self) -> None:
        """Check the whole-file SHA1 and move the partial file into place.

        ValueError if pieces are missing. On a mismatch the partial file and
        resume record are deleted and IntegrityError is raised. The descriptor
        stays open (it follows the rename), so pieces can still be served.
        """
        fd = self._require_fd()
        if self._finished:
            return
        if not self.have.complete:
            raise ValueError(f"{len(self.have.missing())} pieces still missing")
        actual = self._whole_sha1(fd)
        if actual != self.sha1:
            self.discard()
            raise IntegrityError(
                f"{self.final_path.name}: SHA1 {actual} does not match expected {self.sha1}"
            )
        os.fsync(fd)
        os.replace(self.part_path, self.final_path)
        _fsync_dir(self.final_path.parent)
        self._finished = True
        self._remove_resume()

    def _remove_resume(self) -> None:
        _unlink(self.resume_path)
        _unlink(self.resume_path.with_name(self.resume_path.name + ".tmp"))

    def discard(self) -> None:
        """Delete the partial file and resume record, leaving nothing behind."""
        self._close_fd()
        if not self._finished:
            _unlink(self.part_path)
        self._remove_resume()

    def close(self) -> None:
        """Persist progress (unless finished) and release the file descriptor."""
        if self._fd is None:
            return
        if not self._finished and self._unsaved:
            self._save()
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
