"""The tracker's thin loop: sockets and timers around the pure ledger, commands and quorum.

A write is answered only once its event is in the local log and every other live
tracker has acked holding it (``trackers.quorum``); the client's envelope waits in
``Waits`` meanwhile, and the loop carries on serving others.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from p2p import codec
from p2p.bounded_log import BoundedLog
from p2p.config import TrackerAddress
from p2p.errors import LocalError
from p2p.messages.sync import Event, Vector
from p2p.messages.tracker import MAX_REQUEST, Reply, Request
from trackers import commands
from trackers import state as st
from trackers.clock import HybridClock
from trackers.cluster_key import ClusterKeys
from trackers.ledger import Ledger
from trackers.log import EventLog
from trackers.login_limits import Guesses, HashSlots
from trackers.passwords import SALT_BYTES, hash_password
from trackers.quorum import View, Waits, combine
from trackers.replication import Replication

log = logging.getLogger(__name__)

MAX_MESSAGE = MAX_REQUEST
SESSION_TIMEOUT = 10.0  # a client not heard from for this long is logged out
_TICK = 0.1
_MIN_TICK = 0.002
_MAX_DEFERRED = 10_000
# ... and bytes of them: requests may be 16 MB each, and 100 of 8 MB that came while
# a tracker was catching up took it from 29 MB to 312 MB.
_MAX_DEFERRED_BYTES = 64 * 1024 * 1024
# A reply goes back with the frames before the request (the envelope).  Real ones are
# routing ids (at most 255 bytes in ZeroMQ) and empty delimiters, one or two per hop;
# anything else is not answered, or a stranger could have us echo 16 MB frames by the
# hundred and, never reading them, make the tracker hold every copy.
_MAX_ENVELOPE_FRAMES = 16
_MAX_ENVELOPE_FRAME = 255
# zmq holds up to 1000 replies (SNDHWM) for a connection that does not read them, and
# a reply can be megabytes (file_info of a big file): a user who asked file_info of a
# file of 400,000 pieces 200 times and read nothing took a tracker from 100 MB to
# 1.6 GB.  So a reply this large is counted until zmq has written it out, and sent
# only while its connection has no other one waiting (a client has one request out at
# a time) and those waiting stay under MAX_UNSENT_BYTES in all; the others are dropped
# and their clients retry.  Smaller replies, the usual ones, cost nothing more.
_COUNTED_REPLY = 4 * 1024
MAX_UNSENT_BYTES = 64 * 1024 * 1024

Envelope = list[bytes]
_HASHED_OPS = ("create_user", "login")  # these need scrypt (~70 ms): done off the loop
_UNKNOWN_SOURCE = "?"  # a connection without an IP address (ipc, inproc)
# Wrong-password refusals remembered by (cid, rid), for the client's retries of them
# (8 s of them at most); the oldest are forgotten first.
_REFUSED_LOGINS = 1024


class _NeedsHash(Exception):
    """Raised by the probe below: the plan got as far as hashing this password."""

    def __init__(self, password: str, salt: bytes) -> None:
        super().__init__("password hash needed")
        self.password, self.salt = password, salt


def _needs_hash(password: str, salt: bytes) -> bytes:
    raise _NeedsHash(password, salt)


@dataclass
class _Hashing:
    """A create_user or login whose password hash is being computed in a worker thread."""

    req: Request
    envelope: Envelope  # the latest attempt's: a retry that comes meanwhile replaces it
    source: str  # the address that holds the slot in HashSlots
    salt: bytes  # for a new record
    password: str
    hash_salt: bytes  # what the hash is computed with (the record's salt for a login)
    future: Future[bytes]

    def context(self) -> commands.Context:
        computed = self.future.result()

        def password_hash(password: str, salt: bytes) -> bytes:
            if (password, salt) == (self.password, self.hash_salt):
                return computed
            return hash_password(password, salt)  # the record changed meanwhile: rare

        return commands.Context(salt=self.salt, password_hash=password_hash)


def _source(frame: zmq.Frame) -> str:
    """The IP address a client message came from (what hashing slots and guesses are
    counted by)."""
    try:
        return str(frame.get("Peer-Address"))
    except zmq.ZMQError:  # not over TCP
        return _UNKNOWN_SOURCE


class TrackerServer:
    """One tracker: answers clients on its port, keeps the durable log, replicates it."""

    def __init__(
        self,
        trackers: list[TrackerAddress],
        number: int,
        data_dir: Path,
        *,
        session_timeout: float = SESSION_TIMEOUT,
        context: zmq.Context[Any] | None = None,
        cluster_keys: ClusterKeys | None = None,
    ) -> None:
        """``cluster_keys``: what authenticates the links to the other trackers (a random
        key, replicating with no one, if not given)."""
        self.me = trackers[number - 1]
        self.trackers = trackers
        self.session_timeout = session_timeout
        self.log = EventLog(data_dir / "events.sqlite3")
        events = self.log.load()
        self.ledger = Ledger(events)
        self.clock = HybridClock()
        self.have: Vector = self.log.vector()
        self.seq = self.have.get(self.me.number, 0)
        # cid -> (rid, origin, seq): which event carries each client's latest request
        self.requests: dict[str, tuple[int, int, int]] = {}
        for event in events:
            self.clock.observe(event.ts)
            self._index(event)
        now = time.monotonic()
        # Clients of a restarted tracker get a full timeout to show they are alive.
        self.last_seen: dict[str, float] = {sid: now for sid in self.ledger.state.sessions}
        self._heard_sids: set[str] = set()
        self._batching = False
        self._unflushed: list[Event] = []  # made here, applied, not yet durable
        self._held: list[tuple[Envelope, Reply]] = []  # replies waiting for that commit
        # requests that came before we caught up, with their source address
        self._deferred: list[tuple[list[bytes], str]] = []
        self._deferred_bytes = 0
        # scrypt releases the GIL: hashing in threads keeps the loop (acks, heartbeats)
        # going, so a burst of logins does not make this tracker look dead to the others.
        self._hasher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="scrypt")
        self._hashing: list[_Hashing] = []
        self._slots = HashSlots()
        self._guesses = Guesses()
        # (cid, rid) -> the bad_credentials reply of a login hashed here: a retry whose
        # first attempt was answered on the socket the client gave up on gets that reply
        # again, neither hashed nor counted as one more wrong password.
        self._refused_logins: OrderedDict[tuple[str, int], Reply] = OrderedDict()
        self.view = View(number, [t.number for t in trackers], now)
        self.waits = Waits(self.view)
        self.context = context or zmq.Context.instance()
        self.frontend = self.context.socket(zmq.ROUTER)
        self.frontend.setsockopt(zmq.LINGER, 0)
        self.frontend.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        # connection -> (tracker, size) of its large reply zmq has not written out yet
        self._unsent: dict[bytes, tuple[zmq.MessageTracker, int]] = {}
        self._dropping = False  # told the log that large replies are being dropped
        # Lines about what strangers send: a flood of garbage must not flood the log.
        self._bad = BoundedLog(log)
        self.dropped_replies = 0
        try:
            self.frontend.bind(f"tcp://{self.me.host}:{self.me.port}")
            self.replication = Replication(self.context, trackers, self.me, self,
                                           self.view, self.waits,
                                           cluster_keys or ClusterKeys.random())
        except (zmq.ZMQError, RuntimeError):
            self.frontend.close(0)
            self.log.close()
            raise
        self._next_expiry = now + 1.0
        self._timers: list[Callable[[float], None]] = [self._expire_sessions]
        log.info("%s serving, %d events in log, state %s", self.me, len(events), self.digest())

    # --- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set."""
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        for sock in self.replication.sockets():
            poller.register(sock, zmq.POLLIN)
        self.replication.start(time.monotonic())
        try:
            while not stop.is_set():
                ready = dict(poller.poll(self._poll_ms()))
                now = time.monotonic()
                self.replication.on_ready(ready, now)
                if (self.frontend in ready or any(h.future.done() for h in self._hashing)
                        or (self._deferred and self.replication.ready(now))):
                    self._serve_clients(now)
                # After the clients, and a few at a time: a flood of catch-up requests
                # (from any holder of the cluster key) must not keep clients waiting.
                self.replication.answer_catch_ups()
                self.step(time.monotonic())
        finally:
            self.close()

    def step(self, now: float) -> None:
        """Timers: heartbeats, catch-up retries, answering confirmed writes, expiry."""
        if self.replication.tick(now, self._heard_sids):
            self._heard_sids = set()
        self._settle(now)
        for timer in self._timers:
            timer(now)
        self._bad.flush()

    def _poll_ms(self) -> int:
        if self.replication.catch_ups_waiting():
            return 0
        now = time.monotonic()
        wake = min(now + _TICK, self.replication.next_heartbeat())
        if self._deferred:
            wake = min(wake, now + 0.02)
        if self._hashing:
            wake = min(wake, now + 0.005)
        deadline = self.waits.next_deadline(now)
        if deadline is not None:
            wake = min(wake, deadline)
        return int(max(_MIN_TICK, wake - now) * 1000)

    def close(self) -> None:
        self._hasher.shutdown(wait=False, cancel_futures=True)
        self.frontend.close(0)
        self.replication.close()
        self.log.close()

    # --- clients ------------------------------------------------------------------------

    def _serve_clients(self, now: float) -> None:
        """Handle what clients sent, with one durable commit for all the writes among it
        (group commit); no reply leaves before that commit.

        Whether we have caught up is judged at ``now``, when this turn began, just after
        the replication sockets were read: a turn made long by a flood of requests (or a
        loaded machine) must not run out the grace of a catch-up whose next batch is
        waiting unread behind it."""
        self._batching = True
        try:
            if self._deferred and self.replication.ready(now):
                deferred, self._deferred = self._deferred, []
                self._deferred_bytes = 0
                log.info("caught up; serving %d requests that came meanwhile", len(deferred))
                for frames, source in deferred:
                    self._on_client_safely(frames, source, now)
            for job in [h for h in self._hashing if h.future.done()]:
                self._hashing.remove(job)
                self._slots.release(job.source)
                self._hashed(job)
            for _ in range(1000):  # bounded, so a busy socket cannot starve the timers
                try:
                    parts = self.frontend.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._on_client_safely([part.bytes for part in parts], _source(parts[-1]),
                                       now)
        finally:
            self._batching = False
            self._flush()

    def _hashed(self, job: _Hashing) -> None:
        """Answer a request whose hash is done, and count how its login went."""
        try:
            reply = self.handle(job.req, job.envelope, job.context(), source=job.source)
        except Exception:  # a bug, but one its sender may repeat at will: lines bounded
            self._bad.warning("hashed requests that broke their handler", job.source,
                              "dropped a %s from %s that broke its handler", job.req.op,
                              job.source, exc_info=True)
            return
        if job.req.op == "login":
            user = job.req.args["user"]  # a str: the plan checked it before hashing
            if reply is None or reply.ok:
                self._guesses.succeeded(user, job.source)
            elif reply.code == "bad_credentials":
                self._guesses.failed(user, job.source, time.monotonic())
                self._refused_logins[(job.req.cid, job.req.rid)] = reply
                if len(self._refused_logins) > _REFUSED_LOGINS:
                    self._refused_logins.popitem(last=False)
        if reply is not None:
            self._send(job.envelope, reply)

    def _on_client_safely(self, frames: list[bytes], source: str, now: float) -> None:
        try:
            self._on_client(frames, source, now)
        except Exception:  # one bad message must never stop the tracker
            self._bad.warning("messages that broke their handler", source,
                              "dropped a message from %s that broke its handler", source,
                              exc_info=True)

    def _on_client(self, frames: list[bytes], source: str, now: float) -> None:
        if len(frames) < 2:
            self._bad.warning("client messages without envelope", source,
                              "dropped a client message without envelope from %s", source)
            return
        envelope, payload = frames[:-1], frames[-1]
        if (len(envelope) > _MAX_ENVELOPE_FRAMES
                or any(len(frame) > _MAX_ENVELOPE_FRAME for frame in envelope)):
            self._bad.warning("client messages with a bad envelope", source,
                              "dropped a client message from %s whose envelope is not routing "
                              "ids (%d frames, %d bytes)", source, len(envelope),
                              sum(map(len, envelope)))
            return
        try:
            req = Request.from_wire(codec.decode(payload, max_size=MAX_MESSAGE))
        except LocalError as exc:
            self._bad.warning("malformed client requests", source,
                              "bad client request from %s: %s", source, exc)
            self._send(envelope, Reply.failure(-1, exc.code, f"bad request: {exc}"))
            return
        if req.op != "status" and not self.replication.ready(now):
            size = sum(map(len, frames))
            if (len(self._deferred) < _MAX_DEFERRED  # beyond: dropped, the client retries
                    and self._deferred_bytes + size <= _MAX_DEFERRED_BYTES):
                self._deferred.append((frames, source))
                self._deferred_bytes += size
            return
        if self._hash_first(req, envelope, source):
            return
        reply = self.handle(req, envelope, source=source)
        if reply is not None:
            self._send(envelope, reply)

    def _hash_first(self, req: Request, envelope: Envelope, source: str) -> bool:
        """A create_user or login that gets as far as hashing its password has the hash
        computed in a worker thread, and is handled again once it is done; unless its
        source has too many hashes waiting, or the tracker has (``busy``), or it is a
        login that source guessed wrong too often lately (``too_many_attempts``).
        False when the request is not such an op."""
        if req.op not in _HASHED_OPS:
            return False
        salt = os.urandom(SALT_BYTES)
        try:
            reply = self.handle(req, envelope, commands.Context(salt, _needs_hash),
                                source=source)
        except _NeedsHash as need:
            reply = self._start_hashing(req, envelope, source, salt, need)
        if reply is not None:
            self._send(envelope, reply)
        return True

    def _start_hashing(self, req: Request, envelope: Envelope, source: str, salt: bytes,
                       need: _NeedsHash) -> Reply | None:
        """Queue the hash, or the refusal to send instead."""
        for job in self._hashing:
            if (job.req.cid, job.req.rid) == (req.cid, req.rid):
                # The client gave up waiting (0.4 s) and asked again: one hash will do,
                # and the answer goes to the socket it now listens on.
                job.envelope = envelope
                return None
        refused = self._refused_logins.get((req.cid, req.rid))
        if refused is not None:  # a retry of a wrong password: one guess, not two
            return refused
        guesses_pending = False
        if req.op == "login":
            user, now = req.args["user"], time.monotonic()
            wait = self._guesses.wait(user, source, now)
            if wait > 0:
                return Reply.failure(req.rid, "too_many_attempts",
                                     "too many wrong passwords: try again in "
                                     f"{math.ceil(wait)} s")
            # Logins still hashing may all be wrong: sent at once, they must not get
            # more guesses through than one at a time would.
            pending = sum(1 for job in self._hashing if job.req.op == "login"
                          and (job.req.args["user"], job.source) == (user, source))
            guesses_pending = pending >= self._guesses.left(user, source, now)
        if guesses_pending or not self._slots.admit(source):  # admit takes a slot
            return Reply.failure(req.rid, "busy",
                                 "the tracker is busy: try again in a moment")
        future = self._hasher.submit(hash_password, need.password, need.salt)
        self._hashing.append(_Hashing(req, envelope, source, salt, need.password,
                                      need.salt, future))
        return None

    def handle(self, req: Request, envelope: Envelope | None = None,
               ctx: commands.Context | None = None, *,
               source: str = _UNKNOWN_SOURCE) -> Reply | None:
        """Answer one request now (a read, a refusal), or None: a write whose answer
        waits for the other trackers; it goes to ``envelope`` once confirmed.
        ``source``: the address it came from, for the log."""
        if req.op == "status":
            return Reply(req.rid, True, self.status())
        now = time.monotonic()
        state = self.ledger.state
        if req.token is not None:
            sid = commands.session_id(req.token)
            if sid in state.sessions:
                self.last_seen[sid] = now
                self._heard_sids.add(sid)
        done = st.outcome_of(state, req.cid, req.rid)
        if done is not None:  # a retry of a request that already became an event
            return self._retry(req, done, envelope, now)
        try:
            plan = commands.plan(state, req,
                                 ctx or commands.Context(salt=os.urandom(SALT_BYTES)))
        except _NeedsHash:  # the scrypt probe: the caller hashes off the loop
            raise
        except Exception:  # a bug: say so now, or the client waits out every tracker
            # Whoever found it can send it again and again: lines bounded per source.
            self._bad.warning("requests that broke their handler", source,
                              "%s from %s broke its handler", req.op, source, exc_info=True)
            return Reply.failure(req.rid, "internal_error",
                                 f"the tracker could not handle {req.op}: see its log")
        if isinstance(plan, Reply):
            return plan
        log.info("%s from client %s", plan.type, req.cid[:8])
        event = self.append_local(plan.type, plan.data, req.cid, req.rid)
        if plan.type == "login":
            self.last_seen[plan.data["sid"]] = now
        if envelope is None:
            return self._reply(req.rid, st.outcome_of(self.ledger.state, req.cid, req.rid))
        self.waits.start(event.id, req.cid, req.rid, now, envelope)
        return None

    def _retry(self, req: Request, done: st.Outcome, envelope: Envelope | None,
               now: float) -> Reply | None:
        """A retry joins the wait of its first attempt, or waits until the event that
        carries it is held by every live tracker, then gets the first attempt's answer."""
        if envelope is None:
            return self._reply(req.rid, done)
        if self.waits.join(req.cid, req.rid, envelope):
            return None
        rid, origin, seq = self.requests.get(req.cid, (-1, 0, 0))
        if rid != req.rid:
            return self._reply(req.rid, done)
        self.waits.start((origin, seq), req.cid, req.rid, now, envelope)
        return None

    def _settle(self, now: float) -> None:
        for wait in self.waits.settle(now):
            outcome = combine(st.outcome_of(self.ledger.state, wait.cid, wait.rid),
                              wait.reported)
            reply = self._reply(wait.rid, outcome)
            for envelope in wait.waiters:
                self._send(envelope, reply)

    @staticmethod
    def _reply(rid: int, outcome: st.Outcome | None) -> Reply:
        if outcome is None:
            return Reply.failure(rid, "bad_request", "request was lost")
        if outcome.ok:
            return Reply(rid, True, None)
        return Reply.failure(rid, outcome.code, outcome.error)

    def _send(self, envelope: Envelope, reply: Reply) -> None:
        if self._batching:  # held until the writes of this batch are durable
            self._held.append((envelope, reply))
            return
        payload = codec.encode(reply.to_wire())
        if len(payload) < _COUNTED_REPLY:
            self.frontend.send_multipart([*envelope, payload])
            return
        self._send_counted(envelope, payload)

    def _send_counted(self, envelope: Envelope, payload: bytes) -> None:
        """Send a large reply unless its connection has one not written out yet, or
        the large replies not written out would exceed MAX_UNSENT_BYTES."""
        for who in [w for w, (tracker, _size) in self._unsent.items() if tracker.done]:
            del self._unsent[who]
        unsent = sum(size for _tracker, size in self._unsent.values())
        who = envelope[0]
        if who in self._unsent or unsent + len(payload) > MAX_UNSENT_BYTES:
            self.dropped_replies += 1
            if not self._dropping:
                self._dropping = True
                log.warning("dropping large replies: %d MB of them wait for clients that "
                            "read nothing", unsent >> 20)
            return
        self._dropping = False
        tracker = self.frontend.send_multipart(
            [*envelope, zmq.Frame(payload, copy=False, track=True)], copy=False, track=True)
        self._unsent[who] = (tracker, len(payload))

    # --- the log (also the Store that replication uses) ----------------------------------

    def append_local(self, etype: str, data: dict[str, Any], cid: str = "", rid: int = 0) -> Event:
        """Make and apply an event originating here; it is stored durably, then published,
        at once or (while serving a batch of client messages) at the batch's end."""
        event = Event(self.me.number, self.seq + 1, self.clock.now(), cid, rid, etype, data)
        self._apply([event])
        self._unflushed.append(event)
        if not self._batching:
            self._flush()
        return event

    def _flush(self) -> None:
        """Commit the events made here since the last flush, publish them, then send the
        replies held meanwhile.  A failing commit raises: the tracker stops rather than
        serve a state its log does not hold."""
        if self._unflushed:
            self.log.append(self._unflushed)
            for event in self._unflushed:
                self.replication.publish(event)
            self._unflushed = []
        held, self._held = self._held, []
        for envelope, reply in held:
            self._send(envelope, reply)

    def _apply(self, events: list[Event]) -> None:
        for event in events:
            self.have[event.origin] = max(self.have.get(event.origin, 0), event.seq)
            self.clock.observe(event.ts)
            self._index(event)
        self.seq = max(self.seq, self.have.get(self.me.number, 0))
        self.ledger.add(events)

    def _index(self, event: Event) -> None:
        if event.cid:
            known = self.requests.get(event.cid)
            if known is None or known[0] < event.rid:
                self.requests[event.cid] = (event.rid, event.origin, event.seq)

    def vector(self) -> Vector:
        return dict(self.have)

    def since(self, vector: Vector, limit: int) -> list[Event]:
        return self.log.since(vector, limit)

    def accept(self, events: list[Event]) -> None:
        self.log.append(events)  # durable before they are applied or acked
        self._apply(events)

    def verdict(self, event: Event) -> st.Outcome | None:
        return st.outcome_of(self.ledger.state, event.cid, event.rid)

    def sessions_heard(self, sids: Iterable[str]) -> None:
        now = time.monotonic()
        sessions = self.ledger.state.sessions
        for sid in sids:
            if sid in sessions:
                self.last_seen[sid] = now

    # --- sessions -----------------------------------------------------------------------

    def _expire_sessions(self, now: float) -> None:
        """The lowest-numbered live tracker logs out clients no tracker heard from lately."""
        if now < self._next_expiry:
            return
        self._next_expiry = now + 1.0
        sessions = self.ledger.state.sessions
        for sid in [s for s in self.last_seen if s not in sessions]:
            del self.last_seen[sid]
        if self.view.leader(now) != self.me.number:
            return
        for sid in list(sessions):
            seen = self.last_seen.setdefault(sid, now)
            if now - seen > self.session_timeout:
                log.info("session %s timed out, logging it out", sid[:8])
                self.append_local("logout", {"sid": sid})
                self.last_seen.pop(sid, None)

    # --- operators ----------------------------------------------------------------------

    def digest(self) -> str:
        return st.digest(self.ledger.state)

    def status(self) -> dict[str, Any]:
        """What ``p2p-tracker --status`` shows for this tracker."""
        state = self.ledger.state
        now = time.monotonic()
        return {
            "tracker": self.me.number,
            "digest": self.digest(),
            "applied": {str(k): v for k, v in sorted(self.have.items())},
            "events": len(self.ledger.events),
            "users": len(state.users),
            "groups": len(state.groups),
            "sessions": len(state.sessions),
            "peers": self.view.describe(now),
            "leader": self.view.leader(now),
            "waiting": len(self.waits),
            "refolds": self.ledger.refolds,
            "replays": self.ledger.replays,
            "replication": dict(self.replication.stats),
            "dropped_replies": self.dropped_replies,
            "deferred": len(self._deferred),
            "hashing": len(self._hashing),  # password hashes waiting or running
        }
