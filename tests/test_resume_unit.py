"""Saved unfinished downloads at login (Downloads.resume_saved): what a refusal from the
tracker does to the partial file and its entry, and a downloads.json that cannot be
read.  The tracker is a stand-in that fails file_info with the code a test chooses."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from p2p.errors import LocalError, ProtocolError, RemoteError
from peers.storage import PartialDownload
from peers.transfers import Downloads
from tests.files_support import OfflineHost

pytestmark = pytest.mark.timeout(30)


class Host(OfflineHost):
    """A client whose tracker fails every file_info with ``error``."""

    def __init__(self, error: ProtocolError) -> None:
        self.error = error

    def tracker_call(self, op: str, args: dict[str, Any]) -> Any:
        raise self.error


class Saved:
    """One unfinished download of bob's on disk, as a paused download leaves it: the
    entry in downloads.json, the partial file, its resume record and file metadata."""

    def __init__(self, tmp_path: Path, error: ProtocolError) -> None:
        self.data_dir = tmp_path / "data"
        self.final = tmp_path / "dl" / "f.bin"
        self.final.parent.mkdir()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.downloads = Downloads(self.data_dir, Host(error),
                                   lambda name, data: self.events.append((name, data)))
        self.part = PartialDownload.part_path_for(self.final)
        self.part.write_bytes(b"\0" * 1000)
        self.resume = self.downloads._resume_path(self.final)
        self.resume.parent.mkdir(parents=True)
        self.resume.write_text(json.dumps({"bitfield": "00"}))
        self.resume.with_suffix(".file").write_text(
            json.dumps({"size": 1000, "sha1": "0" * 40, "pieces": "00" * 20}))
        self.record = self.data_dir / "downloads.json"
        self.record.write_text(json.dumps({"downloads": [
            {"user": "bob", "group": "g", "name": "f.bin", "path": str(self.final),
             "share": True}]}))

    def entries(self) -> list[Any]:
        return list(json.loads(self.record.read_text())["downloads"])

    def left_on_disk(self) -> list[Path]:
        return [p for p in (self.part, self.resume, self.resume.with_suffix(".file"))
                if p.exists()]


@pytest.mark.parametrize(("code", "why"), [
    ("not_member", "no longer a member of group g"),
    ("no_such_group", "group g no longer exists"),
])
def test_a_download_that_can_never_resume_is_dropped_and_said_so(
        tmp_path: Path, code: str, why: str) -> None:
    saved = Saved(tmp_path, RemoteError(f"the tracker says {code}", code))
    assert saved.downloads.resume_saved("bob") == []
    assert len(saved.events) == 1, saved.events
    name, data = saved.events[0]
    assert name == "download_dropped"
    assert (data["group"], data["file"], data["path"], data["code"]) == (
        "g", "f.bin", str(saved.final), code)
    assert "g/f.bin" in data["message"] and why in data["message"], data
    assert saved.left_on_disk() == []
    assert saved.entries() == []
    assert saved.downloads.resume_saved("bob") == []  # not tried again, not said again
    assert len(saved.events) == 1


def test_a_dropped_download_whose_directory_is_gone_leaves_no_record(tmp_path: Path) -> None:
    saved = Saved(tmp_path, RemoteError("not a member", "not_member"))
    saved.part.unlink()
    saved.final.parent.rmdir()
    assert saved.downloads.resume_saved("bob") == []
    assert [name for name, _data in saved.events] == ["download_dropped"]
    assert "could not delete" not in saved.events[0][1]["message"]
    assert saved.left_on_disk() == [] and saved.entries() == []


@pytest.mark.parametrize("error", [
    LocalError("no tracker answered", "no_tracker"),
    RemoteError("nobody shares it now", "no_seeders"),
    LocalError("cannot record the download: disk full", "io_error"),
    RemoteError("tracker bug", "internal_error"),
])
def test_a_download_that_may_resume_later_is_kept(tmp_path: Path,
                                                  error: ProtocolError) -> None:
    saved = Saved(tmp_path, error)
    before = saved.entries()
    assert saved.downloads.resume_saved("bob") == []
    assert saved.events == []
    assert saved.left_on_disk() == [saved.part, saved.resume,
                                    saved.resume.with_suffix(".file")]
    assert saved.entries() == before


def test_no_such_file_without_saved_metadata_is_kept_for_a_later_login(
        tmp_path: Path) -> None:
    """The tracker forgets a file while nobody online shares it: that is no sign it is
    gone for good (with the metadata saved, the download waits for its seeders)."""
    saved = Saved(tmp_path, RemoteError("no file f.bin is shared in g", "no_such_file"))
    saved.resume.with_suffix(".file").unlink()
    before = saved.entries()
    assert saved.downloads.resume_saved("bob") == []
    assert saved.events == []
    assert saved.left_on_disk() == [saved.part, saved.resume]
    assert saved.entries() == before


@pytest.mark.parametrize("garbage", [b'{"downloads": [{"user": "bob", "gro', b"\xff\xfe",
                                     b'{"other": []}', b'{"downloads": 3}', b"[1, 2]",
                                     b'{"downloads": "abc"}', b'{"downloads": {"a": 1}}'])
def test_an_unreadable_record_is_kept_aside_and_said_so(tmp_path: Path,
                                                        garbage: bytes) -> None:
    saved = Saved(tmp_path, LocalError("no tracker answered", "no_tracker"))
    saved.record.write_bytes(garbage)
    aside = saved.record.with_name("downloads.json.unreadable")
    assert saved.downloads.resume_saved("bob") == []
    assert [name for name, _data in saved.events] == ["downloads_unreadable"]
    data = saved.events[0][1]
    assert (data["path"], data["kept_as"]) == (str(saved.record), str(aside))
    message = data["message"]
    assert str(saved.record) in message and str(aside) in message, message
    assert "will not resume" in message, message
    assert aside.read_bytes() == garbage
    assert not saved.record.exists()
    # Later saves start a new record and never touch the one kept aside.
    saved.downloads._save_entry("g", "other.bin", tmp_path / "dl" / "other.bin", True)
    assert [e["name"] for e in saved.entries()] == ["other.bin"]
    assert aside.read_bytes() == garbage
    assert len(saved.events) == 1


def test_a_second_unreadable_record_does_not_replace_the_first(tmp_path: Path) -> None:
    saved = Saved(tmp_path, LocalError("no tracker answered", "no_tracker"))
    for garbage in (b"first", b"second"):
        saved.record.write_bytes(garbage)
        saved.downloads.resume_saved("bob")
    kept = [saved.events[i][1]["kept_as"] for i in (0, 1)]
    assert kept[0] != kept[1]
    assert [Path(k).read_bytes() for k in kept] == [b"first", b"second"]


def test_a_record_that_cannot_be_moved_aside_is_said_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = Saved(tmp_path, LocalError("no tracker answered", "no_tracker"))
    saved.record.write_bytes(b"garbage")

    def refuse(_src: Any, _dst: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    saved.downloads.resume_saved("bob")
    [(name, data)] = saved.events
    assert name == "downloads_unreadable" and data["kept_as"] is None
    assert "could not be kept aside: Permission denied" in data["message"], data
    assert saved.record.read_bytes() == b"garbage"


def test_a_record_the_disk_will_not_give_is_said_so_and_the_login_stands(
        tmp_path: Path) -> None:
    saved = Saved(tmp_path, LocalError("no tracker answered", "no_tracker"))
    saved.record.unlink()
    saved.record.mkdir()  # reading it fails with an OSError, not with bad JSON
    assert saved.downloads.resume_saved("bob") == []
    [(name, data)] = saved.events
    assert name == "downloads_unreadable" and data["kept_as"] is None
    assert str(saved.record) in data["message"] and "will not resume" in data["message"]
    assert saved.record.is_dir()
    # A download that ends and would drop its entry must not fail on it either.
    saved.downloads._drop_entry(saved.final)


# --- entries of a readable record that are not understood -----------------------------------

GARBLED = {"user": "bob", "group": "g", "name": 7, "path": "/somewhere/x.bin", "note": "kept"}


def test_an_entry_not_understood_is_kept_through_every_save_and_said_so(
        tmp_path: Path) -> None:
    """One good entry and one garbled (edited by hand): the good one resumes as ever, the
    garbled one stays in the record through the saves that follow, word for word, and
    the login says so once."""
    saved = Saved(tmp_path, LocalError("no tracker answered", "no_tracker"))
    good = saved.entries()[0]
    saved.record.write_text(json.dumps({"downloads": [GARBLED, good]}))
    assert saved.downloads.resume_saved("bob") == []  # no tracker: kept for later
    [(name, data)] = saved.events
    assert name == "download_entries_unreadable"
    assert (data["path"], data["count"]) == (str(saved.record), 1)
    assert str(saved.record) in data["message"] and "1 entry" in data["message"], data
    assert "left in it" in data["message"], data
    assert saved.entries() == [GARBLED, good]
    other = tmp_path / "dl" / "other.bin"
    saved.downloads._save_entry("g", "other.bin", other, True)
    assert [e["name"] for e in saved.entries()] == [7, "f.bin", "other.bin"]
    saved.downloads._drop_entry(other)
    saved.downloads._drop_entry(saved.final)
    assert saved.entries() == [GARBLED]
    assert len(saved.events) == 1  # saves say nothing; the login did


def test_entries_not_understood_stay_when_the_good_one_is_dropped(tmp_path: Path) -> None:
    saved = Saved(tmp_path, RemoteError("not a member", "not_member"))
    good = saved.entries()[0]
    garbled: list[Any] = [GARBLED, "a string", None, {"path": str(saved.final)}]
    saved.record.write_text(json.dumps({"downloads": [*garbled, good]}))
    assert saved.downloads.resume_saved("bob") == []
    assert [name for name, _data in saved.events] == ["download_entries_unreadable",
                                                      "download_dropped"]
    assert saved.events[0][1]["count"] == 4 and "4 entries" in saved.events[0][1]["message"]
    assert saved.left_on_disk() == []
    # Even the one naming the same path: not understood, so not ours to delete.
    assert saved.entries() == garbled


def test_a_record_whose_entries_are_all_understood_says_nothing(tmp_path: Path) -> None:
    saved = Saved(tmp_path, LocalError("no tracker answered", "no_tracker"))
    saved.downloads.resume_saved("alice")  # not hers, but understood all the same
    assert saved.events == []
