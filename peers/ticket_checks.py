"""What a peer knows about download tickets, and the thread that asks a tracker.

A tracker's yes is trusted for TICKET_CACHE_SECONDS.  While a connection is in use its
ticket is asked about again REFRESH_AHEAD seconds before that runs out, and served on
until the answer comes: with a tracker that answers, a user who left is cut before
the yes runs out; with none (a call gives up after 8 s), a ticket that was still good
when asked about counts as good one period more, so open downloads go on.  A ticket
whose yes ran out unused gets nothing until a tracker says yes again.  The asking
happens on a thread of its own, so a new downloader waiting for its answer holds up
no one else, and the tickets that queue up while one call is out go in the next call
together, so a flood of made-up tickets delays a real one by a few round trips at most.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from p2p.errors import ProtocolError
from p2p.messages.tracker import MAX_TICKETS_PER_CHECK

log = logging.getLogger(__name__)

TICKET_CACHE_SECONDS = 5.0  # how long a user who left the group can still get pieces
REFRESH_AHEAD = 1.0  # ask again this long before a yes runs out, while it is in use
MAX_CACHED = 4096  # past this, expired answers are forgotten
# With no tracker answering, a ticket nobody vouches for is asked about again only
# after this long (a call that fails at once must not turn into a busy loop).
RETRY_UNANSWERED = 2.0

Credentials = tuple[str, str, str]  # (user, group, ticket) a file was opened with
# tickets -> whether each is valid, in order; ProtocolError when no tracker can tell
TicketsCheck = Callable[[list[Credentials]], list[bool]]
# True: valid; False: refused; None: no tracker could tell
Verdict = bool | None


class TicketCache:
    """Until when each ticket is trusted, and which are being asked about (no I/O)."""

    def __init__(self) -> None:
        self._until: dict[Credentials, float] = {}
        self.asking: set[Credentials] = set()
        self._good_when_asked: set[Credentials] = set()  # a subset of asking
        self._retry_at: dict[Credentials, float] = {}  # unanswered: not before then

    def ask(self, credentials: Credentials, now: float) -> bool:
        """Note that a tracker is asked about ``credentials``; False if it already is."""
        if credentials in self.asking:
            return False
        self.asking.add(credentials)
        if self.valid(credentials, now):
            self._good_when_asked.add(credentials)
        return True

    def valid(self, credentials: Credentials, now: float) -> bool:
        """Whether a tracker's yes for ``credentials`` still holds at ``now``."""
        return self._until.get(credentials, 0.0) > now

    def servable(self, credentials: Credentials, now: float) -> bool:
        """Whether pieces may go out: a yes that holds, or one that still held when a
        tracker was asked about it again and has not answered (a no withdraws it)."""
        return self.valid(credentials, now) or credentials in self._good_when_asked

    def due(self, credentials: Credentials, now: float) -> bool:
        """Whether to ask a tracker now: no yes, or one about to run out, and not asked yet."""
        return (credentials not in self.asking
                and now >= self._until.get(credentials, 0.0) - REFRESH_AHEAD
                and now >= self._retry_at.get(credentials, 0.0))

    def answered(self, credentials: Credentials, verdict: Verdict, now: float) -> bool:
        """Record a tracker's answer; returns whether the ticket is trusted now.

        With no tracker to tell, a ticket that was good when asked about is trusted one
        period more (open downloads do not all stop with the trackers); any other is not.
        A refusal is not cached: the user may join the group again.
        """
        self.asking.discard(credentials)
        good_when_asked = credentials in self._good_when_asked
        self._good_when_asked.discard(credentials)
        self._retry_at.pop(credentials, None)
        if verdict or (verdict is None and good_when_asked):
            if len(self._until) >= MAX_CACHED:
                self._until = {c: t for c, t in self._until.items()
                               if t > now or c in self.asking}
            self._until[credentials] = now + TICKET_CACHE_SECONDS
            return True
        self._until.pop(credentials, None)
        if verdict is None:
            if len(self._retry_at) >= MAX_CACHED:
                self._retry_at = {c: t for c, t in self._retry_at.items() if t > now}
            self._retry_at[credentials] = now + RETRY_UNANSWERED
        return False


class TicketChecker:
    """Asks ``check`` about tickets, up to MAX_TICKETS_PER_CHECK at a time, on its own
    thread; ``wake`` is called (on that thread) after each call, and ``answers`` then
    hands the verdicts over."""

    def __init__(self, check: TicketsCheck, wake: Callable[[], None]) -> None:
        self._check, self._wake = check, wake
        self._asks: queue.SimpleQueue[Credentials | None] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[tuple[Credentials, Verdict]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ticket-checks", daemon=True)
        self._stopped = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread: nothing more is asked; a call under way ends when it returns."""
        self._stopped.set()
        self._asks.put(None)
        self._thread.join(0.5)

    def ask(self, credentials: Credentials) -> None:
        self._asks.put(credentials)

    def answers(self) -> list[tuple[Credentials, Verdict]]:
        """The answers that came in since last time."""
        got = []
        while True:
            try:
                got.append(self._answers.get_nowait())
            except queue.Empty:
                return got

    def _run(self) -> None:
        while (first := self._asks.get()) is not None:
            batch, last = self._more([first])
            if self._stopped.is_set():  # the rest of the queue is for nobody
                return
            for answer in zip(batch, self._verdicts(batch), strict=True):
                self._answers.put(answer)
            try:
                self._wake()
            except Exception:
                log.exception("could not wake the piece server")
            if last:
                return

    def _more(self, batch: list[Credentials]) -> tuple[list[Credentials], bool]:
        """``batch`` and whatever else is queued now, up to a call's worth; True if
        the stop mark was among them."""
        while len(batch) < MAX_TICKETS_PER_CHECK:
            try:
                credentials = self._asks.get_nowait()
            except queue.Empty:
                break
            if credentials is None:
                return batch, True
            batch.append(credentials)
        return batch, False

    def _verdicts(self, batch: list[Credentials]) -> list[Verdict]:
        try:
            verdicts = self._check(batch)
            if len(verdicts) != len(batch):
                raise ValueError(f"{len(verdicts)} verdicts for {len(batch)} tickets")
            return [bool(v) for v in verdicts]
        except ProtocolError as exc:
            log.warning("cannot check %d ticket(s): %s", len(batch), exc)
        except Exception:  # a bug must not stop every later check
            log.exception("checking %d ticket(s) failed", len(batch))
        return [None] * len(batch)
