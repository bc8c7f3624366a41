"""This client's downloads: starting, listing, waiting, pausing and resuming them.

Unfinished downloads are recorded in ``downloads.json`` under the data dir; the
next login of the same user resumes them, keeping every piece already verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from p2p.errors import LocalError, ProtocolError
from p2p.messages.tracker import check_file_name, check_id
from peers.download import Download, Host
from peers.storage import PartialDownload, replace_json

log = logging.getLogger(__name__)

_ENTRY_FIELDS = ("user", "group", "name", "path")  # what every saved download has

# An event for the user: its name and what it says (``message`` is the line to show).
Notify = Callable[[str, dict[str, Any]], None]

# Why a tracker refuses a saved download for good, as the user is told.  Any other
# failure at login may pass (no tracker answering, the disk, ...): the download is
# kept and tried again at the next login.  no_such_file is not among them: a tracker
# forgets a file while no member online shares it, which says nothing of whether its
# seeders come back (with the file's metadata saved, the download waits for them).
_NEVER_RESUMES = {
    "not_member": "you are no longer a member of group {group}",
    "no_such_group": "group {group} no longer exists",
}


def resolve_destination(destination: str, name: str) -> Path:
    """The file a download writes: ``destination/name`` for a directory, else the path.

    The name is a checked base name, so the result never leaves ``destination``.
    """
    check_file_name(name)
    dest = Path(destination).expanduser()
    if destination.endswith(("/", os.sep)) and not dest.is_dir():  # Path() drops the slash
        raise LocalError(f"destination directory {dest.absolute()} does not exist", "io_error")
    final = dest / name if dest.is_dir() else dest
    final = final.absolute()
    if not final.parent.is_dir():
        raise LocalError(f"destination directory {final.parent} does not exist", "io_error")
    if final.exists():
        raise LocalError(f"{final} already exists; choose another destination", "io_error")
    if not os.access(final.parent, os.W_OK):
        raise LocalError(f"cannot write in {final.parent}", "io_error")
    return final


class Downloads:
    """Every download this client started in this run, plus the saved unfinished ones."""

    def __init__(self, data_dir: Path, host: Host, notify: Notify) -> None:
        self._data_dir = data_dir
        self._record = data_dir / "downloads.json"
        self._host = host
        self._notify = notify
        self._lock = threading.Lock()
        # downloads.json is read, changed and replaced by the REPL and by download
        # threads ending at the same moment: one at a time, or an entry is lost.
        self._file_lock = threading.Lock()
        self._all: list[Download] = []

    def start(self, group: str, name: str, destination: str | Path,
              resolved: bool = False, sharing: bool = True,
              during: AbstractContextManager[object] | None = None) -> Download:
        """Ask the tracker about the file and start fetching it in the background.

        ``during``: entered once the tracker has answered, around recording the download
        and starting it (the client checks there that the session it began under still
        stands, and keeps it from ending until the download is in ``all()``).
        """
        check_id(group, "group id")
        final = Path(destination) if resolved else resolve_destination(str(destination), name)
        with self._lock:
            if any(d.final_path == final and d.running for d in self._all):
                raise LocalError(f"{final} is already being downloaded", "io_error")
        for other in self.find(group, name):
            if other.running:
                raise LocalError(f"{name} from {group} is already being downloaded to "
                                 f"{other.final_path}", "io_error")
        resume = self._resume_path(final)
        try:
            info = self._host.tracker_call("file_info", {"group": group, "name": name})
        except ProtocolError as exc:
            # A resumed download whose peers are all offline waits for them to return,
            # as a running one would; it knows the file from when it started.
            saved = self._saved_file(resume) if resolved and exc.code == "no_such_file" else None
            if saved is None:
                raise
            info = {**saved, "peers": []}
        if not info["peers"] and info["size"] > 0 and not resolved:
            raise LocalError(f"nobody else online shares {name} in {group}", "no_seeders")
        with during or contextlib.nullcontext():
            try:  # recorded first: a download that could not be resumed must not start
                resume.parent.mkdir(parents=True, exist_ok=True)
                self._save_file(resume, info)
                self._save_entry(group, name, final, sharing)
            except OSError as exc:
                raise LocalError(f"cannot record the download: {exc}", "io_error") from None
            download = Download(self._host, group, name, final, resume, info)
            download.sharing = sharing
            with self._lock:
                self._all = [d for d in self._all if d.final_path != final]
                self._all.append(download)
            download.start()
        return download

    def _resume_path(self, final: Path) -> Path:
        """The resume record of a download to ``final`` (beside it: the file's metadata)."""
        return self._data_dir / "partial" / (
            hashlib.sha1(str(final).encode()).hexdigest()[:16] + ".json")

    @staticmethod
    def _file_path(resume: Path) -> Path:
        return resume.with_suffix(".file")

    def _save_file(self, resume: Path, info: dict[str, Any]) -> None:
        replace_json(self._file_path(resume), {"size": info["size"], "sha1": info["sha1"],
                                               "pieces": bytes(info["pieces"]).hex()})

    def _saved_file(self, resume: Path) -> dict[str, Any] | None:
        try:
            saved = json.loads(self._file_path(resume).read_text())
            return {"size": int(saved["size"]), "sha1": str(saved["sha1"]),
                    "pieces": bytes.fromhex(saved["pieces"])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("no saved metadata for %s: %s", resume, exc)
            return None

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d.snapshot() for d in self._all]

    def all(self) -> list[Download]:
        with self._lock:
            return list(self._all)

    def find(self, group: str, name: str) -> list[Download]:
        with self._lock:
            return [d for d in self._all if (d.group, d.name) == (group, name)]

    def wait(self, group: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        """Block until the named download (or every running one) has ended."""
        if group is not None and name is not None:
            targets = self.find(group, name)
            if not targets:
                raise LocalError(f"no download of {name} from {group}", "no_such_file")
        else:
            with self._lock:
                targets = [d for d in self._all if d.running]
        return self._ended(targets)

    def cancel(self, group: str, name: str) -> list[dict[str, Any]]:
        """End the running downloads of ``name`` from ``group`` for good (their partial
        files are deleted, they never resume); what show_downloads then says of them."""
        targets = [d for d in self.find(group, name) if d.running]
        if not targets:
            raise LocalError(f"no download of {name} from {group} is running", "no_such_file")
        for download in targets:
            download.cancel("cancelled")
        return self._ended(targets)

    @staticmethod
    def _ended(targets: list[Download]) -> list[dict[str, Any]]:
        """What show_downloads says of ``targets`` once every one has ended."""
        for download in targets:
            while not download.wait(0.2):  # in steps: Ctrl-C must get through
                pass
        return [d.snapshot() for d in targets]

    def finished(self, download: Download) -> None:
        """A download completed (or failed for good): it need not be resumed."""
        self._drop_entry(download.final_path)

    def pause_all(self) -> None:
        """Stop every running download, keeping its verified pieces for the next login of
        its user, and forget them all: whoever logs in next sees only their own."""
        with self._lock:
            running = [d for d in self._all if d.running]
            self._all = []
        for download in running:
            download.stop()
            if download.state == "failed":
                self._drop_entry(download.final_path)

    def resume_saved(self, user: str) -> list[str]:
        """Restart the saved unfinished downloads of ``user``; returns their file names."""
        resumed = []
        with self._file_lock:
            try:
                saved = self._saved()
            except OSError as exc:  # the login stands; there is nothing to resume from
                self._notify("downloads_unreadable", {
                    "path": str(self._record), "kept_as": None,
                    "message": f"cannot read {self._record}: {exc.strerror or exc}: the "
                               "unfinished downloads it lists will not resume at login"})
                return []
        entries = [e for e in saved if _understood(e)]
        if len(entries) < len(saved):
            self._tell_not_understood(len(saved) - len(entries))
        for entry in entries:
            if entry["user"] != user:
                continue
            final = Path(entry["path"])
            with self._lock:
                if any(d.final_path == final and d.running for d in self._all):
                    continue
            try:
                if final.exists():  # the user put another file there: nothing to resume
                    PartialDownload.abandon(final, self._resume_path(final))
                    self._drop_entry(final)
                    continue
                self.start(entry["group"], entry["name"], final, resolved=True,
                           sharing=entry.get("share", True) is not False)
                resumed.append(entry["name"])
            except ProtocolError as exc:
                if exc.code in _NEVER_RESUMES:
                    self._drop_for_good(entry, final, exc.code)
                else:  # kept: the next login tries again
                    log.warning("cannot resume %s now: %s", entry["name"], exc)
            except Exception as exc:  # a stale entry must not stop the login
                log.warning("cannot resume %s: %s", entry["name"], exc)
        return resumed

    def _drop_for_good(self, entry: dict[str, Any], final: Path, code: str) -> None:
        """Delete a saved download the tracker will never serve again, and say so."""
        group, name = entry["group"], entry["name"]
        message = (f"dropped the unfinished download of {group}/{name} to {final}: "
                   + _NEVER_RESUMES[code].format(group=group))
        try:
            PartialDownload.abandon(final, self._resume_path(final))
        except OSError as exc:  # dropped all the same: it can never resume
            part = PartialDownload.part_path_for(final)
            message += f" (could not delete its partial file {part}: {exc.strerror or exc})"
        self._drop_entry(final)
        self._notify("download_dropped", {"group": group, "file": name, "path": str(final),
                                          "code": code, "message": message})

    # --- the record ---------------------------------------------------------------------

    def _saved(self) -> list[Any]:
        """Every entry of the record, as it is there; callers hold ``_file_lock``.

        An entry without its fields (edited by hand, or garbled) is among them: it is
        not resumed (see ``_understood``), and every save writes it back unchanged, since
        it is not ours to delete.  A record that cannot be read at all is moved aside, so
        the next save does not overwrite it, and the user is told.
        """
        try:
            entries = json.loads(self._record.read_text())["downloads"]
            if not isinstance(entries, list):  # a save would put a list in its place
                raise TypeError(f"downloads is a {type(entries).__name__}, not a list")
            return entries
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError) as exc:
            self._set_aside(exc)
            return []

    def _tell_not_understood(self, count: int) -> None:
        """Say that ``count`` entries of the record are not understood (once a login)."""
        entries = "entry" if count == 1 else "entries"
        self._notify("download_entries_unreadable", {
            "path": str(self._record), "count": count,
            "message": f"{count} {entries} of {self._record} could not be understood (not "
                       "the form this client writes): left in it as they are; the downloads "
                       "they stand for do not resume"})

    def _set_aside(self, why: Exception) -> None:
        """Rename the unreadable record to a name not taken yet, and say so."""
        log.info("cannot read %s: %r", self._record, why)
        said = (f"cannot read {self._record} (not the JSON this client writes): the "
                "unfinished downloads it lists will not resume at login (download_file to "
                "the same destination can reuse the pieces one had)")
        aside = self._record.with_name(self._record.name + ".unreadable")
        kept: str | None = None
        try:
            for n in itertools.count(2):
                if not aside.exists():  # only this client writes in its data dir
                    break
                aside = self._record.with_name(f"{self._record.name}.unreadable.{n}")
            os.replace(self._record, aside)
            kept = str(aside)
            said += f"; the file is kept as {aside}"
        except OSError as exc:
            said += f"; it could not be kept aside: {exc.strerror or exc}"
        self._notify("downloads_unreadable", {"path": str(self._record), "kept_as": kept,
                                              "message": said})

    def _save_entry(self, group: str, name: str, final: Path, sharing: bool) -> None:
        user = self._host.user or ""
        with self._file_lock:
            entries = [e for e in self._saved() if not _names(e, final)]
            entries.append({"user": user, "group": group, "name": name, "path": str(final),
                            "share": sharing})
            self._write(entries)

    def _drop_entry(self, final: Path) -> None:
        """Forget a saved download.  A record the disk refuses is only logged: the
        download has ended all the same (a login that cannot read the record says so)."""
        try:
            self._file_path(self._resume_path(final)).unlink(missing_ok=True)
            with self._file_lock:
                entries = self._saved()
                kept = [e for e in entries if not _names(e, final)]
                if len(kept) != len(entries):
                    self._write(kept)
        except OSError as exc:
            log.warning("cannot remove the download of %s from %s: %s", final, self._record,
                        exc)

    def stop_sharing(self, download: Download) -> None:
        """Share no piece of ``download`` from now on, also after a resume."""
        download.sharing = False
        if download.running:
            self._save_entry(download.group, download.name, download.final_path, False)

    def _write(self, entries: list[Any]) -> None:
        """Replace downloads.json; callers hold ``_file_lock``."""
        replace_json(self._record, {"downloads": entries}, indent=1)


def _understood(entry: Any) -> bool:
    """Whether a saved entry has the fields this client writes (and so may resume)."""
    return isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in _ENTRY_FIELDS)


def _names(entry: Any, final: Path) -> bool:
    """Whether ``entry`` is this client's record of the download to ``final`` (one not
    understood never is: it is kept whatever it says)."""
    return _understood(entry) and entry["path"] == str(final)
