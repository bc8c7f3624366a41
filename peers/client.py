"""One user's client: its session with the trackers, its shares and its downloads.

Methods return a command's result or raise ProtocolError with the spec's code;
presenting them is the REPL's job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, NoReturn

import zmq

from p2p.config import TrackerAddress
from p2p.errors import LocalError, ProtocolError
from p2p.messages.tracker import check_file_name, check_id, check_shareable
from p2p.pieces import hash_file
from peers.download import Download
from peers.malloc_tuning import release_free_memory
from peers.piece_server import PieceServer
from peers.share_announcements import ShareAnnouncements
from peers.shares import Key, SavedShare, ShareRegistry, Source, trusted_mtime
from peers.ticket_checks import Credentials
from peers.tracker_client import TrackerClient
from peers.transfers import Downloads, Notify

log = logging.getLogger(__name__)

PING_INTERVAL = 2.0  # trackers log out a client silent for 10 s
# Answers to a ticket check that say nothing of the ticket: no tracker answered, or
# this client's own session has just ended (its ping finds out within PING_INTERVAL).
# The piece server then asks the downloader to come back soon rather than refusing it.
_CANNOT_TELL = ("no_tracker", "not_logged_in")
# How long a completed download's notice (and ``wait``) waits for a tracker to take
# its completion: a tracker that is up answers within milliseconds, and then whoever
# asks right after (list_files, a member about to download from us) finds us listed
# with the whole file; with none answering the user hears of the file all the same.
COMPLETION_GRACE = 0.5


def _well_formed(user: str, group: str, ticket: str) -> bool:
    """Whether a tracker would take these as a user id and a group id, and the ticket
    could be one (a tracker issues hex; an older tracker drops a call with a non-ASCII
    one unanswered, and every ticket in it would wait 8 s for no_tracker)."""
    if not ticket.isascii():
        return False
    try:
        check_id(user, "user id")
        check_id(group, "group id")
    except LocalError:
        return False
    return True


def _changed(before: os.stat_result, after: os.stat_result) -> bool:
    """Whether a file was written to (or replaced) between two stats of it."""
    return ((before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)
            != (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns))


class Client:
    """The session (who is logged in, with which token) and every command's effect."""

    def __init__(
        self,
        trackers: list[TrackerAddress],
        host: str,
        port: int,
        data_dir: Path,
        notify: Notify | None = None,
        *,
        upload_limit: float | None = None,
        **tracker_options: Any,
    ) -> None:
        self.peer_addr = f"{host}:{port}"
        self.data_dir = data_dir
        self.notify: Notify = notify or (lambda _event, _data: None)
        self.tracker = TrackerClient(trackers, on_failover=self._failed_over, **tracker_options)
        self.user: str | None = None
        # Held while a session begins or ends here, so that the ping thread acting on a
        # refused ping and a login or logout on the REPL thread never interleave.
        self._session_lock = threading.Lock()
        # Held by stop_share, and by a completed download while it decides to share: a
        # stop_share in between would otherwise be undone, the file served and shared
        # again at the next login though the user stopped it.
        self._sharing_lock = threading.Lock()
        self.registry = ShareRegistry(data_dir)
        # Through self.notify at each call, so a notify set later is the one used.
        self.downloads = Downloads(data_dir, self, lambda event, data: self.notify(event, data))
        try:
            self.server = PieceServer(host, port, self.registry, self._check_tickets,
                                      upload_limit=upload_limit)
        except zmq.ZMQError as exc:
            raise LocalError(f"cannot listen on {self.peer_addr}: {exc}", "io_error") from None
        self.server.start()
        # Through self.tracker at each call, so a tracker set later is the one used.
        self.announcements = ShareAnnouncements(
            lambda token, op, args: self.tracker.call_as(token, op, args))
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

    def login(self, user: str, password: str) -> dict[str, Any]:
        """Log in, share again what this data dir shared before, resume its downloads."""
        with self._session_lock:
            if self.user is not None:
                raise LocalError(f"already logged in as {self.user}: logout first",
                                 "already_logged_in")
            self.tracker.token = secrets.token_hex(32)
            try:
                self.tracker.call("login", {"user": user, "password": password,
                                            "addr": self.peer_addr})
            except BaseException:  # Ctrl-C too: no ping may keep a half-made session
                self.tracker.token = None
                raise
            self.user = user
            self.registry.active = True
            reshared, dropped = self._reshare(user)
            resumed = self.downloads.resume_saved(user)
            return {"user": user, "reshared": reshared, "dropped": dropped,
                    "resumed": resumed}

    def _reshare(self, user: str) -> tuple[list[str], list[str]]:
        reshared, dropped = [], []
        try:
            records = self.registry.saved()
        except OSError as exc:  # the login stands; nothing can be shared again from it
            log.warning("cannot read the saved shares: %s", exc)
            records = []
        for saved in records:
            if saved.user != user:
                continue
            label = f"{saved.group}/{saved.name}"
            try:
                unchanged = saved.unchanged()
            except (TypeError, ValueError) as exc:  # a garbled record: share nothing from it
                unchanged = False
                log.warning("ignoring the saved share %s: %s", label, exc)
            if not unchanged:
                self.registry.forget(user, saved.group, saved.name)
                dropped.append(label)
                self.notify("share_dropped", {"group": saved.group, "file": saved.name,
                                              "message": f"not sharing {label}: {saved.path} "
                                                         "is missing or changed since upload"})
                continue
            try:
                self._announce_share(saved.group, saved.name, saved.size, saved.sha1,
                                     bytes.fromhex(saved.pieces), Path(saved.path),
                                     trusted_mtime(saved.mtime_ns, saved.hashed_at_ns))
                reshared.append(label)
            except (ProtocolError, ValueError, TypeError) as exc:  # also a garbled record
                if isinstance(exc, ProtocolError) and exc.code == "interrupted":
                    # Ctrl-C stops the login, as any command: going on to the next file
                    # (8 s each with slow trackers) would make it take longer instead.
                    raise LocalError(f"{exc.message}; logged in as {user}, but the rest "
                                     "of the saved shares and unfinished downloads resume "
                                     "only at the next login", "interrupted") from None
                dropped.append(label)
                self.notify("share_dropped", {"group": saved.group, "file": saved.name,
                                              "message": f"not sharing {label}: {exc}"})
        return reshared, dropped

    def logout(self) -> None:
        """Log out at the trackers, then stop sharing and pause the downloads here.

        The trackers first: a logout none of them took fails and changes nothing (the
        downloads go on, the files stay shared).  The session is forgotten as soon as
        they took it, so the ping thread does not mistake it for one they ended.
        """
        with self._session_lock:
            self.require_login()
            try:
                self.tracker.call("logout")
            except ProtocolError as exc:
                if exc.code != "not_logged_in":  # already gone on the tracker side: fine
                    raise
            self._end_session_here()

    def _end_session_here(self) -> None:
        """What ending a session does on this client (callers hold ``_session_lock``):
        forget it, pause its downloads for its user's next login, and stop sharing its
        files, so that the next user of the client neither sees nor serves them."""
        self.user = None
        self.tracker.token = None
        self.registry.active = False
        # The trackers dropped every share of the session: nothing of it is sent now.
        self.announcements.drop_pending("the session has ended")
        self.downloads.pause_all()
        self.registry.clear()

    # --- groups -------------------------------------------------------------------------

    def group_call(self, op: str, group: str, **args: Any) -> Any:
        """A group command that needs a session: the tracker does the checking."""
        self.require_login()
        return self.tracker.call(op, {"group": group, **args})

    def list_groups(self) -> list[dict[str, Any]]:
        self.require_login()
        result: list[dict[str, Any]] = self.tracker.call("list_groups")
        return result

    def leave_group(self, group: str) -> None:
        """Leave ``group``: stop sharing in it, and end the downloads from it (a
        non-member gets no piece and no peer: they would wait for good)."""
        self.group_call("leave_group", group)
        for download in self.downloads.all():
            if download.group == group:
                self.downloads.stop_sharing(download)
                if download.running:
                    download.cancel(f"you left group {group}")
        for source in self.registry.listing():
            if source.key[0] == group:
                self.registry.remove(source.key)
                self.registry.forget(self.user or "", *source.key)

    # --- files --------------------------------------------------------------------------

    def upload_file(self, path_text: str, group: str) -> dict[str, Any]:
        """Hash a file in one pass and share it in ``group`` under its base name."""
        user = self.require_login()
        path = Path(path_text).expanduser().absolute()
        if not path.is_file() or not os.access(path, os.R_OK):
            raise LocalError(f"{path_text} is not a readable file", "no_such_file")
        name = check_file_name(path.name)
        try:
            hashed_at = time.time_ns()
            before = path.stat()
            # Before hashing, which takes minutes for a file this large: its share
            # would be larger than any tracker takes.
            check_shareable(before.st_size, path_text)
            digest = hash_file(path)
            after = path.stat()
        except OSError as exc:
            raise LocalError(f"cannot read {path_text}: {exc}", "io_error") from None
        if _changed(before, after) or digest.size != after.st_size:
            # Its hashes would match no state of the file: nobody could download it.
            raise LocalError(f"{path_text} changed while it was being hashed; share it once "
                             "nothing writes to it any more", "io_error")
        pieces = b"".join(digest.piece_hashes)
        before_share = self.registry.get((group, name))
        self._announce_share(group, name, digest.size, digest.sha1, pieces, path,
                             trusted_mtime(before.st_mtime_ns, hashed_at),
                             listed_before=before_share is not None)
        try:
            self.registry.remember(SavedShare(user, group, name, str(path), digest.size,
                                              digest.sha1, pieces.hex(), before.st_mtime_ns,
                                              hashed_at))
        except OSError as exc:  # not shared if it cannot be shared again at the next login
            if before_share is not None:  # the same file again: keep sharing it as before
                self.registry.put(before_share)
            else:
                self.registry.remove((group, name))
                with contextlib.suppress(ProtocolError):
                    self.tracker.call("unshare", {"group": group, "name": name})
            raise LocalError(f"cannot save the list of shared files: {exc}", "io_error") from None
        return {"name": name, "size": digest.size, "sha1": digest.sha1,
                "pieces": len(digest.piece_hashes)}

    def _announce_share(self, group: str, name: str, size: int, sha1: str, pieces: bytes,
                        path: Path, mtime_ns: int | None, *, listed_before: bool = False
                        ) -> None:
        """Register a complete file with the trackers, then serve it.

        ``listed_before``: this client already shares the same file there, so a Ctrl-C
        during the call changes nothing; otherwise see ``_withdraw_interrupted``.
        """
        source = Source((group, name), size, pieces, path, sha1=sha1, mtime_ns=mtime_ns)
        try:
            self.tracker.call("share", {"group": group, "name": name, "size": size,
                                        "sha1": sha1, "pieces": pieces})
        except KeyboardInterrupt:
            if listed_before:
                raise
            self._withdraw_interrupted(source)
        self.registry.put(source)

    def _withdraw_interrupted(self, source: Source) -> NoReturn:
        """Ctrl-C while a tracker was taking a share: the user wants it not shared, but
        the tracker may have listed it, and a listed file that nobody serves has every
        downloader refused.  So the call is settled (answered, so that no copy of it
        still on its way can list it later) and the share withdrawn.  Where no tracker
        confirms that (none answers, or Ctrl-C again), the file is served instead until
        stop_share or logout, so that whatever a tracker lists is served."""
        group, name = source.key
        try:
            self.tracker.settle()
            self.tracker.call("unshare", {"group": group, "name": name})
        except ProtocolError as exc:
            # not_shared: the share never took; not_logged_in: the session, and with
            # it every share of it, is gone.
            if exc.code not in ("not_shared", "not_logged_in"):
                self._serve_unconfirmed(source, str(exc))
        except KeyboardInterrupt:
            self._serve_unconfirmed(source, "interrupted again")
        raise LocalError(f"interrupted: {name} is not shared in {group}", "interrupted")

    def _serve_unconfirmed(self, source: Source, why: str) -> NoReturn:
        """Serve a file a tracker may list, for want of a confirmed withdrawal.  Not
        remembered: the next login does not share it again."""
        self.registry.put(source)
        group, name = source.key
        raise LocalError(f"interrupted, but could not withdraw {name} ({why}): it is "
                         f"shared in {group} until stop_share {group} {name} or logout",
                         "interrupted")

    def list_files(self, group: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.group_call("list_files", group)
        return result

    def stop_share(self, group: str, name: str) -> None:
        """Stop sharing a file, also one still being downloaded (and once it completes)."""
        user = self.require_login()
        check_file_name(name)
        with self._sharing_lock:
            running = [d for d in self.downloads.find(group, name) if d.running and d.sharing]
            for download in running:  # first, so that it announces nothing more
                download.sharing = False
            try:
                # After whatever share, progress or completion of it is being sent; none
                # not sent yet goes out any more.
                _outcome(self.announcements.withdraw((group, name), self.tracker.token))
            except ProtocolError as exc:
                # not_shared, yet served here: no piece yet of a running download, or an
                # upload whose withdrawal after a Ctrl-C could not be confirmed.
                served_here = running or self.registry.get((group, name)) is not None
                if not (served_here and exc.code == "not_shared"):
                    for download in running:
                        download.sharing = True
                    raise
            for download in running:  # and after a resume too
                self.downloads.stop_sharing(download)
            self.registry.remove((group, name))
            self.registry.forget(user, group, name)

    def list_shares(self) -> list[dict[str, Any]]:
        """What this client serves now, and how many pieces of each it has sent."""
        self.require_login()
        return [{"group": s.key[0], "name": s.key[1], "path": str(s.path), "size": s.size,
                 "complete": s.partial is None, "served": self.registry.served[s.key]}
                for s in self.registry.listing()]

    def download_file(self, group: str, name: str, destination: str) -> dict[str, Any]:
        self.require_login()
        token = self.tracker.token
        shared = self.registry.get((group, name))
        if shared is not None and shared.partial is None:
            # A download would replace the complete file we serve with an empty partial.
            raise LocalError(f"you already share {name} in {group} (from {shared.path}); "
                             f"stop_share {group} {name} first to download it again",
                             "file_exists")
        download = self.downloads.start(group, name, destination,
                                        during=self._same_session(token))
        return {"group": group, "file": name, "path": str(download.final_path)}

    @contextlib.contextmanager
    def _same_session(self, token: str | None) -> Iterator[None]:
        """Keep the session with ``token`` from ending here while the block runs, or
        raise ``not_logged_in`` if it has ended already.

        A download whose file_info was answered just before the trackers ended the
        session would otherwise be added after the end paused every download, and run
        on for a user no longer logged in (and be recorded as the next user's).
        """
        with self._session_lock:
            if token is None or self.tracker.token != token:
                raise LocalError("not logged in: the session ended before the download "
                                 "could start; log in again", "not_logged_in")
            yield

    def show_downloads(self) -> list[dict[str, Any]]:
        self.require_login()
        return self.downloads.snapshot()

    def wait(self, group: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        self.require_login()
        return self.downloads.wait(group, name)

    def cancel_download(self, group: str, name: str) -> list[dict[str, Any]]:
        """Stop this client's download of ``name`` from ``group`` for good."""
        self.require_login()
        return self.downloads.cancel(group, name)

    # --- what downloads ask of the client (peers.download.Host) -------------------------

    def tracker_call(self, op: str, args: dict[str, Any]) -> Any:
        return self.tracker.call(op, args)

    def share_partial(self, download: Download, source: Source) -> None:
        """A download has its first verified pieces: serve them and tell the trackers
        (in the background)."""
        self.registry.put(source)
        assert source.partial is not None
        self._announce(download, "share", {"size": source.size, "sha1": source.partial.sha1,
                                           "pieces": source.pieces,
                                           "have": source.partial.have.to_bytes()})

    def announce_progress(self, download: Download, have: bytes) -> futures.Future[Any]:
        """Tell the trackers which pieces a download has (in the background)."""
        return self._announce(download, "have", {"have": have})

    def _announce(self, download: Download, op: str, args: dict[str, Any]
                  ) -> futures.Future[Any]:
        """Queue a share-state call of ``download``'s file, sent only while the download
        is still shared (not after a stop_share)."""
        return self.announcements.submit(download.key, op, args, self.tracker.token,
                                         lambda: download.sharing)

    def announce_piece(self, key: Key, index: int) -> None:
        self.server.announce(key, index)

    def ended(self, download: Download) -> None:
        """A download completed or failed: share the complete file, tell the user.

        The trackers hear of it in the background, after everything this client told
        them of the file before (see ShareAnnouncements); the user does not wait for
        them, but for COMPLETION_GRACE at most."""
        self.downloads.finished(download)
        # Not d.running alone: one that ended a moment ago is still "running" until its
        # ended() returns, and two ending together would each leave the release to the
        # other.
        if not any(d.running and d.state == "downloading"
                   for d in self.downloads.all() if d is not download):
            release_free_memory()  # what the allocator kept for pieces in flight
        if download.state != "complete":
            self.registry.remove(download.key)
            # Its verified pieces were discarded: stop advertising them (not_shared, in
            # the log, if it never had a piece).
            self.announcements.submit(download.key, "unshare", {}, self.tracker.token)
            self.notify("download_failed", {"group": download.group, "file": download.name,
                                            "message": f"download of {download.name} failed: "
                                                       f"{download.error}"})
            return
        path = download.final_path
        told = None
        with self._sharing_lock:
            if not download.sharing:  # stop_share while it ran (its unshare came after
                self.registry.remove(download.key)  # any note of it: ShareAnnouncements)
            else:
                told = self._share_downloaded(download)
        if told is not None:
            futures.wait([told], COMPLETION_GRACE)
        self.notify("download_complete", {"group": download.group, "file": download.name,
                                          "path": str(path),
                                          "message": f"{download.name} downloaded to {path}"})

    def _share_downloaded(self, download: Download) -> futures.Future[Any] | None:
        """Serve a completed download and remember it; the trackers are told in the
        background (the future of that), unless nobody is logged in any more."""
        path = download.final_path
        # Part of the whole-file hash came from bytes in memory while the file was
        # being written, so its mtime never vouches for it: serve with piece checks.
        self.registry.put(Source(download.key, download.size, download.pieces, path,
                                 sha1=download.sha1))
        if self.user is not None:
            self.registry.remember(SavedShare(
                self.user, download.group, download.name, str(path), download.size,
                download.sha1, download.pieces.hex(), path.stat().st_mtime_ns))
            return self._announce(download, "have", {"have": None})
        return None

    def _check_tickets(self, asked: list[Credentials]) -> list[bool]:
        """Whether a tracker vouches for each ticket, in order; ProtocolError
        ``no_tracker`` if none answered, ``not_logged_in`` if our session is gone (not
        knowing is not a no: the piece server decides what it means)."""
        if self.user is None:
            return [False] * len(asked)
        # Ids a tracker would refuse as malformed are refused here: one of them in a
        # call would fail the whole call.
        verdicts = [_well_formed(*c) for c in asked]
        well_formed = [c for c, ok in zip(asked, verdicts, strict=True) if ok]
        if not well_formed:
            return verdicts
        try:
            said = self.tracker.call("check_tickets", {"tickets": [
                {"user": user, "group": group, "ticket": ticket}
                for user, group, ticket in well_formed]})
        except ProtocolError as exc:
            if exc.code in _CANNOT_TELL:
                raise
            # A tracker from before check_tickets, or one that takes this call amiss:
            # one call per ticket says which ones are good.
            log.info("checking %d tickets at once failed (%s): one by one", len(well_formed),
                     exc)
            said = [self._check_ticket(*c) for c in well_formed]
        if not isinstance(said, list) or len(said) != len(well_formed):
            raise ProtocolError("a tracker gave a malformed answer to check_tickets")
        answers = iter(said)
        return [ok and next(answers) is True for ok in verdicts]

    def _check_ticket(self, user: str, group: str, ticket: str) -> bool:
        try:
            self.tracker.call("check_ticket", {"user": user, "group": group, "ticket": ticket})
        except ProtocolError as exc:
            if exc.code in _CANNOT_TELL:
                raise
            log.info("ticket of %s for %s refused: %s", user, group, exc)
            return False
        return True

    # --- background ---------------------------------------------------------------------

    def _failed_over(self, old: TrackerAddress, new: TrackerAddress) -> None:
        self.notify("failover", {"from": old.number, "to": new.number,
                                 "message": f"{old} is not answering; now using {new}"})

    def _ping_loop(self) -> None:
        """Keep the session alive; no failure may end this thread (the session would
        expire), so an unexpected one is logged and the next ping tried as usual."""
        failing = False  # log a bug's traceback once, not every PING_INTERVAL
        while not self._stop.wait(PING_INTERVAL):
            with self._session_lock:  # not half-way through a login or logout
                token = self.tracker.token
            if token is None:
                continue
            try:
                try:
                    self.tracker.call("ping")
                except ProtocolError as exc:
                    if exc.code == "not_logged_in":
                        self._session_ended(token)
                    else:
                        log.debug("ping failed: %s", exc)
                failing = False
            except Exception:
                log.log(logging.DEBUG if failing else logging.ERROR, "ping failed",
                        exc_info=True)
                failing = True

    def _session_ended(self, token: str) -> None:
        """The trackers refused a ping of the session with ``token``: end it here, unless
        a logout and a login on the REPL thread replaced it meanwhile (the refusal then
        says nothing about the new session)."""
        with self._session_lock:
            user = self.user
            if user is None or self.tracker.token != token:
                return
            self._end_session_here()
        self.notify("session_ended", {
            "user": user,
            "message": f"the trackers ended the session of {user}; log in again",
        })

    def close(self, logout: bool = True) -> None:
        """Log out (unless told not to) and stop background work.

        An error on the way is logged and the rest still runs, so leaving the REPL never
        crashes; KeyboardInterrupt is not caught: Ctrl-C during ``exit`` is the REPL's.
        Without the logout the tracker ends the session when its pings stop.
        """
        self._stop.set()
        if logout and self.user is not None:
            try:
                self.logout()
            except ProtocolError as exc:
                log.warning("logout on exit failed: %s", exc)
            except Exception:
                log.exception("logout on exit failed")
        steps: list[tuple[str, Callable[[], None]]] = [
            ("pausing downloads", self.downloads.pause_all),
            ("stopping the piece server", self.server.stop),
            # A call being sent gives up within the tracker client's deadline; without
            # the logout the process is leaving at once.
            ("stopping the share announcements",
             lambda: self.announcements.close(
                 self.tracker.give_up_after + 1 if logout else 0.1)),
            ("closing the tracker connection", lambda: self.tracker.close(wait=logout)),
        ]
        for what, step in steps:
            try:
                step()
            except Exception:
                log.exception("%s on exit failed", what)


def _outcome(future: futures.Future[Any]) -> Any:
    """The result of a queued tracker call (or its ProtocolError), waited for in steps:
    Ctrl-C must get through."""
    while True:
        try:
            return future.result(timeout=0.2)
        except TimeoutError:
            continue
