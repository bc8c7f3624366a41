"""Pieces on disk for one download: a preallocated hidden partial file, the
bitfield of verified pieces, and an atomically written resume record."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from p2p.pieces import DIGEST_SIZE, PIECE_SIZE, Bitfield, piece_count, piece_range

__all__ = ["DestinationTaken", "IntegrityError", "PartialDownload"]

log = logging.getLogger(__name__)

RESUME_VERSION = 1
# Persisting the resume record after every piece would cost an fsync per
# 512 KiB; losing up to this much progress in a crash is cheap, since pieces
# are re-verified on resume anyway.
SAVE_INTERVAL = 1.0
SAVE_EVERY_PIECES = 128  # 64 MiB: what a crash may cost at most
# Pieces are written with O_DIRECT where the filesystem allows it: a download
# then neither fills the page cache with a file nobody is reading yet nor pays
# for allocating it (which dominated the CPU time of a download in our VMs).
# Offsets and lengths must be multiples of the block size; a short last piece
# goes through the page cache.
DIRECT_ALIGN = 4096

_local = threading.local()  # each thread's page-aligned piece buffer for direct I/O


NAME_MAX = 255  # bytes in one path component on the filesystems we run on


class IntegrityError(Exception):
    """The assembled file does not match the expected whole-file SHA1."""


class DestinationTaken(ValueError):
    """The destination, or the partial file beside it, is not ours to write."""


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


def _remove_record(resume_path: Path) -> None:
    _unlink(resume_path.with_name(resume_path.name + ".tmp"))  # first: the surer to go
    _unlink(resume_path)


def replace_json(path: Path, data: Any, indent: int | None = None) -> None:
    """Write ``data`` to ``path`` as JSON through a temporary file beside it, so a
    reader finds the old content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=indent))
    os.replace(tmp, path)


def _pread_exact(fd: int, buf: memoryview, offset: int) -> None:
    """Fill ``buf`` from ``fd`` at ``offset``; OSError if the file is too short."""
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            raise OSError(errno.EIO, f"short read at offset {offset + done}")
        done += n


