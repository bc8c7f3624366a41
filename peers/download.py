"""One download: a DEALER per peer, several requests in flight to each, verified pieces.

The loop asks the picker which piece to request from which peer, keeps each
peer's pipeline as deep as its measured rate needs (credit-based flow control,
so no socket queue ever drops a piece), hands every piece to worker threads that
check it against the tracker's SHA1 and write it, shares it onward as soon as it
is stored, and checks the whole file before it appears under its real name.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zmq

from p2p.errors import LocalError, ProtocolError
from p2p.messages import piece as msg
from p2p.pieces import PIECE_SIZE, Bitfield, piece_count
from peers.checker import Checked, PieceChecker
from peers.picker import Picker, Trust
from peers.shares import Key, Source
from peers.storage import IntegrityError, PartialDownload

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 3.0  # a peer that does not answer hello in time is skipped for now
SILENCE_TIMEOUT = 4.0  # a peer with requests out and silent this long is dropped
RETRY_PEER_AFTER = 5.0
REFUSED_RETRY_AFTER = 10 * RETRY_PEER_AFTER  # a peer that refused us outright, for good
# A peer that refuses us outright as a non-member may be wrong: it asks a tracker about
# our ticket, and that tracker can lag behind the one that just issued it (a write is
# answered once the trackers deemed live hold it, so one that was hung or cut off when
# we were let in answers from its old state until it catches up).  So we ask again soon,
# then twice as long after each refusal in a row, up to the wait every refusal used to
# get: each hello costs the peer a tracker call.  We only come back while our own
# tracker lists the peer to us, which it does for members only.
NOT_MEMBER_RETRY_FIRST = 1.0
NOT_MEMBER_RETRY_MAX = REFUSED_RETRY_AFTER
# A peer that refused us this recently is named in the waiting message: longer than
# any wait before we ask it again, so a peer that keeps refusing stays named.
REFUSALS_SHOWN_FOR = REFUSED_RETRY_AFTER + 10.0
REFRESH_EVERY = 2.0  # ask the tracker for new peers this often
ANNOUNCE_EVERY = 1.0  # tell the tracker our progress at most this often
MIN_CREDIT, MAX_CREDIT = 2, 24
PIPELINE_SECONDS = 0.05  # keep this much of a peer's measured rate in flight
CANCEL_LINGER_MS = 200  # a closed link's cancels get this long to reach the peer
CHECK_WORKERS = 4  # threads hashing and writing pieces (hashlib and pwrite free the GIL)
MAX_CHECKING = 32  # pieces waiting to be checked beyond which no new request goes out
# Peer links one download keeps open at once.  Every link with a piece we lack holds at
# least MIN_CREDIT requests, so the links set the least that is in flight: 16 x 2 = 32
# pieces (16 MiB), as many as MAX_CHECKING lets wait for the checkers, and well inside the
# picker's WINDOW (48) and the 64 pieces the whole-file SHA1 holds ahead of where it is:
# with 50 links, 100 pieces in flight, many would land beyond it and be read back.
# BitTorrent clients keep more (Transmission 50 per torrent; libtorrent 200 a session,
# none per torrent), but most of those are choked, and libtorrent unchokes 8 peers; here
# every member serves every link, so 16 sources at once is already more than enough.
# A tracker lists up to 50: the rest are met as links drop, or as a link left with
# nothing we lack makes room for a peer the tracker says has some (see plan_links).
MAX_PEER_LINKS = 16


def not_member_retry(refusals: int) -> float:
    """How long to leave a peer alone after its ``refusals``-th not_member in a row."""
    return float(min(NOT_MEMBER_RETRY_FIRST * 2 ** min(refusals - 1, 32),
                     NOT_MEMBER_RETRY_MAX))


def plan_links(candidates: Sequence[tuple[str, bool]], open_links: int,
               idle: Sequence[str], cap: int) -> tuple[list[str], list[str]]:
    """Which peers to dial and which links to close for them, keeping at most ``cap``.

    ``candidates`` are peers we have no link to, in the tracker's order, each with
    whether the tracker says it has a piece we lack; ``idle`` are open links (of
    ``open_links``) that have nothing we lack and nothing in flight, first to go first.
    Peers with pieces we lack are dialled first; one that finds no free slot takes an
    idle link's place.  The others take only free slots, and wait for a later refresh.
    """
    free, spare = max(cap - open_links, 0), list(idle)
    dial: list[str] = []
    close: list[str] = []
    for addr, useful in sorted(candidates, key=lambda c: not c[1]):  # stable: useful first
        if free:
            free -= 1
        elif useful and spare:
            close.append(spare.pop(0))
        else:
            continue
        dial.append(addr)
    return dial, close


class Host(Protocol):
    """What a download needs from its client.

    ``share_partial`` and ``announce_progress`` return at once: the client sends them
    to the trackers in the background, in order with what it sends when the download
    ends (see peers.share_announcements).  The future says whether a tracker took it.
    """

    def tracker_call(self, op: str, args: dict[str, Any]) -> Any: ...
    def share_partial(self, download: Download, source: Source) -> None: ...
    def announce_progress(self, download: Download, have: bytes) -> Future[Any]: ...
    def announce_piece(self, key: Key, index: int) -> None: ...
    def ended(self, download: Download) -> None: ...

    @property
    def user(self) -> str | None: ...


@dataclass(frozen=True)
class Refusal:
    """The latest outright refusal from a peer that has not let us in since."""

    at: float  # time.monotonic() of it
    why: str  # the peer's words (shown in show_downloads)
    not_member: int  # how many of its refusals since it last let us in were not_member


@dataclass
class PeerLink:
    """Our connection to one peer for this file."""

    addr: str
    sock: zmq.Socket[Any]
    opened_at: float
    ready: bool = False
    in_flight: dict[int, float] = field(default_factory=dict)
    last_heard: float = 0.0
    rate: float = 0.0  # bytes/s, smoothed over piece inter-arrival times
    last_piece_at: float = 0.0

    def credit(self) -> int:
        wanted = int(self.rate * PIPELINE_SECONDS / PIECE_SIZE) + MIN_CREDIT
        return max(MIN_CREDIT, min(MAX_CREDIT, wanted))


class Download:
    """A download running in its own thread; ``snapshot`` reports its progress."""

    def __init__(self, host: Host, group: str, name: str, final_path: Path,
                 resume_path: Path, info: dict[str, Any],
                 context: zmq.Context[Any] | None = None) -> None:
        self.host = host
        self.group, self.name = group, name
        self.key: Key = (group, name)
        self.final_path = final_path
        self.resume_path = resume_path
        self.info = info
        self.size: int = info["size"]
        self.sha1: str = info["sha1"]
        self.pieces: bytes = info["pieces"]
        self.count = piece_count(self.size)
        self.state = "downloading"
        self.error = ""
        self.waiting = ""
        self.sharing = True  # pieces are passed on as they arrive (until stop_share)
        self.sources: dict[str, int] = {}  # peer address -> pieces taken from it
        self._context = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._cancelled = ""  # why cancel() ended it (it fails with that), else ""
        self._done = threading.Event()
        self._have = 0
        self._shared = False  # the client serves our pieces and the tracker lists us
        self._links: dict[str, PeerLink] = {}
        self._settled = False  # the first hellos have been answered or timed out
        self._retry_at: dict[str, float] = {}
        self._refused: dict[str, Refusal] = {}  # peer -> its latest outright refusal
        self._banned: set[str] = set()
        self._trust = Trust()
        self._checking: dict[int, str] = {}  # piece being checked -> the peer that sent it
        self._arrivals = 0  # pieces handed to the checkers
        self._unneeded = 0  # piece copies that came when they were no longer wanted
        self._rate_window: collections.deque[tuple[float, int]] = collections.deque()
        self._thread = threading.Thread(target=self._main, name=f"download-{name}", daemon=True)

    # --- control ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop (keeping what was verified, for a later resume) and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(10)

    def cancel(self, why: str) -> None:
        """End it for good: it fails with ``why`` and its partial file is deleted."""
        self._cancelled = why
        self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def snapshot(self) -> dict[str, Any]:
        """What show_downloads says about this download."""
        progress = 1.0 if self.count == 0 else self._have / self.count
        if self.state == "complete":
            progress = 1.0
        return {"group": self.group, "file": self.name, "path": str(self.final_path),
                "state": self.state, "progress": round(progress, 4), "error": self.error,
                "rate": round(self._rate()), "peers": sum(1 for p in self._links.values()
                                                           if p.ready),
                "waiting": self.waiting, "sources": dict(self.sources)}

    # --- the thread ---------------------------------------------------------------------

    def _main(self) -> None:
        partial: PartialDownload | None = None
        try:
            partial = PartialDownload.open(self.final_path, self.size, self.sha1,
                                           [self.pieces[i * 20:(i + 1) * 20]
                                            for i in range(self.count)], self.resume_path)
            self._have = partial.have.count()
            started = time.monotonic()
            if self._transfer(partial):
                transferred = time.monotonic()
                partial.finish()
                self.state = "complete"
                log.info("%s: %d bytes fetched in %.2f s (%d pieces, %d copies not needed, "
                         "%d read back for the whole-file SHA1), whole-file check %.2f s",
                         self.name, self.size, transferred - started, self._arrivals,
                         self._unneeded, partial.read_back, time.monotonic() - transferred)
            elif self._cancelled:
                self._fail(self._cancelled)
        except IntegrityError:
            self._fail("the whole file's SHA1 does not match; nothing was kept")
            partial = None
        except (OSError, ValueError) as exc:
            self._fail(f"cannot write {self.final_path}: {exc}")
        except Exception as exc:  # a bug must end this download, not the client
            log.exception("download of %s failed", self.name)
            self._fail(f"internal error: {exc!r}")
        finally:
            for link in list(self._links.values()):
                self._close(link)
            self._links.clear()
            if partial is not None:
                try:
                    if self.state == "failed":
                        partial.discard()
                    else:
                        partial.close()
                except OSError as exc:  # the download must still end, or wait never returns
                    log.warning("could not save the progress of %s: %s", self.name, exc)
            try:
                if self.state != "downloading":
                    self.host.ended(self)
            except Exception:  # the download itself is over: waiters must still wake
                log.exception("could not finish the bookkeeping of %s", self.name)
            finally:
                self._done.set()

    def _fail(self, why: str) -> None:
        self.state, self.error = "failed", why
        # info: the user is told by the client's download_failed event, once
        log.info("download of %s failed: %s", self.name, why)

    def _transfer(self, partial: PartialDownload) -> bool:
        """Fetch every missing piece; False if stopped first.

        No tracker call is made on this thread: with every tracker gone a call takes
        8 s to give up, and a transfer loop waiting on it would take no piece from the
        peers that are still there (and then drop them as silent).  Nor does the end
        wait for one: the client sends our shares and progress notes in order with the
        completion, and a refresh of the peers still out is no longer wanted.
        """
        checker = PieceChecker(partial, CHECK_WORKERS)
        try:
            return self._transfer_with(partial, checker)
        finally:
            checker.close()

    def _in_background(self, call: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``call`` on a thread of its own (a daemon: it ends with the call, which
        gives up within the tracker client's deadline, whether or not anyone still
        wants its answer)."""
        future: Future[Any] = Future()
        threading.Thread(target=lambda: future.set_result(self._logged(call, *args)),
                         name=f"tracker-{self.name}", daemon=True).start()
        return future

    def _logged(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)``; a bug in it is logged (nobody reads a future's exception)
        and makes it return None."""
        try:
            return call(*args)
        except Exception:
            log.exception("a tracker call of the download of %s failed", self.name)
            return None

    def _transfer_with(self, partial: PartialDownload, checker: PieceChecker) -> bool:
        picker = Picker(self.count, partial.have.copy(), random.Random())
        source = Source(self.key, self.size, self.pieces, partial.part_path, partial)
        announced_at = 0.0
        announced = partial.have.count()  # pieces the tracker was last told about
        if announced and self.sharing:
            self.host.share_partial(self, source)
            self._shared = True
            announced_at = time.monotonic()
        self._connect_peers(self.info.get("peers", []), picker)
        refreshed_at = time.monotonic()
        refreshing: Future[list[dict[str, Any]] | None] | None = None
        announcing: tuple[int, Future[Any]] | None = None  # (pieces told, the call)
        poller = zmq.Poller()
        poller.register(checker.fileno(), zmq.POLLIN)
        polled: list[zmq.Socket[Any]] = []
        while not picker.done:
            if self._stop.is_set():
                return False
            now = time.monotonic()
            if refreshing is None and (now - refreshed_at > REFRESH_EVERY
                                       or (not self._links and now - refreshed_at > 0.5)):
                refreshing = self._in_background(self._fetch_peers)
            if refreshing is not None and refreshing.done():
                self._connect_peers(refreshing.result() or [], picker)
                refreshing, refreshed_at = None, now
            self._check_timeouts(picker, now)
            self._fill_pipelines(picker)
            self._update_waiting(picker)
            socks = [link.sock for link in self._links.values()]
            if socks != polled:  # links come and go rarely: keep the poller between passes
                for sock in polled:
                    poller.unregister(sock)
                for sock in socks:
                    poller.register(sock, zmq.POLLIN)
                polled = socks
            ready = dict(poller.poll(100))
            if checker.fileno() in ready:
                for checked in checker.done():
                    self._checked(checked, picker, partial, source)
            for link in list(self._links.values()):
                if link.sock in ready:
                    self._drain(link, picker, partial, checker)
            if announcing is not None and announcing[1].done():
                if announcing[1].exception() is None:  # a tracker took it
                    announced = announcing[0]
                announcing = None
            if self._have != announced and now - announced_at > ANNOUNCE_EVERY:
                # Only news: each announcement is an event in every tracker's log.
                if self.sharing and announcing is None:
                    announcing = (self._have, self.host.announce_progress(
                        self, partial.have.to_bytes()))
                partial.save_pending()  # verified pieces survive a crash even if none follow
                announced_at = now
        partial.flush()
        return True

    # --- peers --------------------------------------------------------------------------

    def _connect_peers(self, peers: list[dict[str, Any]], picker: Picker) -> None:
        """Dial the listed peers we have no link to, within MAX_PEER_LINKS (plan_links)."""
        now = time.monotonic()
        candidates: dict[str, dict[str, Any]] = {}
        for peer in peers:
            addr = peer.get("addr")
            if (isinstance(addr, str) and addr not in self._links and addr not in self._banned
                    and self._retry_at.get(addr, 0.0) <= now):
                candidates.setdefault(addr, peer)
        idle = sorted((link for link in self._links.values() if link.ready
                       and not link.in_flight and not picker.wanted_from(link.addr)),
                      key=lambda link: link.last_piece_at)  # those that never gave first
        dial, close = plan_links([(addr, self._offers(peer, picker))
                                  for addr, peer in candidates.items()],
                                 len(self._links), [link.addr for link in idle],
                                 MAX_PEER_LINKS)
        for addr in close:
            self._drop(self._links[addr], picker, "it has nothing we lack; its link goes "
                       "to a peer that has", RETRY_PEER_AFTER)
        for addr in dial:
            self._dial(addr, candidates[addr], now)

    def _offers(self, peer: dict[str, Any], picker: Picker) -> bool:
        """Whether a listed peer has a piece we lack, as far as the tracker knows."""
        have = peer.get("have")
        if have is None:
            return True  # a seeder
        try:
            return isinstance(have, bytes) and picker.lacks_any(
                Bitfield.from_bytes(self.count, have))
        except ValueError:
            return False  # the peer's hello will tell

    def _dial(self, addr: str, peer: dict[str, Any], now: float) -> None:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)  # the credit limits what is in flight
        sock.setsockopt(zmq.MAXMSGSIZE, PIECE_SIZE + 64 * 1024)
        sock.connect(f"tcp://{addr}")
        # Each peer gets the ticket the tracker issued for it alone: a ticket that
        # worked at any peer would let the one we send it to pose as us elsewhere.
        ticket = peer.get("ticket")
        sock.send(msg.codec.encode(msg.Hello(self.group, self.name, self.sha1,
                                             self.host.user or "",
                                             ticket if isinstance(ticket, str) else ""
                                             ).to_wire()))
        self._links[addr] = PeerLink(addr, sock, now, last_heard=now)

    def _drop(self, link: PeerLink, picker: Picker, why: str, retry_after: float) -> None:
        log.info("dropping peer %s for %s: %s", link.addr, self.name, why)
        picker.remove_peer(link.addr)
        self._close(link)
        self._links.pop(link.addr, None)
        self._retry_at[link.addr] = time.monotonic() + retry_after

    def _cancel(self, link: PeerLink | None, index: int) -> None:
        """Withdraw our request for piece ``index`` from ``link``, if one is out."""
        if link is None or link.in_flight.pop(index, None) is None:
            return
        cancel = msg.Cancel(self.group, self.name, index)
        with contextlib.suppress(zmq.Again):  # the peer drops it from its queue, unsent
            link.sock.send(msg.codec.encode(cancel.to_wire()), zmq.NOBLOCK)

    def _close(self, link: PeerLink) -> None:
        """Close a link, withdrawing first every request still out to the peer."""
        cancelled = bool(link.in_flight)
        for index in list(link.in_flight):
            self._cancel(link, index)
        link.sock.close(CANCEL_LINGER_MS if cancelled else 0)

    def _fetch_peers(self) -> list[dict[str, Any]] | None:
        """The file's peers as a tracker lists them now, each with its fresh ticket
        (on a thread of its own); None if no tracker could say."""
        try:
            info = self.host.tracker_call("file_info", {"group": self.group, "name": self.name})
        except ProtocolError as exc:
            log.info("cannot refresh peers of %s: %s", self.name, exc)
            return None
        if info.get("sha1") != self.sha1:
            return None  # the name now means another file; keep what we have
        peers: list[dict[str, Any]] = info.get("peers", [])
        return peers

    def _check_timeouts(self, picker: Picker, now: float) -> None:
        for link in list(self._links.values()):
            if not link.ready and now - link.opened_at > HELLO_TIMEOUT:
                self._drop(link, picker, "no answer to hello", RETRY_PEER_AFTER)
            elif link.in_flight and now - link.last_heard > SILENCE_TIMEOUT:
                self._drop(link, picker, "stopped answering", RETRY_PEER_AFTER)

    def _fill_pipelines(self, picker: Picker) -> None:
        if len(self._checking) >= MAX_CHECKING:
            return  # the checkers are behind: more pieces would only queue in memory
        for link in self._links.values():
            if not link.ready:
                continue
            while len(link.in_flight) < link.credit():
                index = picker.pick(link.addr)
                if index is None:
                    break
                link.sock.send(msg.codec.encode(msg.Get(self.group, self.name, index).to_wire()))
                link.in_flight[index] = time.monotonic()

    def _update_waiting(self, picker: Picker) -> None:
        # Until the first peers have answered hello (or timed out) nobody has said what
        # they hold: that is connecting, not waiting.  Later redials of a dead peer do
        # not count, so the message does not flicker.
        links = self._links.values()
        if not self._settled:
            if any(not link.ready for link in links):
                self.waiting = ""
                return
            self._settled = True
        missing = picker.unavailable()
        if missing and not self._checking and not any(link.in_flight for link in links):
            self.waiting = (f"waiting for peers: no connected peer has the "
                            f"{len(missing)} missing piece(s)")
            now = time.monotonic()
            refusals = sorted((r.at, r.why) for r in self._refused.values()
                              if now - r.at < REFUSALS_SHOWN_FOR)
            if refusals:  # say why a peer the tracker lists is of no use
                self.waiting += f"; refused by {len(refusals)} peer(s): {refusals[-1][1]}"
        else:
            self.waiting = ""

    # --- replies ------------------------------------------------------------------------

    def _drain(self, link: PeerLink, picker: Picker, partial: PartialDownload,
               checker: PieceChecker) -> None:
        for _ in range(64):
            try:
                frames = link.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            link.last_heard = time.monotonic()
            try:
                reply = msg.parse_reply(frames)
            except LocalError as exc:
                self._drop(link, picker, f"malformed reply: {exc}", RETRY_PEER_AFTER)
                return
            if not self._handle(link, reply, picker, partial, checker):
                return

    def _handle(self, link: PeerLink, reply: msg.Reply, picker: Picker,
                partial: PartialDownload, checker: PieceChecker) -> bool:
        """Act on one reply; False if the link was dropped."""
        if isinstance(reply, msg.Have):
            if reply.bits is not None:
                try:
                    bits = Bitfield.from_bytes(self.count, reply.bits)
                except ValueError:
                    self._drop(link, picker, "malformed bitfield", RETRY_PEER_AFTER)
                    return False
                picker.add_peer(link.addr, bits)
                link.ready = True
                self._refused.pop(link.addr, None)
            for index in reply.indices:
                if index < self.count:
                    picker.peer_has(link.addr, index)
            return True
        if isinstance(reply, msg.Refused):
            if reply.index is None or reply.code == "not_shared":
                # Refused outright, or the peer stopped sharing the file: asking it again
                # at once would only spin; try it later if the tracker still lists it.
                earlier = self._refused.get(link.addr)
                refusal = Refusal(time.monotonic(), reply.error[:100],
                                  (earlier.not_member if earlier else 0)
                                  + (1 if reply.code == "not_member" else 0))
                self._refused[link.addr] = refusal
                self._drop(link, picker, f"refused: {reply.error}",
                           self._retry_after(reply.code, refusal))
                return False
            if link.in_flight.pop(reply.index, None) is None:
                return True  # not a piece we asked it for (a bad index would break the picker)
            picker.failed(link.addr, reply.index)
            picker.peer_lacks(link.addr, reply.index)  # else we would ask it again at once
            return True
        self._piece(link, reply, picker, partial, checker)
        return True

    @staticmethod
    def _retry_after(code: str, refusal: Refusal) -> float:
        """How long to leave a peer alone that refused us outright with ``code``."""
        if code in ("not_shared", "no_tracker", "busy"):
            return RETRY_PEER_AFTER
        if code == "not_member":
            return not_member_retry(refusal.not_member)
        return REFUSED_RETRY_AFTER

    def _piece(self, link: PeerLink, piece: msg.Piece, picker: Picker,
               partial: PartialDownload, checker: PieceChecker) -> None:
        """A piece arrived: hand it to the checkers (one copy of each piece at a time)."""
        index = piece.index
        sent = link.in_flight.pop(index, None)
        if sent is None or not 0 <= index < self.count or index in partial.have:
            self._unneeded += 1  # a duplicate from the endgame, or a piece we never asked for
            return
        if index in self._checking:  # another peer's copy is being checked
            self._unneeded += 1
            picker.withdrawn(link.addr, index)
            return
        self._arrivals += 1
        now = time.monotonic()
        size = len(piece.data)
        since = max(now - (link.last_piece_at or sent), 1e-4)
        link.rate = size / since if link.rate == 0 else 0.8 * link.rate + 0.2 * size / since
        link.last_piece_at = now
        picker.arrived(link.addr, index)
        self._checking[index] = link.addr
        checker.submit(index, piece.data)

    def _checked(self, checked: Checked, picker: Picker, partial: PartialDownload,
                 source: Source) -> None:
        """A checker is done with a piece: count it, or blame the peer that sent it."""
        index = checked.index
        addr = self._checking.pop(index)
        if checked.error is not None:
            raise checked.error
        if checked.view is None:
            sole = not any(o.addr != addr and o.ready for o in self._links.values())
            self._trust.bad(addr, sole_source=sole)
            picker.failed(addr, index)
            log.warning("piece %d of %s from %s failed its SHA1", index, self.name, addr)
            link = self._links.get(addr)
            if self._trust.banned(addr):
                self._banned.add(addr)
                if link is not None:
                    self._drop(link, picker, "sent bad pieces", 3600)
            return
        partial.commit(index, checked.view)
        # Counted before anyone hears of it, so what a peer is told never runs ahead of
        # what show_downloads says.
        self._have += 1
        self._trust.good(addr)
        now = time.monotonic()
        self.sources[addr] = self.sources.get(addr, 0) + 1
        self._rate_window.append((now, len(checked.view)))
        while now - self._rate_window[0][0] > 3.0:
            self._rate_window.popleft()
        for other in picker.received(addr, index):
            self._cancel(self._links.get(other), index)
        if not self.sharing:
            return
        if not self._shared:
            self._shared = True
            self.host.share_partial(self, source)
        self.host.announce_piece(self.key, index)

    def _rate(self) -> float:
        now = time.monotonic()
        window = [(t, n) for t, n in list(self._rate_window) if now - t < 3.0]
        if not window or self.state != "downloading" or not self.running:
            return 0.0
        return sum(n for _, n in window) / max(now - window[0][0], 0.5)
