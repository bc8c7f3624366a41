"""One user's client: its session with the trackers and the operations of the REPL."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2p.config import TrackerAddress
from p2p.errors import LocalError, ProtocolError
from peers.tracker_client import TrackerClient

log = logging.getLogger(__name__)

PING_INTERVAL = 2.0  # trackers log out a client silent for 10 s

Notify = Callable[[str, dict[str, Any]], None]


class Client:
    """The session (who is logged in, with which token) and every command's effect.

    Methods return the command's result or raise ProtocolError with the spec's code;
    presenting them is the REPL's job.
    """

    def __init__(
        self,
        trackers: list[TrackerAddress],
        peer_addr: str,
        data_dir: Path,
        notify: Notify | None = None,
        **tracker_options: Any,
    ) -> None:
        self.peer_addr = peer_addr
        self.data_dir = data_dir
        self.notify: Notify = notify or (lambda _event, _data: None)
        self.tracker = TrackerClient(trackers, on_failover=self._failed_over, **tracker_options)
        self.user: str | None = None
        self._stop = threading.Event()
        self._pinger = threading.Thread(target=self._ping_loop, name="ping", daemon=True)
        self._pinger.start()

    # --- session ------------------------------------------------------------------------

    def require_login(self) -> str:
        if self.user is None:
            raise LocalError("not logged in: use login <user_id> <password>", "not_logged_in")
        return self.user

    def create_user(self, user: str, password: str) -> None:
        self.tracker.call("create_user", {"user": user, "password": password})

    def login(self, user: str, password: str) -> None:
        if self.user is not None:
            raise LocalError(f"already logged in as {self.user}: logout first",
                             "already_logged_in")
        self.tracker.token = secrets.token_hex(32)
        try:
            self.tracker.call("login", {"user": user, "password": password,
                                        "addr": self.peer_addr})
        except ProtocolError:
            self.tracker.token = None
            raise
        self.user = user

    def logout(self) -> None:
        self.require_login()
        try:
            self.tracker.call("logout")
        except ProtocolError as exc:
            if exc.code != "not_logged_in":  # already gone on the tracker side: fine
                raise
        self._forget_session()

    def _forget_session(self) -> None:
        self.user = None
        self.tracker.token = None

    # --- groups -------------------------------------------------------------------------

    def group_call(self, op: str, group: str, **args: Any) -> Any:
        """A group command that needs a session: the tracker does the checking."""
        self.require_login()
        return self.tracker.call(op, {"group": group, **args})

    def list_groups(self) -> list[dict[str, Any]]:
        self.require_login()
        result: list[dict[str, Any]] = self.tracker.call("list_groups")
        return result

    # --- background ---------------------------------------------------------------------

    def _failed_over(self, old: TrackerAddress, new: TrackerAddress) -> None:
        self.notify("failover", {"from": old.number, "to": new.number,
                                 "message": f"{old} is not answering; now using {new}"})

    def _ping_loop(self) -> None:
        while not self._stop.wait(PING_INTERVAL):
            if self.tracker.token is None:
                continue
            try:
                self.tracker.call("ping")
            except ProtocolError as exc:
                if exc.code == "not_logged_in" and self.user is not None:
                    user = self.user
                    self._forget_session()
                    self.notify("session_ended", {
                        "user": user,
                        "message": f"the trackers ended the session of {user}; log in again",
                    })
                elif exc.code != "not_logged_in":
                    log.debug("ping failed: %s", exc)

    def close(self) -> None:
        """Log out if needed and stop background work."""
        self._stop.set()
        if self.user is not None:
            try:
                self.logout()
            except ProtocolError as exc:
                log.warning("logout on exit failed: %s", exc)
        self.tracker.close()