def _aligned_buffer() -> memoryview:
    """This thread's page-aligned buffer of one piece, as O_DIRECT wants."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(mmap.mmap(-1, PIECE_SIZE))
    return buf


def _open_direct(path: Path, fd: int) -> int | None:
    """An O_DIRECT descriptor of the file ``fd`` has open at ``path``, or None where
    unsupported (or if ``path`` now names another file)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        direct = os.open(path, os.O_RDWR | os.O_NOFOLLOW | flag)
    except OSError as exc:
        log.info("no direct writes to %s (%s): using the page cache", path, exc)
        return None
    if not _same_file(os.fstat(direct), os.fstat(fd)):
        os.close(direct)
        return None
    return direct


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _open_part(path: Path) -> int:
    """Open (creating) the partial file at ``path`` and lock it for this download.

    DestinationTaken if ``path`` is a symbolic link or not a regular file (writing
    through it could change a file outside the destination), or if another
    download, in this process or another, has it locked.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DestinationTaken(f"{path} is a symbolic link; not writing through it") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DestinationTaken(f"{path} is not a regular file; not writing to it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DestinationTaken(f"another download is writing {path}") from None
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


class WholeFileHasher:
    """The whole-file SHA1, fed in piece order on its own thread while pieces arrive.

    A piece just written is hashed from the bytes in hand when it is next in
    order; one that arrived early is read back from the file when its turn
    comes.  So the check at the end costs only what is left, not a second pass,
    provided the hasher keeps up: ``wait_for_room`` lets the writers of pieces
    wait for it when it falls behind (it competes with them for the CPU).
    """

    _KEEP = 64  # pieces held in memory ahead of the hashing frontier
    BACKLOG = 32  # pieces present but not hashed beyond which writers wait for the hasher

    def __init__(self, read: Callable[[int], memoryview], size: int, have: Bitfield) -> None:
        self._read, self._have = read, have
        self._sha1 = hashlib.sha1()
        self._next = 0
        self.read_back = 0  # pieces read from the file because they were no longer held
        self._count = piece_count(size)
        self._held: dict[int, memoryview] = {}
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the hasher waits for its next piece
        self._room = threading.Condition(lock)  # writers wait for the hasher
        self._idle = False  # the hasher waits for a piece that is not there yet
        self._stopped = False
        self._running = True
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="whole-sha1", daemon=True)
        self._thread.start()

    def offer(self, index: int, data: memoryview) -> None:
        """Piece ``index`` was written with these bytes (and is about to be in ``have``)."""
        with self._cond:
            if self._next <= index < self._next + self._KEEP:
                self._held[index] = data
            if index == self._next:  # otherwise the hasher cannot move yet
                self._cond.notify()

    def wait_for_room(self) -> None:
        """Block while the hasher is busy with a backlog of pieces present but not hashed.

        Never blocks on a hasher that is waiting for a piece (or has stopped),
        so a writer can never be waiting on the hasher while it waits on them.
        """
        with self._room:
            while (self._backlog() > self.BACKLOG and not self._idle and self._running
                   and not self._stopped):
                self._room.wait()

    def _backlog(self) -> int:
        # Present but not hashed yet, held in memory or not: counting only held
        # pieces would miss a hasher so far behind that new pieces are not held.
        return self._have.count() - self._next

    def hexdigest(self) -> str:
        """Wait until every piece is hashed (all must be in ``have``); the SHA1 in hex."""
        with self._cond:
            self._cond.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._sha1.hexdigest()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
            self._room.notify_all()
        self._thread.join()

    def _run(self) -> None:
        try:
            while self._next < self._count:
                with self._cond:
                    while (not self._stopped and self._next not in self._held
                           and self._next not in self._have):
                        self._idle = True
                        self._room.notify_all()
                        self._cond.wait()
                    self._idle = False
                    if self._stopped:
                        return
                    data = self._held.pop(self._next, None)
                if data is None:
                    data = self._read(self._next)
                    self.read_back += 1
                self._sha1.update(data)  # releases the GIL: runs beside the download
                with self._cond:
                    self._next += 1
                    if self._backlog() <= self.BACKLOG:
                        self._room.notify_all()
        except BaseException as exc:  # reported by hexdigest()
            self._error = exc
        finally:
            with self._cond:
                self._running = False
                self._room.notify_all()


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
        self._direct_fd = _open_direct(self.part_path, fd) if size else None
        self._opened_direct = self._direct_fd  # kept for closing if writes fall back
        self._closing = threading.Lock()  # held by readers from other threads, and by close
        if self._direct_fd is not None and hasattr(os, "posix_fadvise"):
            # No readahead on the buffered descriptor: it could cache blocks of a
            # piece that a direct write is about to replace.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        self._unsaved = 0
        self._last_save = time.monotonic()
        self._finished = False
        self._hasher: WholeFileHasher | None = None

    @staticmethod
    def part_path_for(final_path: Path) -> Path:
        """The hidden partial file beside the destination."""
        name = "." + final_path.name + ".part"
        if len(os.fsencode(name)) > NAME_MAX:  # a legal file name can be too long for this
            name = "." + hashlib.sha1(os.fsencode(final_path.name)).hexdigest() + ".part"
        return final_path.with_name(name)

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
        file and dropped if they no longer match.  If it fails, it leaves no
        partial file or resume record behind.
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
        fd = _open_part(part_path)
        if have is None or os.fstat(fd).st_size != size:
            have = Bitfield(n)
            try:
                os.ftruncate(fd, 0)  # nothing in it counts: start afresh
                cls._preallocate(fd, size)
            except BaseException:
                _unlink(part_path)  # before the lock goes with the descriptor
                os.close(fd)
                raise
        try:
            self = cls(final_path, size, sha1, piece_hashes, resume_path, fd, have)
        except BaseException:
            os.close(fd)
            raise
        try:
            if have.count():
                self._reverify()
            self._save()
        except BaseException:
            # A download that cannot start has failed: a preallocated partial file
            # left behind would hold the disk space (the usual cause: a full disk).
            self.discard()
            raise
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
        for index in list(self.have):
            if hashlib.sha1(self._read(index)).digest() != self.piece_hashes[index]:
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
        IndexError for an index outside the file.  The three steps it takes,
        ``verify``, ``store`` and ``commit``, can also be called one by one.
        """
        self._require_fd()
        view = self.verify(index, data)
        if view is None:
            return False
        if index not in self.have:
            self.store(index, view)
            self.commit(index, view)
        return True

    def verify(self, index: int, data: bytes | bytearray | memoryview) -> memoryview | None:
        """``data`` as bytes if it is piece ``index`` (length and SHA1), else None.

        Safe to call from any thread: it reads nothing that changes.
        """
        _offset, length = piece_range(index, self.size)
        view = memoryview(data).cast("B")
        if len(view) != length:
            return None
        if hashlib.sha1(view).digest() != self.piece_hashes[index]:
            return None
        return view

    def store(self, index: int, view: memoryview) -> None:
        """Write verified piece ``index`` in place; ``commit`` makes it count.

        Safe to call from several threads at once for different pieces.
        """
        offset, length = piece_range(index, self.size)
        if self._direct_fd is not None and length % DIRECT_ALIGN == 0:
            aligned = _aligned_buffer()[:length]
            aligned[:] = view
            if self._direct(_pwrite_all, aligned, offset):
                return
        _pwrite_all(self._require_fd(), view, offset)

    @property
    def read_back(self) -> int:
        """Pieces the whole-file SHA1 had to read back from the file so far."""
        return self._hasher.read_back if self._hasher is not None else 0

    def wait_for_hasher(self) -> None:
        """Block while the whole-file SHA1 is busy with a backlog of stored pieces.

        Writers on other threads call this before each piece, so the hasher
        gets the CPU it needs to keep pace rather than leaving its work for the end.
        """
        hasher = self._hasher
        if hasher is not None:
            hasher.wait_for_room()

    def commit(self, index: int, view: memoryview) -> None:
        """Mark stored piece ``index`` present (serve it, resume it, hash it into the
        whole file).  Only one thread may commit."""
        self._require_fd()
        if index in self.have:
            return
        # Offered first: the hasher takes a piece from memory only if it is held
        # by the time the piece counts as present.
        self._whole().offer(index, view)
        self.have.add(index)
        self._unsaved += 1
        if (
            self._unsaved >= SAVE_EVERY_PIECES
            or time.monotonic() - self._last_save >= SAVE_INTERVAL
        ):
            self._save()

    def read_piece(self, index: int) -> bytes:
        """The bytes of a verified piece (to serve onward); KeyError if absent.

        Safe to call from another thread, also while the download is being closed
        (ValueError once it is).
        """
        with self._closing:
            self._require_fd()
            if index not in self.have:
                raise KeyError(index)
            return bytes(self._read(index))

    def _read(self, index: int) -> memoryview:
        """Piece ``index`` as stored, in this thread's buffer (valid until its next use)."""
        offset, length = piece_range(index, self.size)
        chunk = _aligned_buffer()[:length]
        # Pieces were written around the page cache: reading them through it
        # would only fill it.
        if not (length % DIRECT_ALIGN == 0 and self._direct(_pread_exact, chunk, offset)):
            _pread_exact(self._require_fd(), chunk, offset)
        return chunk

    def _direct(self, io: Callable[[int, memoryview, int], None], buf: memoryview,
                offset: int) -> bool:
        """Do ``io`` (pread or pwrite of an aligned ``buf``) with O_DIRECT; False if
        the caller must go through the page cache instead."""
        fd = self._direct_fd
        if fd is None:
            return False
        try:
            io(fd, buf, offset)
            return True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        # Some filesystems open with O_DIRECT but refuse the I/O itself.  The
        # descriptor stays open until close: another thread may be using it.
        log.info("direct I/O refused for %s: using the page cache", self.part_path)
        self._direct_fd = None
        return False

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
        except OSError as exc:
            # Name the file: the data dir may be on another disk than the download
            # (a full one there would otherwise read as the destination's).
            raise OSError(exc.errno, exc.strerror, str(tmp)) from exc
        finally:
            os.close(fd)
        os.replace(tmp, self.resume_path)
        self._unsaved = 0
        self._last_save = time.monotonic()

    def save_pending(self) -> None:
        """Persist the resume record if pieces were verified since it was last saved.

        ``commit`` saves only when a piece arrives, so a download that stalls
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

    def _whole(self) -> WholeFileHasher:
        # Started only once pieces arrive: a resumed download re-verifies first.
        if self._hasher is None:
            self._require_fd()
            self._hasher = WholeFileHasher(self._read, self.size, self.have)
        return self._hasher

    def _stop_hasher(self) -> None:
        if self._hasher is not None:
            self._hasher.stop()
            self._hasher = None

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
        actual = self._whole().hexdigest()
        if actual != self.sha1:
            self.discard()
            raise IntegrityError(
                f"{self.final_path.name}: SHA1 {actual} does not match expected {self.sha1}"
            )
        os.fsync(fd)
        self._put_in_place(fd)
        _fsync_dir(self.final_path.parent)
        self._finished = True
        self._remove_resume()

    def _put_in_place(self, fd: int) -> None:
        """Give the partial file its real name, never replacing a file that appeared
        there meanwhile (DestinationTaken, the partial file left as it was)."""
        taken = DestinationTaken(f"{self.final_path} was created by someone else during "
                                 "the download; it was left as it is")
        try:  # a hard link fails if the name is taken, where a rename would replace it
            os.link(self.part_path, self.final_path, follow_symlinks=False)
        except FileExistsError:
            raise taken from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            # No hard links on this filesystem: check, then rename (a small race).
            if os.path.lexists(self.final_path):
                raise taken from None
            os.rename(self.part_path, self.final_path)
            return
        if not _same_file(os.stat(self.final_path, follow_symlinks=False), os.fstat(fd)):
            # The partial file's name was taken over by another file: not ours to publish.
            _unlink(self.final_path)
            raise DestinationTaken(f"{self.part_path} was replaced during the download")
        _unlink(self.part_path)

    def _remove_resume(self) -> None:
        _remove_record(self.resume_path)

    @classmethod
    def abandon(cls, final_path: Path, resume_path: Path) -> None:
        """Delete what an unfinished download left behind: its resume record, and its
        partial file unless another download is writing that now."""
        part_path = cls.part_path_for(final_path)
        # FileNotFoundError: its directory is gone, and the partial file with it.
        with contextlib.suppress(DestinationTaken, FileNotFoundError):
            fd = _open_part(part_path)  # locked: nobody else is writing it
            try:
                _unlink(part_path)
            finally:
                os.close(fd)
        _remove_record(resume_path)

    def discard(self) -> None:
        """Delete the partial file and resume record, leaving nothing behind.

        A file that cannot be deleted (its directory was removed or replaced
        meanwhile, say) is logged, not raised: this runs while a download is
        already failing, and the descriptor and its lock are released all the same.
        """
        try:
            if not self._finished:
                _unlink(self.part_path)  # while still locked: nobody else can be writing it
        except OSError as exc:
            log.warning("cannot delete the partial file %s: %s", self.part_path, exc)
        finally:
            self._close_fd()
        try:
            self._remove_resume()
        except OSError as exc:
            log.warning("cannot delete the resume record %s: %s", self.resume_path, exc)

    def close(self) -> None:
        """Persist progress (unless finished) and release the file descriptor, also
        when the progress cannot be saved (that error is raised afterwards)."""
        if self._fd is None:
            return
        try:
            if not self._finished and self._unsaved:
                self._save()
        finally:
            self._close_fd()

    def _close_fd(self) -> None:
        self._stop_hasher()
        with self._closing:  # not while the piece server reads: the number could be reused
            direct, fd = self._opened_direct, self._fd
            self._direct_fd = self._opened_direct = self._fd = None
            if direct is not None:
                os.close(direct)
            if fd is not None:
                os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
