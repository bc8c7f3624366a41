"""What this client shares: complete files and partial downloads, by (group, name).

Complete files are remembered in ``shares.json`` under the data dir, so that a
later login from the same data dir shares them again without re-hashing, after
checking that each is still there and unchanged (size and modification time).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from p2p.pieces import Bitfield, piece_count, piece_range, piece_sha1
from peers.storage import PartialDownload, replace_json

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (group, file name)


@dataclass(frozen=True)
class SavedShare:
    """A complete file this client shares, as remembered across logins."""

    user: str
    group: str
    name: str
    path: str
    size: int
    sha1: str
    pieces: str  # hex of the concatenated piece SHA1s
    mtime_ns: int
    hashed_at_ns: int = 0  # wall clock when hashing began (0: unknown, never trusted)

    def unchanged(self) -> bool:
        """Whether the file is still there with the size and mtime it had when hashed."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns


# Filesystem timestamps are coarse (a clock tick, or whole seconds on some
# filesystems): a write in the same tick as the recorded mtime leaves it unchanged.
MTIME_MARGIN_NS = 2_000_000_000


def trusted_mtime(mtime_ns: int, hashed_at_ns: int) -> int | None:
    """``mtime_ns`` if it can vouch for the file's content, else None.

    Only an mtime already older than the timestamp granularity when hashing began
    proves that any later change would have moved it.
    """
    return mtime_ns if mtime_ns + MTIME_MARGIN_NS <= hashed_at_ns else None


class Source:
    """Where the pieces of one shared file come from: a whole file or a partial."""

    def __init__(self, key: Key, size: int, pieces: bytes, path: Path,
                 partial: PartialDownload | None = None, *, sha1: str | None = None,
                 mtime_ns: int | None = None) -> None:
        self.key, self.size, self.pieces, self.path = key, size, pieces, path
        self.partial = partial
        self.mtime_ns = mtime_ns  # see trusted_mtime: None means check every piece
        if sha1 is None:  # a partial knows the whole file's SHA1; a complete file must say
            if partial is None:
                raise ValueError("a complete file's Source needs its whole-file sha1")
            sha1 = partial.sha1
        self.sha1 = sha1  # what a downloader's Hello must name
        self._fd: int | None = None

    def have(self) -> Bitfield:
        if self.partial is not None:
            return self.partial.have.copy()
        return Bitfield.full(piece_count(self.size))

    def has(self, index: int) -> bool:
        """Whether piece ``index`` is here to serve (a partial holds only some)."""
        if self.partial is not None:
            return index in self.partial.have
        return 0 <= index < piece_count(self.size)

    def read(self, index: int) -> bytes | None:
        """Piece ``index`` if we have it and it still matches its hash, else None.

        A partial download's pieces were verified as they were written.  A whole
        file is trusted while its size and mtime are those it had when it was
        hashed; once they change, every piece is checked before it goes out, so
        a file altered on disk after sharing is never passed on.
        """
        if self.partial is not None:
            if index not in self.partial.have:
                return None
            return self.partial.read_piece(index)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        offset, length = piece_range(index, self.size)
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            return None
        st = os.fstat(self._fd)
        if self.mtime_ns is not None and (st.st_size, st.st_mtime_ns) == (self.size,
                                                                           self.mtime_ns):
            return data
        if piece_sha1(data) != self.pieces[index * 20:(index + 1) * 20]:
            log.warning("%s piece %d no longer matches its hash: not serving it",
                        self.path, index)
            return None
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ShareRegistry:
    """Thread-safe map of shared files; the piece server reads it, commands change it."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / "shares.json"
        self._lock = threading.Lock()
        # shares.json is read, changed and replaced by the REPL and by download threads
        # finishing at the same moment: one at a time, or a share is lost.
        self._file_lock = threading.Lock()
        self._sources: dict[Key, Source] = {}
        self.served: Counter[Key] = Counter()
        self.active = False  # only while logged in

    def get(self, key: Key) -> Source | None:
        with self._lock:
            return self._sources.get(key) if self.active else None

    def put(self, source: Source) -> None:
        with self._lock:
            old = self._sources.get(source.key)
            self._sources[source.key] = source
        if old is not None and old is not source:
            old.close()

    def remove(self, key: Key) -> None:
        with self._lock:
            source = self._sources.pop(key, None)
        if source is not None:
            source.close()

    def clear(self) -> None:
        with self._lock:
            sources, self._sources = list(self._sources.values()), {}
        for source in sources:
            source.close()

    def listing(self) -> list[Source]:
        with self._lock:
            return list(self._sources.values())

    # --- what survives a restart --------------------------------------------------------

    def saved(self) -> list[SavedShare]:
        try:
            raw = json.loads(self._path.read_text())
            return [SavedShare(**entry) for entry in raw["shares"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", self._path, exc)
            return []

    def remember(self, share: SavedShare) -> None:
        with self._file_lock:
            entries = [s for s in self.saved()
                       if (s.user, s.group, s.name) != (share.user, share.group, share.name)]
            self._save([*entries, share])

    def forget(self, user: str, group: str, name: str) -> None:
        with self._file_lock:
            entries = self.saved()
            kept = [s for s in entries if (s.user, s.group, s.name) != (user, group, name)]
            if len(kept) != len(entries):
                self._save(kept)

    def _save(self, entries: list[SavedShare]) -> None:
        replace_json(self._path, {"shares": [asdict(s) for s in entries]}, indent=1)
