"""This client's share-state calls to the trackers, sent one at a time, in order.

What a tracker lists of ours is set by four calls: a partial ``share``, a progress
``have``, the completion ``have`` and ``unshare``.  Sent from several threads they
could overtake each other: a late progress note would list a complete file as partial
again, and a ``have`` after stop_share's ``unshare`` would list the file again.  So all
of them go through the one queue and thread here, which sends each only after every
call queued before it has been answered (or given up on), only in the session it was
queued in, and only if it is still wanted right before it goes out.  Nobody has to wait
for them (with every tracker down each takes 8 s to give up); stop_share waits for its
own ``unshare`` only, to tell the user how it went.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from p2p.errors import LocalError, ProtocolError

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (group, file name)
# (session token, op, args) -> the tracker's answer; raises ProtocolError
Send = Callable[[str, str, dict[str, Any]], Any]


def _always() -> bool:
    return True


@dataclass
class Announcement:
    """One share-state call waiting for its turn."""

    key: Key
    op: str
    args: dict[str, Any]
    token: str  # the session it belongs to: it is never sent in another one
    wanted: Callable[[], bool]  # asked right before sending: False drops it unsent
    result: Future[Any] = field(default_factory=Future)

    def drop(self, why: str, code: str) -> None:
        """Resolve it unsent, with a ProtocolError of ``code``."""
        group, name = self.key
        self.result.set_exception(LocalError(f"{self.op} of {name} in {group} not sent: {why}",
                                             code))


class ShareAnnouncements:
    """The queue of share-state calls and the thread that sends them, oldest first."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending: collections.deque[Announcement] = collections.deque()
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="share-announcements",
                                        daemon=True)
        self._thread.start()

    def submit(self, key: Key, op: str, args: dict[str, Any], token: str | None,
               wanted: Callable[[], bool] = _always) -> Future[Any]:
        """Queue ``op`` for ``key`` (group and name are added to ``args``) in the session
        with ``token``; its future holds the tracker's answer or a ProtocolError."""
        item = Announcement(key, op, {"group": key[0], "name": key[1], **args}, token or "",
                            wanted)
        with self._changed:
            if token is None:
                item.drop("not logged in", "not_logged_in")
            elif self._closed:
                item.drop("the client is closing", "not_logged_in")
            else:
                self._pending.append(item)
                self._changed.notify()
        return item.result

    def withdraw(self, key: Key, token: str | None) -> Future[Any]:
        """Queue ``unshare`` of ``key``, dropping every call for it not sent yet (the one
        being sent, if any, is answered first: the unshare lands after it)."""
        with self._changed:
            kept: collections.deque[Announcement] = collections.deque()
            for item in self._pending:
                if item.key == key:
                    item.drop("sharing stopped", "not_shared")
                else:
                    kept.append(item)
            self._pending = kept
            return self.submit(key, "unshare", {}, token)

    def drop_pending(self, why: str) -> None:
        """Drop every call not sent yet: their session has ended (the trackers dropped
        whatever it shared, and a call of it would be refused anyway)."""
        with self._changed:
            pending, self._pending = self._pending, collections.deque()
        for item in pending:
            item.drop(why, "not_logged_in")

    def close(self, timeout: float) -> None:
        """Send nothing more, and give the call being sent up to ``timeout`` seconds."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self.drop_pending("the client is closing")
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if not self._pending:
                    return
                item = self._pending.popleft()
            self._send_one(item)

    def _send_one(self, item: Announcement) -> None:
        try:
            if not item.wanted():
                item.drop("no longer shared", "not_shared")
                return
            item.result.set_result(self._send(item.token, item.op, item.args))
        except ProtocolError as exc:
            log.info("%s of %s in %s failed: %s", item.op, item.key[1], item.key[0], exc)
            item.result.set_exception(exc)
        except Exception as exc:  # a bug: logged, and the calls after it still go
            log.exception("%s of %s in %s failed", item.op, item.key[1], item.key[0])
            item.result.set_exception(exc)
