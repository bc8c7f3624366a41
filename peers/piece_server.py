"""The ROUTER that serves pieces to members of the file's group.

A downloader opens a file with Hello (user + the ticket the tracker issued it for
the group and this peer, and the file's SHA1, which must be the one shared here);
the ticket is checked with a tracker, which accepts only a ticket issued for this
peer's own address (one shown to another peer is worthless here).  The answer is
cached briefly and asked for again while the connection is in use, so a user who
left the group loses an open connection too (see ticket_checks: the asking never
holds up the pieces going to others).  Its Get requests are served in order as
the upload limit allows, each only while its ticket is trusted and while its user
has fewer than MAX_UNSENT_PER_USER pieces not yet written out (a member who asks
and never reads makes the server hold no more); a Cancel withdraws one still
queued, and a downloader found gone (its connection closed) loses all its queued
requests.
Pieces verified later are pushed to it as Have notices.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from p2p.bounded_log import BoundedLog
from p2p.errors import LocalError
from p2p.messages import piece as msg
from p2p.pieces import piece_range
from peers.malloc_tuning import release_free_memory
from peers.recent_pieces import RecentPieces
from peers.request_queue import Request, RequestQueue
from peers.shares import Key, ShareRegistry, Source
from peers.ticket_checks import Credentials, TicketCache, TicketChecker, TicketsCheck

log = logging.getLogger(__name__)

MAX_DOWNLOADERS = 1024  # remembered downloader connections (LRU)
# Pieces announced within this long reach each downloader in one Have message.
# A fast download verifies hundreds of pieces a second; telling its peers every
# 10 ms instead cost each of four downloaders ~0.1 s of CPU per GiB, for nothing.
NEWS_DELAY = 0.1
# Pieces kept after serving them, for the other downloaders of the same file (at
# most 16 MiB; see recent_pieces).  Four downloaders of one file spread over
# more than the 16 once kept; a lone downloader keeps none.
RECENT_PIECES = 32
# Pieces are kept only for downloaders that opened a file or asked for a piece this
# recently: nothing tells the server a downloader closed its connection, so a seeder
# remembers an opening from every past download.
ASKING_WITHIN = 10.0
# Requests one user may have waiting here, over all their connections; Gets beyond
# that are ignored.  A download asks a peer for at most download.MAX_CREDIT (24)
# pieces at a time, so this leaves room for ten at once.  It also bounds the work
# of walking past a user's held requests (see MAX_UNSENT_PER_USER).
MAX_QUEUED_PER_USER = 256
# Pieces handed to zmq for one user and not yet written to the connection, beyond
# which that user's requests wait.  SNDHWM counts replies, not bytes, and a piece
# reply must never meet it (it would be dropped), so without this a member who asks
# and never reads would have zmq hold a piece per Get: with no SNDHWM, 2,000 Gets grew
# a piece server's process from 58 MB to 1 GB.
MAX_UNSENT_PER_USER = 48
# How soon requests held back by MAX_UNSENT_PER_USER are looked at again: 24 MiB
# already on its way keeps a connection busy for longer than that.
UNSENT_RETRY_MS = 20
# Tickets being asked about at once; past this a new one is told to come back soon
# (each costs a tracker call, and a stranger can make up any number of them).
MAX_ASKING = 256
# Replies zmq may hold for one connection.  Pieces are bounded per user already (see
# MAX_UNSENT_PER_USER) and a downloader reads what it asked for, so only a connection
# that never reads gets here: with no bound, a stranger sending garbage and reading no
# refusal had 300,000 one-byte frames grow a client by 50 MB, and more without end.
# Past it a reply is dropped (zmq.Again: sends never block the loop).
SNDHWM = 1000
# Serving keeps recent pieces, and freed piece buffers in the allocator
# (peers/malloc_tuning); this long after the last piece went out both are given
# back, so an idle client stays small.
RELEASE_AFTER_IDLE = 10.0
_UNKNOWN_SOURCE = "?"  # a connection without an IP address (ipc, inproc)


def _source(frame: zmq.Frame) -> str:
    """The IP address a message came from (what its log lines are counted by)."""
    try:
        return str(frame.get("Peer-Address"))
    except zmq.ZMQError:  # not over TCP
        return _UNKNOWN_SOURCE


class TokenBucket:
    """Upload rate limit: ``rate`` bytes per second with a one-second burst."""

    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.stamp = rate, rate, time.monotonic()

    def delay(self, size: int) -> float:
        """Seconds to wait before ``size`` bytes may go (0 = now); takes them if so."""
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < min(size, self.rate):
            return (min(size, self.rate) - self.tokens) / self.rate
        self.tokens -= size
        return 0.0


class PieceServer:
    """Serves this client's shared pieces on ``host:port`` from its own thread."""

    def __init__(self, host: str, port: int, registry: ShareRegistry, check_tickets: TicketsCheck,
                 *, upload_limit: float | None = None,
                 context: zmq.Context[Any] | None = None) -> None:
        self.registry = registry
        self._check_tickets = check_tickets
        self._context = context or zmq.Context.instance()
        self._bucket = TokenBucket(upload_limit) if upload_limit else None
        self._sock = self._context.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, msg.MAX_REQUEST)
        self._sock.setsockopt(zmq.SNDHWM, SNDHWM)
        # A send to a downloader that went away raises instead of vanishing: see _send.
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.bind(f"tcp://{host}:{port}")
        self._notices = self._context.socket(zmq.PULL)
        self._notices_addr = f"inproc://piece-notices-{id(self)}"
        self._notices.bind(self._notices_addr)
        self._news: list[tuple[Key, int]] = []  # announced, not yet told (under _news_lock)
        self._news_lock = threading.Lock()
        self._tell_at: float | None = None
        self._tickets = TicketCache()
        self._checker = TicketChecker(lambda asked: self._check_tickets(asked), self._wake)
        # hellos waiting for a tracker's answer, by the credentials they came with, each
        # with the address it came from (what a refusal's log line is counted by)
        self._waiting: dict[Credentials, dict[tuple[bytes, Key], tuple[msg.Hello, str]]] = {}
        self._watched: set[Key] = set()  # files some downloader opened (read by announce)
        # identity -> files it opened, with the credentials each Get is checked against;
        # LRU so a flood of connections stays bounded
        self._opened: collections.OrderedDict[bytes, dict[Key, Credentials]] = (
            collections.OrderedDict())
        self._queue = RequestQueue()
        # user -> trackers of the pieces sent to them that zmq has not written out yet
        # (oldest first; see MAX_UNSENT_PER_USER)
        self._unsent: dict[str, collections.deque[zmq.MessageTracker]] = {}
        self._ignoring: set[str] = set()  # users told of in the log as asking too much
        self._unread: set[bytes] = set()  # downloaders told of in the log as reading nothing
        # Lines about what strangers send: a flood of garbage must not flood the log.
        self._bad = BoundedLog(log)
        self._recent = RecentPieces(RECENT_PIECES)
        # downloader -> when it last opened a file or asked for a piece, latest last,
        # none older than ASKING_WITHIN
        self._asking: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._last_sent: float | None = None  # when a piece last went out, until released
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="piece-server", daemon=True)
        self._local = threading.local()

    def start(self) -> None:
        self._checker.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._checker.stop()
        self._thread.join(5)

    def announce(self, key: Key, index: int) -> None:
        """Tell downloaders that opened ``key`` that piece ``index`` is now here."""
        if key not in self._watched:  # nobody to tell: skip the hop to the server thread
            return
        with self._news_lock:
            self._news.append((key, index))
            if len(self._news) > 1:
                return  # the server thread was woken for the first and tells them all
        self._wake()

    def _wake(self) -> None:
        """Wake the server thread (from any thread) to look at news and tickets."""
        push = getattr(self._local, "push", None)
        if push is None:
            push = self._context.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(self._notices_addr)
            self._local.push = push
        # Again: a thousand wakes are pending, or the server is gone; either way enough.
        with contextlib.suppress(zmq.Again):
            push.send(b"", zmq.NOBLOCK)

    # --- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._notices, zmq.POLLIN)
        wait = 100
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(wait))
                now = time.monotonic()
                if self._notices in ready:
                    self._drain(self._notices, lambda _frames: None)
                    if self._news and self._tell_at is None:
                        self._tell_at = now + NEWS_DELAY
                    self._guarded("act on ticket answers", self._take_answers, now)
                if self._sock in ready:
                    self._drain(self._sock, self._on_message, copy=False)
                self._bad.flush()
                if self._tell_at is not None and now >= self._tell_at:
                    self._tell_at = None
                    self._guarded("pass on new pieces", self._tell_news)
                wait = self._guarded("send queued pieces", self._send_queued) or 100
                if self._tell_at is not None:
                    wait = min(wait, max(1, int((self._tell_at - now) * 1000)))
                if self._last_sent is not None and now - self._last_sent >= RELEASE_AFTER_IDLE:
                    self._last_sent = None
                    self._recent.clear()  # kept for downloaders asking together: none now
                    for user in list(self._unsent):
                        self._unsent_count(user)  # forgets the users with nothing unsent
                    self._ignoring.clear()
                    self._unread.clear()
                    self._guarded("give back free memory", release_free_memory)
        finally:
            self._sock.close(0)
            self._notices.close(0)

    @staticmethod
    def _guarded(what: str, step: Callable[..., Any], *args: Any) -> Any:
        """Run one step of the loop; a bug in it is logged, and serving goes on."""
        try:
            return step(*args)
        except Exception:
            log.exception("could not %s", what)
            return None

    @staticmethod
    def _drain(sock: zmq.Socket[Any], handler: Callable[[list[Any]], None],
               copy: bool = True) -> None:
        for _ in range(256):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                return
            handler(frames)

    def _tell_news(self) -> None:
        """Pass on the pieces announced since last time, one message per downloader
        and file."""
        with self._news_lock:
            announced, self._news = self._news, []
        news: dict[Key, list[int]] = {}
        for key, index in announced:
            news.setdefault(key, []).append(index)
        now = time.monotonic()
        for ident, opened in list(self._opened.items()):  # _send may forget some
            for key in opened.keys() & news.keys():
                # News is for members too: an idle connection's ticket is asked about
                # again here, or a user who left would hear of every new piece for good.
                if not self._trusted(opened[key], now):
                    continue
                indices = news[key]
                for start in range(0, len(indices), msg.MAX_HAVE_INDICES):
                    self._send(ident, msg.have_frame(key[1],
                                                     indices[start:start + msg.MAX_HAVE_INDICES]))

    def _on_message(self, parts: list[zmq.Frame]) -> None:
        """One message on the ROUTER, with the address it came from (uncopied frames:
        zmq knows the address only of those)."""
        source = _source(parts[-1])
        try:
            self._on_request([part.bytes for part in parts], source)
        except Exception:  # one bad message must never stop the server
            self._bad.warning("peer messages that broke their handler", source,
                              "dropped a peer message from %s that broke its handler", source,
                              exc_info=True)

    def _on_request(self, frames: list[bytes], source: str) -> None:
        if len(frames) != 2:
            self._bad.warning("peer requests of the wrong shape", source,
                              "dropped a peer request of %d frames from %s", len(frames), source)
            return
        ident, body = frames
        try:
            request = msg.parse_request(body)
        except LocalError as exc:
            self._bad.warning("malformed peer requests", source, "bad peer request from %s: %s",
                              source, exc)
            self._send(ident, msg.refused_frame("", exc.code, str(exc)))
            return
        if isinstance(request, msg.Hello):
            self._hello(ident, request, source)
        elif isinstance(request, msg.Get):
            self._get(ident, request)
        else:
            self._cancel(ident, request)

    def _hello(self, ident: bytes, hello: msg.Hello, address: str) -> None:
        key = (hello.group, hello.name)
        source = self.registry.get(key)
        if source is None or hello.sha1 != source.sha1:
            # One answer whether the name is unknown here or names other content, and no
            # tracker asked: without the file's SHA1 a stranger learns nothing, and a
            # flood of hellos cannot keep this thread waiting on a tracker.
            self._refuse(ident, hello.name, "not_shared", f"{hello.name} is not shared here")
            return
        credentials = (hello.user, hello.group, hello.ticket)
        if self._tickets.valid(credentials, time.monotonic()):
            self._open(ident, hello)
            return
        new_ticket = credentials not in self._tickets.asking
        if ((new_ticket and len(self._tickets.asking) >= MAX_ASKING)
                or sum(map(len, self._waiting.values())) >= MAX_DOWNLOADERS):
            self._refuse(ident, hello.name, "busy", "too many tickets to check: try again soon")
            return
        self._waiting.setdefault(credentials, {})[(ident, key)] = (hello, address)
        self._ask(credentials)

    def _open(self, ident: bytes, hello: msg.Hello) -> None:
        """Serve ``hello``'s file to ``ident`` (its ticket is good): send what is here."""
        key = (hello.group, hello.name)
        source = self.registry.get(key)
        if source is None or hello.sha1 != source.sha1:  # stopped sharing while we asked
            self._refuse(ident, hello.name, "not_shared", f"{hello.name} is not shared here")
            return
        self._opened.setdefault(ident, {})[key] = (hello.user, hello.group, hello.ticket)
        self._watched.add(key)
        self._opened.move_to_end(ident)
        self._asked(ident, time.monotonic())
        while len(self._opened) > MAX_DOWNLOADERS:
            self._opened.popitem(last=False)
        self._send(ident, msg.bitfield_frame(hello.name, source.have().to_bytes()))

    def _ask(self, credentials: Credentials) -> None:
        if self._tickets.ask(credentials, time.monotonic()):
            self._checker.ask(credentials)

    def _take_answers(self, now: float) -> None:
        """Act on what a tracker said about tickets: open the hellos that waited for
        it, and withdraw every opening a refused ticket made."""
        for credentials, verdict in self._checker.answers():
            trusted = self._tickets.answered(credentials, verdict, now)
            hellos = self._waiting.pop(credentials, {})
            user, group, _ticket = credentials
            if trusted:
                if verdict is None:  # good when asked: served on rather than cut at once
                    log.warning("serving %s on without a tracker to re-check", user)
                for (ident, _key), (hello, _address) in hellos.items():
                    self._open(ident, hello)
                continue
            if verdict is None:
                for (ident, _key), (hello, _address) in hellos.items():  # tries again soon
                    self._refuse(ident, hello.name, "no_tracker",
                                 "cannot check the ticket now: try again soon")
                continue
            openings = [(ident, key) for ident, opened in self._opened.items()
                        for key, c in opened.items() if c == credentials]
            # Counted by the address they came from, not by the user they name: anyone
            # with the file's SHA1 can make up a user, and a ticket, for every hello.
            for address in {address for _hello, address in hellos.values()}:
                self._bad.warning("refused tickets", address,
                                  "refused %s from %s: a tracker does not vouch for its ticket "
                                  "for %s (not a member, or not logged in)", user, address, group)
            for (ident, _key), (hello, _address) in hellos.items():
                self._refuse(ident, hello.name, "not_member",
                             f"{user} may not download from group {group}")
            for ident, key in openings:
                self._withdraw(ident, key, credentials)

    def _withdraw(self, ident: bytes, key: Key, credentials: Credentials) -> None:
        """Close ``ident``'s opening of ``key``: its ticket was refused."""
        user, group, _ticket = credentials
        log.warning("refused %s: a tracker no longer vouches for its ticket for %s "
                    "(left the group, or logged out)", user, group)
        # So its next Gets are refused without asking.  (An earlier withdrawal may have
        # found the downloader gone and forgotten it whole.)
        self._opened.get(ident, {}).pop(key, None)
        self._queue.drop(lambda request: request[:2] == (ident, key))
        # No index: the opening is withdrawn, not one piece (the downloader drops us).
        self._refuse(ident, key[1], "not_member",
                     f"{user} may no longer download from group {group}")

    def _trusted(self, credentials: Credentials, now: float) -> bool:
        """Whether pieces may go out under ``credentials`` now; asks a tracker again
        when the cached yes is about to run out."""
        if self._tickets.due(credentials, now):
            self._ask(credentials)
        return self._tickets.servable(credentials, now)

    def _get(self, ident: bytes, get: msg.Get) -> None:
        key = (get.group, get.name)
        credentials = self._opened.get(ident, {}).get(key)
        if credentials is None:
            self._refuse(ident, get.name, "not_member", "send hello with a valid ticket first",
                         get.index)
            return
        user = credentials[0]
        if self._queue.count(user) >= MAX_QUEUED_PER_USER:
            if user not in self._ignoring and len(self._ignoring) < MAX_DOWNLOADERS:
                self._ignoring.add(user)
                log.warning("ignoring Gets from %s beyond %d waiting", user, MAX_QUEUED_PER_USER)
            return
        self._asked(ident, time.monotonic())
        self._queue.append((ident, key, get.index, user))

    def _asked(self, ident: bytes, now: float) -> None:
        """Downloader ``ident`` opened a file or asked for a piece at ``now``."""
        self._asking[ident] = now
        self._asking.move_to_end(ident)
        while (len(self._asking) > MAX_DOWNLOADERS
               or now - next(iter(self._asking.values())) >= ASKING_WITHIN):
            self._asking.popitem(last=False)  # never the one just added

    def _others_asking(self, ident: bytes, key: Key, now: float) -> int:
        """Downloaders other than ``ident`` that have ``key`` open and asked lately."""
        count = 0
        for other, at in reversed(self._asking.items()):
            if now - at >= ASKING_WITHIN:
                break
            if other != ident and key in self._opened.get(other, {}):
                count += 1
        return count

    def _cancel(self, ident: bytes, cancel: msg.Cancel) -> None:
        """Drop a queued Get of this downloader; one already sent (or unknown) is ignored."""
        key = (cancel.group, cancel.name)
        credentials = self._opened.get(ident, {}).get(key)
        if credentials is None:  # withdrawn: its requests are gone already
            return
        entry = (ident, key, cancel.index, credentials[0])
        self._queue.drop(lambda request: request == entry)

    def _send(self, ident: bytes, frames: list[Any], unsent_for: str | None = None) -> bool:
        """Send to one downloader; if it is gone, forget it and its queued requests.

        With ``unsent_for`` (a user) the frames' buffers go to zmq uncopied (they
        must never change) and count among that user's unsent pieces until zmq has
        written them out.
        """
        try:
            if unsent_for is None:
                self._sock.send_multipart([ident, *frames], zmq.NOBLOCK)
            else:
                # The last frame as a Frame of its own: pyzmq would copy a short one
                # (under copy_threshold, a short last piece or a small file's only one)
                # and hand back a tracker done at once, which bounds nothing.
                *head, last = frames
                tracker = self._sock.send_multipart(
                    [ident, *head, zmq.Frame(last, copy=False, track=True)],
                    zmq.NOBLOCK, copy=False, track=True)
                self._unsent.setdefault(unsent_for, collections.deque()).append(tracker)
        except zmq.Again:  # SNDHWM replies wait for it: it reads nothing
            if ident not in self._unread and len(self._unread) < MAX_DOWNLOADERS:
                self._unread.add(ident)
                log.warning("dropping replies to a downloader that reads none of them")
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._opened.pop(ident, None)
            self._queue.drop(lambda request: request[0] == ident)
            return False
        return True

    def _unsent_count(self, user: str) -> int:
        """Pieces sent to ``user`` that zmq has not written out yet."""
        trackers = self._unsent.get(user)
        while trackers and trackers[0].done:
            trackers.popleft()
        if trackers and len(trackers) >= MAX_UNSENT_PER_USER:
            # The oldest may wait on one slow connection of the user's while pieces
            # sent later on another went out: count only what zmq still holds.
            trackers = collections.deque(t for t in trackers if not t.done)
            self._unsent[user] = trackers
        if not trackers:
            self._unsent.pop(user, None)
            return 0
        return len(trackers)

    def _send_queued(self) -> int:
        """Serve queued requests as the rate limit allows; returns ms until the next try.

        A request whose ticket is not trusted now (a tracker is being asked), or
        whose user has MAX_UNSENT_PER_USER pieces not written out yet, stays queued,
        in its place, while the others go out.
        """
        held: list[Request] = []
        try:
            return self._send_trusted(held)
        finally:
            self._queue.put_back(held)

    def _send_trusted(self, held: list[Request]) -> int:
        now = time.monotonic()
        wait = 100
        blocked: set[str] = set()  # users found at MAX_UNSENT_PER_USER in this pass
        while self._queue:
            ident, key, index, _user = self._queue.first()
            source = self.registry.get(key)
            if source is None:
                self._queue.popleft()
                self._refuse(ident, key[1], "not_shared", f"{key[1]} is no longer shared", index)
                continue
            credentials = self._opened.get(ident, {}).get(key)
            if credentials is None:  # withdrawn, or forgotten among too many downloaders
                self._queue.popleft()
                continue
            if not self._trusted(credentials, now):
                held.append(self._queue.popleft())
                continue
            if (credentials[0] in blocked
                    or self._unsent_count(credentials[0]) >= MAX_UNSENT_PER_USER):
                blocked.add(credentials[0])  # sends in this pass only add to its count
                held.append(self._queue.popleft())
                wait = UNSENT_RETRY_MS
                continue
            if self._bucket is not None:  # charged what it sends: the last piece may be short
                length = piece_range(index, source.size)[1] if source.has(index) else 0
                delay = self._bucket.delay(length)
                if delay > 0:
                    return max(1, int(delay * 1000))
            self._queue.popleft()
            try:
                data = self._read(ident, source, index, now)
            except (OSError, ValueError, KeyError, IndexError) as exc:
                log.warning("cannot read piece %d of %s: %s", index, key[1], exc)
                data = None
            if data is None:
                self._refuse(ident, key[1], "bad_piece", f"piece {index} is not available here",
                             index)
                continue
            # Not copied: the bytes never change, and a kept piece goes to several.
            if self._send(ident, [msg.piece_frames(key[1], index), data],
                          unsent_for=credentials[0]):
                self.registry.served[key] += 1
                self._last_sent = now
        return wait

    def _read(self, ident: bytes, source: Source, index: int, now: float) -> bytes | None:
        """Piece ``index`` of ``source`` for downloader ``ident``: kept from an earlier
        send if it is, else read and kept for the others asking for the file."""
        if not source.has(index):
            return None
        key = (*source.key, source.sha1, index)
        data = self._recent.take(key)
        if data is None:
            data = source.read(index)
            if data is not None:
                self._recent.keep(key, data, self._others_asking(ident, source.key, now))
        return data

    def _refuse(self, ident: bytes, name: str, code: str, error: str,
                index: int | None = None) -> None:
        self._send(ident, msg.refused_frame(name, code, error, index))
