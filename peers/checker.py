"""Piece verification and writing on worker threads, beside a download's network loop.

Checking a piece's SHA1 and writing it are most of a download's CPU time; both
release the GIL, so a few workers keep every core busy while the download thread
goes on receiving and requesting.  A finished piece comes back through ``done()``
and a pipe (``fileno()``) becomes readable, so the download's poll wakes for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any

from peers.storage import PartialDownload

__all__ = ["Checked", "PieceChecker"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checked:
    """The outcome for one piece: stored (``view`` set), bad (both None), or a write error."""

    index: int
    view: memoryview | None
    error: OSError | None = None


class PieceChecker:
    """Verifies pieces against their SHA1 and stores the good ones, on ``workers`` threads.

    Only verified pieces are written, and a written piece counts only once the
    caller commits it (``PartialDownload.commit``) on its own thread.
    """

    def __init__(self, partial: PartialDownload, workers: int = 2) -> None:
        self._partial = partial
        self._jobs: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Checked] = queue.SimpleQueue()
        self._bell_r, self._bell_w = os.pipe()
        os.set_blocking(self._bell_r, False)
        os.set_blocking(self._bell_w, False)
        self._threads = [threading.Thread(target=self._work, name=f"piece-check-{i}",
                                          daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, index: int, data: Any) -> None:
        """Check piece ``index`` (any buffer; kept alive until done) and store it if good."""
        self._jobs.put((index, data))

    def fileno(self) -> int:
        """Readable while results may be waiting in ``done()``."""
        return self._bell_r

    def done(self) -> list[Checked]:
        """Every result ready now, in the order the workers finished them."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._bell_r, 4096):
                pass
        results = []
        while True:
            try:
                results.append(self._done.get_nowait())
            except queue.Empty:
                return results

    def close(self) -> None:
        """Stop the workers once the pieces already submitted are dealt with."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        os.close(self._bell_r)
        os.close(self._bell_w)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            index, data = job
            try:
                self._partial.wait_for_hasher()
                view = self._partial.verify(index, data)
                if view is not None:
                    self._partial.store(index, view)
                result = Checked(index, view)
            except OSError as exc:
                result = Checked(index, None, exc)
            except Exception as exc:  # a bug must reach the download, not kill a worker
                log.exception("checking piece %d failed", index)
                result = Checked(index, None, OSError(f"internal error: {exc!r}"))
            self._done.put(result)
            with contextlib.suppress(BlockingIOError):  # a full pipe already rings
                os.write(self._bell_w, b"\0")
