"""Replication between trackers: events and heartbeats on PUB/SUB, catch-up and acks
over ROUTER/DEALER (the Clone pattern of the ZeroMQ guide, with acks added).

Sockets of tracker N (``PORT`` is its client port):

- ``PORT+1`` PUB: every event made here, once it is durable, and a heartbeat every
  ``HEARTBEAT_INTERVAL`` (sender, version vector, sessions heard from lately).
- ``PORT+2`` ROUTER: catch-up requests (queued, and answered with batches a few per
  loop turn after the clients: ``trackers.catch_ups``) and acks from peers.
- one SUB connected to every other tracker's PUB; one DEALER per peer, connected to
  that peer's ROUTER, for our catch-up requests (and their answers) and our acks.

Every one of these links is CURVE-encrypted and authenticated with the cluster key
(``trackers.cluster_key``): PUB and ROUTER are CURVE servers that admit, through the
context's ZAP handler, only clients holding the cluster keypair; SUB and DEALERs are its
clients.  A peer whose handshake keeps failing is named in the log once.

An event is appended only when it extends its origin's contiguous run; anything else
is dropped, and the hole is filled by asking a peer that holds more (noticed from a
gap in the stream or from a heartbeat vector), so nothing relies on PUB/SUB
delivering every message.  The decisions live in ``trackers.quorum``; this class
only moves bytes and calls into the store (the server) for the log.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any, Protocol

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from p2p.bounded_log import BoundedLog
from p2p.config import TrackerAddress
from p2p.errors import LocalError
from p2p.messages.sync import (
    MAX_SIDS,
    Ack,
    Batch,
    CatchUp,
    Event,
    Heartbeat,
    SyncMessage,
    Vector,
    Verdict,
    decode_sync,
    encode_sync,
)
from p2p.messages.tracker import MAX_REQUEST
from trackers.catch_ups import CatchUpQueue, Offer
from trackers.cluster_key import ClusterKeys
from trackers.quorum import (
    HEARTBEAT_INTERVAL,
    STARTUP_GRACE,
    View,
    Waits,
    contiguous,
    lacking,
)
from trackers.state import Outcome

log = logging.getLogger(__name__)

PUB_OFFSET, PEER_OFFSET = 1, 2
# An event carries what its client request carried (a share: the piece hashes).
MAX_MESSAGE = MAX_REQUEST
BATCH_EVENTS = 500  # events per catch-up answer ...
BATCH_BYTES = 2 * 1024 * 1024  # ... and roughly this many bytes at most
_DRAIN = 1000  # messages taken from one socket per loop turn
# Catch-up requests answered per loop turn: each costs a sqlite read and an encoding of
# up to BATCH_EVENTS events, and a client's request waits behind them.  A restarted
# tracker has one request out at a time, so this does not slow its catch-up.
CATCH_UPS_PER_TURN = 2
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_MONITORED = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
              | _HANDSHAKE_FAILED)
# A peer with another cluster key makes our CURVE client fail every handshake without a
# reason (it cannot decrypt our HELLO and hangs up): one such failure may also be a peer
# dying mid-handshake, three in a row (0.1 s apart: zmq's reconnect interval) is the key.
KEY_MISMATCH_AFTER = 3
# ... each within this of its connection: a hung (SIGSTOPped) peer accepts the connection
# and fails the handshake too, but only at zmq's handshake timeout (30 s).
QUICK_FAILURE = 5.0
# A handshake that fails on a protocol error (a stranger on a dead tracker's port, not
# speaking CURVE) makes zmq give up that endpoint for good; we dial it again this late.
REDIAL_AFTER = 1.0


class Store(Protocol):
    """What replication needs from the tracker that owns the log and the state."""

    def vector(self) -> Vector:
        """origin -> highest contiguous seq held."""

    def since(self, vector: Vector, limit: int) -> list[Event]:
        """Events beyond ``vector``, ascending per origin."""

    def accept(self, events: list[Event]) -> None:
        """Append events that extend the log contiguously, durably, then apply them."""

    def verdict(self, event: Event) -> Outcome | None:
        """How the client request of ``event`` turned out here."""

    def sessions_heard(self, sids: Iterable[str]) -> None:
        """Sessions another tracker heard from lately."""


def _reported_endpoints(peer: TrackerAddress, offset: int) -> set[str]:
    """The endpoint of ``peer`` as we connect to it, and as zmq's monitor events name it
    (with the host resolved to each of its addresses)."""
    port = peer.port + offset
    forms = {peer.endpoint(offset)}
    with contextlib.suppress(OSError):  # unresolvable now: zmq keeps trying, we match less
        for *_, sockaddr in socket.getaddrinfo(peer.host, port, proto=socket.IPPROTO_TCP):
            host = str(sockaddr[0])
            forms.add(f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}")
    return forms


def _socket(context: zmq.Context[Any], kind: int) -> zmq.Socket[Any]:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
    # ZMTP heartbeats drop a connection whose other end went silent (a cut link, a hung
    # peer), so it is re-established promptly once the peer can be reached again.
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
    return sock


class Replication:
    """The sockets of one tracker towards the others, driven by the server's loop."""

    def __init__(
        self,
        context: zmq.Context[Any],
        trackers: list[TrackerAddress],
        me: TrackerAddress,
        store: Store,
        view: View,
        waits: Waits,
        keys: ClusterKeys,
    ) -> None:
        self.me = me.number
        self.keys = keys
        self._addresses = {t.number: t for t in trackers}
        self.store = store
        self.view = view
        self.waits = waits
        self.pub = _socket(context, zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.router = _socket(context, zmq.ROUTER)
        self.sub = _socket(context, zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 100_000)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.dealers: dict[int, zmq.Socket[Any]] = {}
        self._by_socket: dict[zmq.Socket[Any], int] = {}
        # A peer whose connection to our DEALER drops (SIGKILL, crash) is suspect at
        # once; a hung one is caught by the quorum timeouts instead.  The monitors also
        # tell failed handshakes (another cluster key) on the DEALERs and the SUB.
        self._monitors: dict[zmq.Socket[Any], zmq.Socket[Any]] = {}
        self._monitored: list[zmq.Socket[Any]] = []
        # A peer's PUB endpoint, as given and as zmq reports it (resolved) -> its number:
        # how the SUB's monitor events (one socket, every peer) are told apart.
        self._endpoints: dict[str, int] = {}
        self._linked: set[int] = set()  # peers our DEALER completed a handshake with
        # handshakes failed in a row; from KEY_MISMATCH_AFTER on, the peer is named in the
        # log as having another key (until one succeeds)
        self._failed: dict[int, int] = defaultdict(int)
        self._dialed: dict[tuple[zmq.Socket[Any], int], float] = {}  # connected at
        self._redial: dict[tuple[zmq.Socket[Any], str], float] = {}
        self._auth: ThreadAuthenticator | None = None
        try:
            # The ZAP handler first: a CURVE server without one admits any client key.
            self._auth = keys.authenticator(context)
            for server in (self.pub, self.router):
                keys.serve(server)
            self.pub.bind(me.endpoint(PUB_OFFSET))
            self.router.bind(me.endpoint(PEER_OFFSET))
            keys.connect_as_client(self.sub)
            self._monitor(self.sub)
            for peer in trackers:
                if peer.number == self.me:
                    continue
                for endpoint in _reported_endpoints(peer, PUB_OFFSET):
                    self._endpoints[endpoint] = peer.number
                self.sub.connect(peer.endpoint(PUB_OFFSET))
                dealer = _socket(context, zmq.DEALER)
                dealer.setsockopt(zmq.SNDHWM, 1000)
                keys.connect_as_client(dealer)
                self.dealers[peer.number] = dealer
                self._by_socket[dealer] = peer.number
                self._monitor(dealer)
                dealer.connect(peer.endpoint(PEER_OFFSET))
        except (zmq.ZMQError, RuntimeError):  # RuntimeError: the ZAP thread did not start
            self.close()
            raise
        self._next_heartbeat = 0.0
        self._awaiting: set[int] = set()  # peers whose startup catch-up is not complete
        self._ready_at = 0.0
        self._live: dict[int, bool] = {}
        self._catch_ups = CatchUpQueue()
        # Lines about bad messages (from a buggy peer; strangers fail the handshake, and
        # a peer with another key keeps failing it): a flood must not flood the log.
        self._bad = BoundedLog(log)
        self.stats: dict[str, int] = defaultdict(int)

    def sockets(self) -> list[zmq.Socket[Any]]:
        return [self.sub, self.router, *self.dealers.values(), *self._monitors]

    def _monitor(self, sock: zmq.Socket[Any]) -> None:
        self._monitors[sock.get_monitor_socket(_MONITORED)] = sock
        self._monitored.append(sock)

    def close(self) -> None:
        for sock in self._monitored:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
        for sock in [self.pub, self.router, self.sub, *self.dealers.values(), *self._monitors]:
            sock.close(0)
        if self._auth is not None:
            self._auth.stop()  # after the sockets: none of them waits on it any more
            self._auth = None

    # --- out ----------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Ask every peer at once for what we lack (queued until connected), so a
        restarted tracker catches up by itself before it serves."""
        self._awaiting = set(self.dealers)
        self._ready_at = now + STARTUP_GRACE
        for peer in self.dealers:
            self._ask(peer, now)

    def ready(self, now: float) -> bool:
        """Caught up with every peer since start, or the peers took too long to answer
        (a peer still sending batches has not: each one gives it another grace)."""
        return not self._awaiting or now >= self._ready_at

    def publish(self, event: Event) -> None:
        """Send an event made here (already durable) to every subscriber."""
        self.pub.send(encode_sync(event))
        self.stats["published"] += 1

    def tick(self, now: float, sids: Iterable[str]) -> bool:
        """Heartbeat when due and retry catch-up; True when a heartbeat went out."""
        self._ask_lacking(now)
        self._note_liveness(now)
        self._redial_due(now)
        self._bad.flush()
        if now < self._next_heartbeat:
            return False
        self._next_heartbeat = now + HEARTBEAT_INTERVAL
        beat = Heartbeat(self.me, self.store.vector(), tuple(islice(sids, MAX_SIDS)))
        self.pub.send(encode_sync(beat))
        return True

    def next_heartbeat(self) -> float:
        return self._next_heartbeat

    def catch_ups_waiting(self) -> bool:
        """Whether catch-up requests wait for ``answer_catch_ups`` (the loop should not
        sleep)."""
        return bool(self._catch_ups)

    def answer_catch_ups(self) -> None:
        """Answer the oldest few catch-up requests waiting; the owner calls this every
        loop turn, after serving its clients."""
        for who, request in self._catch_ups.take(CATCH_UPS_PER_TURN):
            self.router.send_multipart([who, encode_sync(self._batch(request))])

    def _to_peer(self, peer: int, message: SyncMessage) -> bool:
        dealer = self.dealers.get(peer)
        if dealer is None:
            return False
        try:
            dealer.send(encode_sync(message), zmq.NOBLOCK)
        except zmq.Again:  # that peer's queue is full: it is hung; heartbeats cover us
            self.stats["dropped_to_peer"] += 1
            return False
        return True

    def _ask(self, peer: int, now: float) -> None:
        if self._to_peer(peer, CatchUp(self.me, self.store.vector())):
            self.view.asked(peer, now)
            self.stats["catch_up_requests"] += 1

    def _note_liveness(self, now: float) -> None:
        for peer in self.view.peers:
            live = self.view.is_live(peer, now) and self.view.peers[peer].contacted
            if self._live.get(peer, False) != live:
                self._live[peer] = live
                log.info("tracker %d is %s", peer, "live" if live else "not answering")

    def _ask_lacking(self, now: float) -> None:
        mine = self.store.vector()
        for peer in self.view.catch_up_from(mine, now):
            log.info("tracker %d holds events we lack %s: catching up",
                     peer, lacking(mine, self.view.peers[peer].holds))
            self._ask(peer, now)

    # --- in -----------------------------------------------------------------------------

    def on_ready(self, ready: dict[Any, int], now: float) -> None:
        """Drain whichever replication sockets the poller found readable."""
        if self.sub in ready:
            events: list[Event] = []
            for frames in self._recv(self.sub):
                message = self._decode(frames[-1], "bad-subscription", "the subscription")
                if isinstance(message, Event):
                    events.append(message)
                elif isinstance(message, Heartbeat):
                    self._on_heartbeat(message, now)
                elif message is not None:
                    self._warn("sub-kind", "unexpected messages", "the subscription",
                               f"unexpected {type(message).__name__} on PUB")
            if events:
                self._on_events(events, now, source=None)
        if self.router in ready:
            for frames in self._recv(self.router):
                self._on_router(frames, now)
        for dealer, peer in self._by_socket.items():
            if dealer in ready:
                for frames in self._recv(dealer):
                    self._on_dealer(peer, frames, now)
        for monitor, sock in self._monitors.items():  # after the data, which may be newer
            if monitor in ready:
                for frames in self._recv(monitor):
                    self._on_monitor(sock, parse_monitor_message(frames), now)

    def _on_monitor(self, sock: zmq.Socket[Any], event: Mapping[str, Any], now: float) -> None:
        if sock is self.sub:
            peer = self._endpoints.get(event["endpoint"].decode(errors="replace"))
            if peer is None:
                return
            endpoint = self._addresses[peer].endpoint(PUB_OFFSET)
        else:
            peer = self._by_socket[sock]
            endpoint = self._addresses[peer].endpoint(PEER_OFFSET)
        kind = event["event"]
        started = self._dialed.pop((sock, peer), now)
        if kind == zmq.EVENT_CONNECTED:
            self._dialed[(sock, peer)] = now
        elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if sock is self.dealers.get(peer):
                self._linked.add(peer)
            if self._failed.pop(peer, 0) >= KEY_MISMATCH_AFTER:  # it was named in the log
                log.info("%s shares our cluster key now", self._addresses[peer])
        elif kind == zmq.EVENT_DISCONNECTED:
            # Only a link that was up: a failed handshake disconnects too, every 0.1 s.
            if sock is self.dealers.get(peer) and peer in self._linked:
                self._linked.discard(peer)
                log.info("lost the connection to tracker %d", peer)
                self.view.suspect(peer)
        elif kind & _HANDSHAKE_FAILED:
            self.stats["handshakes_failed"] += 1
            named = self._failed[peer] >= KEY_MISMATCH_AFTER  # in the log already
            if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                if now - started < QUICK_FAILURE:
                    self._failed[peer] += 1
            else:  # zmq gave this endpoint up: dial it again later
                self._failed[peer] = max(self._failed[peer], KEY_MISMATCH_AFTER)
                self._redial.setdefault((sock, endpoint), now + REDIAL_AFTER)
            if self._failed[peer] >= KEY_MISMATCH_AFTER and not named:
                self._bad.warning("trackers without our cluster key", str(peer),
                                  "%s does not share our cluster key (%s): replication "
                                  "with it is refused", self._addresses[peer],
                                  self.keys.source)

    def _redial_due(self, now: float) -> None:
        for (sock, endpoint), due in list(self._redial.items()):
            if now >= due:
                del self._redial[(sock, endpoint)]
                with contextlib.suppress(zmq.ZMQError):
                    sock.disconnect(endpoint)
                sock.connect(endpoint)

    @staticmethod
    def _recv(sock: zmq.Socket[Any]) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        for _ in range(_DRAIN):
            try:
                out.append(sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        return out

    def _decode(self, frame: bytes, key: str, where: str) -> SyncMessage | None:
        try:
            return decode_sync(frame, max_size=MAX_MESSAGE)
        except LocalError as exc:
            self._warn(key, "malformed frames", where,
                       f"dropped a malformed frame from {where}: {exc}")
            return None

    def _warn(self, key: str, kind: str, where: str, message: str) -> None:
        """Count a kind of trouble in status under ``key``, and log it within bounds
        (a flood of garbage must not flood the log)."""
        self.stats[key] += 1
        self._bad.warning(kind, where, "%s", message)

    def _known(self, number: int, what: str) -> bool:
        if number == self.me or number not in self.view.peers:
            kind = what.split(" ", 1)[-1].replace(" ", "-")
            self._warn(f"unknown-{kind}", "messages naming trackers not among our peers", "",
                       f"dropped {what} naming tracker {number}, which is not one of our peers")
            return False
        return True

    def _on_heartbeat(self, beat: Heartbeat, now: float) -> None:
        if not self._known(beat.sender, "a heartbeat"):
            return
        self.view.heard(beat.sender, now)
        self.view.holds_vector(beat.sender, beat.vector)
        self.store.sessions_heard(beat.sids)
        if lacking(self.store.vector(), beat.vector) and not self.view.asking(beat.sender, now):
            self._ask(beat.sender, now)

    def _on_router(self, frames: list[bytes], now: float) -> None:
        if len(frames) != 2:
            self._warn("router-envelope", "peer messages without an envelope", "the peer port",
                       "dropped a peer message without its envelope")
            return
        message = self._decode(frames[1], "bad-peer-port", "the peer port")
        if isinstance(message, CatchUp):
            if self._known(message.sender, "a catch-up request"):
                self.view.heard(message.sender, now)
                self.view.holds_vector(message.sender, message.vector)
                self._queue_catch_up(frames[0], message)
        elif isinstance(message, Ack):
            if self._known(message.sender, "an ack"):
                self._on_ack(message, now)
        elif message is not None:
            self._warn("router-kind", "unexpected messages", "the peer port",
                       f"unexpected {type(message).__name__} on the peer port")

    def _queue_catch_up(self, who: bytes, request: CatchUp) -> None:
        self.stats["catch_ups_received"] += 1
        offer = self._catch_ups.offer(who, request)
        if offer is Offer.COALESCED:
            self.stats["catch_ups_coalesced"] += 1
        elif offer is Offer.DROPPED:  # its asker asks again after CATCH_UP_TIMEOUT
            self._warn("catch_ups_dropped", "catch-up requests dropped", "the peer port",
                       f"dropped a catch-up request: {len(self._catch_ups)} connections "
                       "have one waiting already")

    def _batch(self, request: CatchUp) -> Batch:
        events = self.store.since(request.vector, BATCH_EVENTS)
        more = len(events) >= BATCH_EVENTS
        size = 0
        for i, event in enumerate(events):
            size += len(encode_sync(event))
            if size > BATCH_BYTES and i > 0:
                events, more = events[:i], True
                break
        self.stats["batches_sent"] += 1
        return Batch(self.me, tuple(events), more)

    def _on_ack(self, ack: Ack, now: float) -> None:
        self.view.heard(ack.sender, now)
        self.view.acked(ack.sender, ack.origin, ack.upto)
        for verdict in ack.verdicts:
            self.waits.report(ack.origin, verdict.seq,
                              Outcome(verdict.ok, verdict.code, verdict.error))

    def _on_dealer(self, peer: int, frames: list[bytes], now: float) -> None:
        message = self._decode(frames[-1], f"bad-tracker-{peer}", f"tracker {peer}")
        if not isinstance(message, Batch):
            if message is not None:
                self._warn("dealer-kind", "unexpected messages", f"tracker {peer}",
                           f"unexpected {type(message).__name__} from a peer")
            return
        if message.sender != peer:
            self._warn("batch-sender", "batches under another number", f"tracker {peer}",
                       f"tracker {peer} answered as {message.sender}")
            return
        self.view.heard(peer, now)
        self.view.asked(peer, None)
        if not message.more:
            self._awaiting.discard(peer)
        self.stats["batches_received"] += 1
        self._on_events(list(message.events), now, source=peer)
        if message.more or lacking(self.store.vector(), self.view.peers[peer].holds):
            self._ask(peer, now)
        if message.more and peer in self._awaiting:
            # Its catch-up is under way, only slow (a long log, a loaded machine): serving
            # now would answer from a state that lacks what it is still sending.  The grace
            # counts from now, after this batch was applied and the next one asked for.
            self._ready_at = max(self._ready_at, time.monotonic() + STARTUP_GRACE)

    def _on_events(self, events: list[Event], now: float, source: int | None) -> None:
        """Append what extends the log, ack it to its origins, and ask for what is missing."""
        known = [e for e in events if e.origin == self.me or self._known(e.origin, "an event")]
        if source is None:  # from PUB: each tracker publishes only its own events
            for origin in {e.origin for e in known}:
                self.view.heard(origin, now)
        fresh, gap = contiguous(self.store.vector(), known)
        if fresh:
            self.store.accept(fresh)
            self.stats["events_received"] += len(fresh)
            self._ack(fresh)
            if source is not None:
                self.view.holds_vector(source, self.store.vector())
        if gap:
            self.stats["gaps"] += 1
            peers = {source} if source is not None else {e.origin for e in known}
            for peer in peers:
                if peer != self.me and not self.view.asking(peer, now):
                    self._ask(peer, now)

    def _ack(self, events: list[Event]) -> None:
        by_origin: dict[int, list[Verdict]] = defaultdict(list)
        for event in events:
            verdicts = by_origin[event.origin]
            if event.cid:
                outcome = self.store.verdict(event)
                if outcome is not None:
                    verdicts.append(Verdict(event.seq, outcome.ok, outcome.code, outcome.error))
        vector = self.store.vector()
        for origin, verdicts in by_origin.items():
            if origin != self.me:
                self._to_peer(origin, Ack(self.me, origin, vector[origin], tuple(verdicts)))
