"""Requests to the trackers: timeout, retry and failover (the Lazy Pirate pattern).

Every request carries (client id, request id); a retry reuses both, so the
trackers recognise it and it takes effect once, whichever tracker gets it.
A failover is announced once, when another tracker than the last to answer
answers (or, at first, than the first one listed): not on every failed
attempt, and not at all while none answers.

A tracker answers ``busy`` to a login or create_user while its password hashing is
full.  That request did nothing there, so it is sent again like an unanswered one:
same ids, the next tracker (another may have free slots; this one is loaded right
now), a backoff with jitter after each full round, within the same deadline.  Leaving
a busy tracker is no failover: it is alive, so no notice; only when the deadline
passes does the caller get ``busy``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from p2p import codec
from p2p.config import TrackerAddress
from p2p.errors import LocalError, ProtocolError, RemoteError
from p2p.messages.tracker import MAX_REPLY, Reply, Request

log = logging.getLogger(__name__)

ATTEMPT_TIMEOUT = 0.4  # a tracker silent this long is skipped: failover well within 1 s
GIVE_UP_AFTER = 8.0  # then the command fails with no_tracker (or busy, if one said so)
BUSY = "busy"  # a tracker's code for "not now": its password hashing is full
SILENT_AFTER_BUSY = 2  # attempts in a row a tracker that said busy is silent: maybe dead


def round_backoff(round_no: int) -> float:
    """Seconds to wait after the ``round_no``-th round (from 1) in which every tracker
    was silent or busy: 0.05-0.1 s, doubling to 0.5-1 s, so that clients neither
    stampede a tracker that comes back nor hammer one whose hashing is full."""
    return min(1.0, 0.05 * 2**round_no) * random.uniform(0.5, 1.0)


class TrackerClient:
    """Sends requests to the first tracker that answers, remembering which one did."""

    def __init__(
        self,
        trackers: list[TrackerAddress],
        *,
        context: zmq.Context[Any] | None = None,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        give_up_after: float = GIVE_UP_AFTER,
        on_failover: Callable[[TrackerAddress, TrackerAddress], None] | None = None,
    ) -> None:
        self.trackers = trackers
        self.cid = uuid.uuid4().hex
        self.token: str | None = None
        self._context = context or zmq.Context.instance()
        self._attempt_timeout = attempt_timeout
        self.give_up_after = give_up_after  # how long one call tries the trackers
        self._on_failover = on_failover
        self._rid = 0
        self._current = 0
        # index of the tracker that answered last; at first the one a user expects
        self._last_answered = 0
        # that tracker's last answer was busy: the client left it by choice, not failover
        self._left_busy = False
        self._sock: zmq.Socket[Any] | None = None
        self._awaiting_reply = False  # _sock sent a request and has not read its reply
        # (thread, payload, rid) of the request a Ctrl-C cut short, for settle()
        self._interrupted: tuple[int, bytes, int] | None = None
        # Every exchange holds this: the REPL, ping, download and piece-server threads
        # share the one socket.
        self._lock = threading.Lock()

    @property
    def current(self) -> TrackerAddress:
        return self.trackers[self._current]

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """Send one request and return its result; raise ProtocolError with the code."""
        return self._call(op, args, None)

    def call_as(self, token: str, op: str, args: dict[str, Any] | None = None) -> Any:
        """``call`` in the session with ``token``, and only in it: once this client has
        ended that session (a logout, or the trackers ended it), the request is refused
        here with ``not_logged_in``, unsent.  A request queued during one session must
        never take effect in the next one (the next user's, maybe)."""
        return self._call(op, args, token)

    def _call(self, op: str, args: dict[str, Any] | None, session: str | None) -> Any:
        with self._lock:
            if session is not None and session != self.token:
                raise LocalError("not logged in: the session of this request has ended",
                                 "not_logged_in")
            self._rid += 1
            # The token named, not self.token read again: a logout and a login on other
            # threads may change that at any moment.
            request = Request(op, self.cid, self._rid, args or {}, session or self.token)
            payload = codec.encode(request.to_wire())
            try:
                reply = self._exchange(payload, request.rid)
            except KeyboardInterrupt:
                self._interrupted = (threading.get_ident(), payload, request.rid)
                raise
            if self._interrupted and self._interrupted[0] == threading.get_ident():
                self._interrupted = None  # this thread has moved on without settling it
        if not reply.ok:
            raise RemoteError(reply.error, reply.code)
        return reply.result

    def settle(self) -> None:
        """Send again, with the same request id, the request that a Ctrl-C on this thread
        cut short, and wait for its answer (whatever it says).

        Until then a copy of it may still reach a tracker (one that was hung, say) and
        take effect after anything sent since; once answered, trackers apply no copy of
        it again.  Raises ProtocolError ``no_tracker`` as ``call`` does.
        """
        with self._lock:
            interrupted = self._interrupted
            if interrupted is None or interrupted[0] != threading.get_ident():
                return
            self._exchange(interrupted[1], interrupted[2])
            self._interrupted = None

    def close(self, wait: bool = True) -> None:
        """Close the connection; with ``wait`` False, not if another thread's request
        holds it (the process is leaving, and that request ends with its timeout)."""
        if not self._lock.acquire(timeout=-1 if wait else 0.1):
            return
        try:
            self._drop_socket()
        finally:
            self._lock.release()

    def _exchange(self, payload: bytes, rid: int) -> Reply:
        deadline = time.monotonic() + self.give_up_after
        attempts = 0  # unanswered or answered busy
        # tracker index -> its busy answer to this request, and how many attempts in a
        # row it has been silent since.  One silent that often since is not said to be
        # busy at the deadline: it may be dead.  Once is not enough: a tracker whose
        # hashing is flooded, on a loaded machine, misses an attempt's 0.4 s now and then.
        busy: dict[int, tuple[Reply, int]] = {}
        while True:
            try:
                reply = self._try(self._socket(), payload, rid)
            except BaseException:
                # Ctrl-C (KeyboardInterrupt in poll) or any error after the send leaves
                # the REQ socket owing a receive: every later send would fail with EFSM.
                self._drop_socket()
                raise
            attempts += 1
            previous = self.current
            if reply is None:
                if self._current in busy:
                    said, silent = busy[self._current]
                    if silent + 1 >= SILENT_AFTER_BUSY:
                        del busy[self._current]
                    else:
                        busy[self._current] = (said, silent + 1)
                self._unanswered()
                self._drop_socket()  # a REQ socket that timed out cannot be reused
                self._move_on()
                log.info("%s did not answer, trying %s", previous, self.current)
            elif reply.ok or reply.code != BUSY:
                self._answered(busy=False)
                return reply
            else:
                # Refused before it did anything there: safe to send elsewhere as is.
                busy[self._current] = (reply, 0)
                self._answered(busy=True)
                self._move_on()
                log.info("%s is busy, trying %s", previous, self.current)
            left = deadline - time.monotonic()
            if left <= 0:
                if busy:  # a tracker is there, only loaded: say so
                    said = next(iter(busy.values()))[0]
                    raise RemoteError(f"{said.error} (still busy after "
                                      f"{self.give_up_after:g} s of retries)", BUSY)
                raise LocalError(
                    f"no tracker answered within {self.give_up_after:g} s", "no_tracker"
                )
            if attempts % len(self.trackers) == 0:
                # A whole round failed: back off with jitter so clients don't stampede,
                # nor hammer trackers busy hashing. KeyboardInterrupt here finds the
                # socket clean: dropped, or holding the busy answer it has read.
                time.sleep(min(left, round_backoff(attempts // len(self.trackers))))

    def _move_on(self) -> None:
        """Send the next attempt to the next tracker in the file (the same one if alone)."""
        following = (self._current + 1) % len(self.trackers)
        if following != self._current:
            self._drop_socket()  # a REQ socket is connected to one tracker
            self._current = following

    def _unanswered(self) -> None:
        """The current tracker was silent: if it answered last, leaving it is a failover."""
        if self._current == self._last_answered:
            self._left_busy = False

    def _answered(self, busy: bool) -> None:
        """The current tracker answered (``busy``: that it is): announce it if it
        replaces the last one that answered, unless that one was left for being busy.

        Telling the user on every failed attempt flooded them while every tracker was
        down (both ways, every 0.4 s, from the ping thread too); what they care about is
        which tracker now serves them because another stopped answering.  A busy
        tracker is alive: "not answering" would be false, and nothing needs their care.
        """
        last, self._last_answered = self._last_answered, self._current
        left_busy, self._left_busy = self._left_busy, busy
        if self._on_failover is None or last == self._current or left_busy:
            return
        try:
            self._on_failover(self.trackers[last], self.current)
        except Exception:  # the request took effect: a broken notice must not hide that
            log.exception("failover notice failed")

    def _try(self, sock: zmq.Socket[Any], payload: bytes, rid: int) -> Reply | None:
        self._awaiting_reply = True
        sock.send(payload)
        wait_until = time.monotonic() + self._attempt_timeout
        while (left := wait_until - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000) + 1):
                return None
            frame = sock.recv()
            self._awaiting_reply = False
            try:
                reply = Reply.from_wire(codec.decode(frame, max_size=MAX_REPLY))
            except ProtocolError as exc:
                log.warning("%s sent a malformed reply: %s", self.current, exc)
                return None
            if reply.rid in (rid, -1):
                return reply
            return None
        return None

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is not None and (self._sock.closed or self._awaiting_reply):
            # A second Ctrl-C can land inside _drop_socket itself: never reuse a socket
            # that is closed or still owes a receive.
            self._drop_socket()
        if self._sock is None:
            sock = self._context.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY)
            # ZMTP heartbeats notice a hung (SIGSTOPped) tracker on an idle connection.
            sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
            sock.connect(self.current.client_endpoint)
            self._sock = sock
        return self._sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self._awaiting_reply = False
