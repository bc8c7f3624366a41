"""The tracker's thin loop: sockets and timers around the pure ledger and commands."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from p2p import codec
from p2p.config import TrackerAddress
from p2p.errors import LocalError
from p2p.messages.sync import Event
from p2p.messages.tracker import Reply, Request
from trackers import commands
from trackers import state as st
from trackers.clock import HybridClock
from trackers.ledger import Ledger
from trackers.log import EventLog
from trackers.passwords import SALT_BYTES

log = logging.getLogger(__name__)

MAX_MESSAGE = 16 * 1024 * 1024
SESSION_TIMEOUT = 10.0  # a client not heard from for this long is logged out
_TICK = 0.1

Envelope = list[bytes]


class TrackerServer:
    """One tracker: answers clients on its port and keeps the durable log."""

    def __init__(
        self,
        trackers: list[TrackerAddress],
        number: int,
        data_dir: Path,
        *,
        session_timeout: float = SESSION_TIMEOUT,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.me = trackers[number - 1]
        self.trackers = trackers
        self.session_timeout = session_timeout
        self.log = EventLog(data_dir / "events.sqlite3")
        events = self.log.load()
        self.ledger = Ledger(events)
        self.clock = HybridClock()
        for event in events:
            self.clock.observe(event.ts)
        self.seq = self.log.vector().get(self.me.number, 0)
        now = time.monotonic()
        # Clients of a restarted tracker get a full timeout to show they are alive.
        self.last_seen: dict[str, float] = {sid: now for sid in self.ledger.state.sessions}
        self.context = context or zmq.Context.instance()
        self.frontend = self.context.socket(zmq.ROUTER)
        self.frontend.setsockopt(zmq.LINGER, 0)
        self.frontend.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        self.frontend.bind(f"tcp://{self.me.host}:{self.me.port}")
        self._next_expiry = now + 1.0
        self._timers: list[Callable[[float], None]] = [self._expire_sessions]
        log.info("%s serving, %d events in log, state %s", self.me, len(events), self.digest())

    # --- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set."""
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        try:
            while not stop.is_set():
                ready = dict(poller.poll(int(_TICK * 1000)))
                if self.frontend in ready:
                    self._drain(self.frontend, self._on_client)
                now = time.monotonic()
                for timer in self._timers:
                    timer(now)
        finally:
            self.close()

    def close(self) -> None:
        self.frontend.close(0)
        self.log.close()

    @staticmethod
    def _drain(sock: zmq.Socket[Any], handler: Callable[[list[bytes]], None]) -> None:
        for _ in range(1000):  # bounded, so one busy socket cannot starve the timers
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                handler(frames)
            except Exception:  # one bad message must never stop the tracker
                log.exception("dropped a message that broke its handler")

    # --- clients ------------------------------------------------------------------------

    def _on_client(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            log.warning("dropped a client message without envelope")
            return
        envelope, payload = frames[:-1], frames[-1]
        try:
            req = Request.from_wire(codec.decode(payload, max_size=MAX_MESSAGE))
        except LocalError as exc:
            log.warning("bad client request: %s", exc)
            self._send(envelope, Reply.failure(-1, exc.code, f"bad request: {exc}"))
            return
        self._send(envelope, self.handle(req))

    def handle(self, req: Request) -> Reply:
        """Answer one request: a read from the state, or a write made durable first."""
        if req.op == "status":
            return Reply(req.rid, True, self.status())
        state = self.ledger.state
        if req.token is not None:
            sid = commands.session_id(req.token)
            if sid in state.sessions:
                self.last_seen[sid] = time.monotonic()
        done = st.outcome_of(state, req.cid, req.rid)
        if done is not None:  # a retry of a request that already took effect
            return self._reply(req.rid, done)
        plan = commands.plan(state, req, commands.Context(salt=os.urandom(SALT_BYTES)))
        if isinstance(plan, Reply):
            return plan
        log.info("%s from client %s", plan.type, req.cid[:8])
        self.append_local(plan.type, plan.data, req.cid, req.rid)
        if plan.type == "login":
            self.last_seen[plan.data["sid"]] = time.monotonic()
        outcome = st.outcome_of(self.ledger.state, req.cid, req.rid)
        return self._reply(req.rid, outcome or st.fail("bad_request", "request was lost"))

    @staticmethod
    def _reply(rid: int, outcome: st.Outcome) -> Reply:
        if outcome.ok:
            return Reply(rid, True, None)
        return Reply.failure(rid, outcome.code, outcome.error)

    def _send(self, envelope: Envelope, reply: Reply) -> None:
        self.frontend.send_multipart([*envelope, codec.encode(reply.to_wire())])

    # --- the log ------------------------------------------------------------------------

    def append_local(self, etype: str, data: dict[str, Any], cid: str = "", rid: int = 0) -> Event:
        """Make, store durably and apply an event originating here."""
        event = Event(self.me.number, self.seq + 1, self.clock.now(), cid, rid, etype, data)
        self.log.append([event])
        self.seq = event.seq
        self.ledger.add([event])
        return event

    def _expire_sessions(self, now: float) -> None:
        if now < self._next_expiry:
            return
        self._next_expiry = now + 1.0
        for sid in list(self.ledger.state.sessions):
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
        return {
            "tracker": self.me.number,
            "digest": self.digest(),
            "applied": {str(k): v for k, v in sorted(self.log.vector().items())},
            "events": len(self.ledger.events),
            "users": len(state.users),
            "groups": len(state.groups),
            "sessions": len(state.sessions),
        }
