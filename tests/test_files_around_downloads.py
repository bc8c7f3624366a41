"""What users do around a running download: another download or file at the same
destination, stop_share, leave_group, logout and another user, resuming when nobody
online shares the file, and a data dir that cannot be written.

alice serves at 1 MiB/s, so a download of COUNT pieces runs for a few seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.files_support import (
    Session,
    done,
    entry,
    have_at_least,
    leftovers,
    login,
    make_file,
    pieces,
    seeders,
    sharing,
)
from tests.procs import ClientProc, Cluster, wait_for

pytestmark = pytest.mark.timeout(120)

COUNT = 8


def slow_share(c: Cluster, tmp_path: Path, users: list[str]
               ) -> tuple[dict[str, ClientProc], bytes, Path]:
    """``users`` in group g, alice first (serving f.bin at 1 MiB/s); an empty ``dl`` dir."""
    return sharing(c, tmp_path, users, COUNT, 1024)


def partway(client: ClientProc, share: float = 0.25) -> None:
    wait_for(lambda: have_at_least(client, "g", "f.bin", COUNT, share), 30,
             f"{share:.0%} of f.bin")


def started(client: ClientProc, dest: Path) -> None:
    """``client`` downloads f.bin into ``dest`` and has a quarter of it."""
    client.ok(f"download_file g f.bin {dest}")
    partway(client)


def test_two_clients_downloading_to_one_place_never_make_a_wrong_file(
        one_tracker: Cluster, tmp_path: Path) -> None:
    cl, data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob", "carol"])
    bob, carol = cl["bob"], cl["carol"]
    started(bob, dest)
    carol.ok(f"download_file g f.bin {dest}")  # not there yet: allowed to start...
    failed = carol.ok("wait g f.bin")[-1]  # ...but it may not touch bob's partial file
    assert failed["state"] == "failed" and "another download is writing" in failed["error"]
    done(bob, "g", "f.bin")
    assert (dest / "f.bin").read_bytes() == data
    assert leftovers(dest) == []


def test_a_symlink_at_the_partial_name_is_not_followed(one_tracker: Cluster,
                                                       tmp_path: Path) -> None:
    cl, _data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    (dest / ".f.bin.part").symlink_to(outside)
    cl["bob"].ok(f"download_file g f.bin {dest}")
    failed = cl["bob"].ok("wait g f.bin")[-1]
    assert failed["state"] == "failed" and "symbolic link" in failed["error"], failed
    assert outside.read_bytes() == b"precious"
    assert not (dest / "f.bin").exists()


def test_a_file_put_at_the_destination_meanwhile_is_kept(one_tracker: Cluster,
                                                         tmp_path: Path) -> None:
    cl, _data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    bob = cl["bob"]
    started(bob, dest)
    (dest / "f.bin").write_bytes(b"the user's own")
    failed = bob.ok("wait g f.bin")[-1]
    assert failed["state"] == "failed" and "left as it is" in failed["error"], failed
    assert (dest / "f.bin").read_bytes() == b"the user's own"
    assert leftovers(dest) == []
    assert bob.ok("list_shares") == []  # nothing of it is served


def test_a_trailing_slash_means_a_directory(one_tracker: Cluster, tmp_path: Path) -> None:
    cl, _data, _dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    error = cl["bob"].fails(f"download_file g f.bin {tmp_path / 'nodir'}/", "io_error")
    assert "does not exist" in error
    assert not (tmp_path / "nodir").exists()


def test_stop_share_while_downloading_lasts(one_tracker: Cluster, tmp_path: Path) -> None:
    cl, data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    alice, bob = cl["alice"], cl["bob"]
    started(bob, dest)
    bob.ok("stop_share g f.bin")
    assert bob.ok("list_shares") == []
    bob.ok("logout")  # and a resume does not share it again either
    assert login(bob, "bob", create=False)["resumed"] == ["f.bin"]
    partway(bob, 0.5)
    assert bob.ok("list_shares") == []
    assert seeders(alice, "g", "f.bin") == 1
    done(bob, "g", "f.bin")
    assert (dest / "f.bin").read_bytes() == data
    assert bob.ok("list_shares") == []
    assert seeders(alice, "g", "f.bin") == 1
    bob.ok("logout")
    assert login(bob, "bob", create=False)["reshared"] == []


def test_leave_group_stops_sharing_its_files(one_tracker: Cluster, tmp_path: Path) -> None:
    cl, _data, _dest = slow_share(one_tracker, tmp_path, ["alice", "bob", "carol"])
    bob, carol = cl["bob"], cl["carol"]
    make_file(tmp_path / "b" / "mine.bin", pieces(2), seed=7)
    bob.ok(f"upload_file {tmp_path / 'b' / 'mine.bin'} g")
    assert seeders(carol, "g", "mine.bin") == 1
    bob.ok("leave_group g")
    assert bob.ok("list_shares") == []
    assert seeders(carol, "g", "mine.bin") == 0
    bob.ok("logout")
    relogged = login(bob, "bob", create=False)
    assert relogged["reshared"] == [] and relogged["dropped"] == []


def test_the_next_user_of_a_client_sees_none_of_the_last_ones_downloads(
        one_tracker: Cluster, tmp_path: Path) -> None:
    cl, data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    bob = cl["bob"]
    started(bob, dest)
    bob.ok("logout")
    login(bob, "carol")
    assert bob.ok("show_downloads") == []
    bob.fails("wait g f.bin", "no_such_file")
    bob.ok("logout")
    assert login(bob, "bob", create=False)["resumed"] == ["f.bin"]
    done(bob, "g", "f.bin")
    assert (dest / "f.bin").read_bytes() == data


def test_a_download_resumed_while_nobody_shares_the_file_waits_for_them(
        one_tracker: Cluster, tmp_path: Path) -> None:
    cl, data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob", "carol"])
    alice, bob, carol = cl["alice"], cl["bob"], cl["carol"]
    started(bob, dest)
    bob.ok("logout")
    alice.ok("logout")
    assert carol.ok("list_files g") == []  # the tracker knows no f.bin now
    assert login(bob, "bob", create=False)["resumed"] == ["f.bin"]
    waiting = wait_for(lambda: entry(bob, "g", "f.bin")["waiting"], 20,
                       "bob's download to say it waits for peers")
    assert entry(bob, "g", "f.bin")["state"] == "downloading", waiting
    login(alice, "alice", create=False)  # shares f.bin again
    done(bob, "g", "f.bin", timeout=60)
    assert (dest / "f.bin").read_bytes() == data
    assert leftovers(dest) == []


def test_a_resume_whose_destination_was_taken_leaves_nothing_behind(
        one_tracker: Cluster, tmp_path: Path) -> None:
    cl, _data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    bob = cl["bob"]
    started(bob, dest)
    bob.ok("logout")
    (dest / "f.bin").write_bytes(b"the user's own")
    assert login(bob, "bob", create=False)["resumed"] == []
    assert (dest / "f.bin").read_bytes() == b"the user's own"
    assert leftovers(dest) == []
    assert list((bob.data_dir / "partial").iterdir()) == []


def test_a_resume_that_cannot_clean_up_still_logs_in(one_tracker: Cluster,
                                                     tmp_path: Path) -> None:
    cl, _data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    bob = cl["bob"]
    started(bob, dest)
    bob.ok("logout")
    (dest / "f.bin").write_bytes(b"the user's own")
    (dest / ".f.bin.part").unlink()
    (dest / ".f.bin.part").mkdir()  # not a file the download can open, let alone delete
    assert login(bob, "bob", create=False)["resumed"] == []
    bob.ok("list_groups")
    assert (dest / "f.bin").read_bytes() == b"the user's own"


def test_an_upload_that_cannot_be_recorded_is_not_shared(one_tracker: Cluster,
                                                         tmp_path: Path) -> None:
    cl, _data, _dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    bob = cl["bob"]
    make_file(tmp_path / "b" / "old.bin", 1000, seed=4)
    bob.ok(f"upload_file {tmp_path / 'b' / 'old.bin'} g")
    record = bob.data_dir / "shares.json"
    saved = record.read_text()
    record.unlink()
    record.mkdir()  # the list cannot be written any more
    make_file(tmp_path / "b" / "mine.bin", 1000, seed=3)
    error = bob.fails(f"upload_file {tmp_path / 'b' / 'mine.bin'} g", "io_error")
    assert "cannot save the list of shared files" in error
    assert [s["name"] for s in bob.ok("list_shares")] == ["old.bin"]
    assert seeders(cl["alice"], "g", "mine.bin") == 0
    # Sharing the same file again fails the same way, and it stays shared as it was.
    bob.fails(f"upload_file {tmp_path / 'b' / 'old.bin'} g", "io_error")
    assert [s["name"] for s in bob.ok("list_shares")] == ["old.bin"]
    assert seeders(cl["alice"], "g", "old.bin") == 1
    record.rmdir()
    record.write_text(saved)


def test_a_garbled_saved_share_is_dropped_at_login(one_tracker: Cluster,
                                                   tmp_path: Path) -> None:
    cl, _data, _dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    alice = cl["alice"]
    alice.ok("logout")
    record = alice.data_dir / "shares.json"
    saved = json.loads(record.read_text())
    saved["shares"][0]["pieces"] = "zz"
    record.write_text(json.dumps(saved))
    result = login(alice, "alice", create=False)
    assert result["dropped"] == ["g/f.bin"] and result["reshared"] == []
    alice.ok("list_groups")  # logged in, and working
    assert alice.ok("list_shares") == []
    assert os.path.exists(record)


def test_a_download_that_cannot_be_recorded_does_not_start(one_tracker: Cluster,
                                                          tmp_path: Path) -> None:
    cl, data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    bob = cl["bob"]
    blocker = bob.data_dir / "partial"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("")  # where resume records go: they cannot be written
    assert "cannot record the download" in bob.fails(f"download_file g f.bin {dest}",
                                                     "io_error")
    assert bob.ok("show_downloads") == []
    assert list(dest.iterdir()) == []
    blocker.unlink()
    bob.ok(f"download_file g f.bin {dest}")  # nothing stale stands in the way
    done(bob, "g", "f.bin")
    assert (dest / "f.bin").read_bytes() == data


def test_a_destination_replaced_by_a_file_fails_the_download_and_wait_returns(
        one_tracker: Cluster, tmp_path: Path) -> None:
    cl, _data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    bob = cl["bob"]
    started(bob, dest)
    for child in dest.iterdir():
        child.unlink()
    dest.rmdir()
    dest.write_bytes(b"the user's own")  # the partial file's directory is now a file
    failed = bob.ok("wait g f.bin", timeout=30)[-1]
    assert failed["state"] == "failed" and "cannot write" in failed["error"], failed
    assert dest.read_bytes() == b"the user's own"
    assert [e["event"] for e in bob.events] == ["download_failed"]
    # Said once, by the event: stderr (where a terminal user also sees events) does not
    # repeat it as a warning.
    assert "download of f.bin failed" not in bob.log_path.read_text()
    assert list((bob.data_dir / "partial").iterdir()) == []
    bob.ok("list_groups")  # and the client goes on


def test_a_garbled_saved_download_does_not_break_login(one_tracker: Cluster,
                                                       tmp_path: Path) -> None:
    cl, data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    bob = cl["bob"]
    started(bob, dest)
    bob.ok("logout")
    record = bob.data_dir / "downloads.json"
    saved = json.loads(record.read_text())
    good = saved["downloads"][0]
    garbled = [{"user": "bob", "group": "g"}, {"group": "g", "name": "x"}, {**good, "path": 7}]
    saved["downloads"] = [*garbled, good]
    record.write_text(json.dumps(saved))
    assert login(bob, "bob", create=False)["resumed"] == ["f.bin"]
    told = [e for e in bob.events if e["event"] == "download_entries_unreadable"]
    assert [(e["path"], e["count"]) for e in told] == [(str(record), 3)], bob.events
    done(bob, "g", "f.bin")
    assert (dest / "f.bin").read_bytes() == data
    # The finished download left the record; the entries not understood are still in it.
    assert json.loads(record.read_text())["downloads"] == garbled


def test_leaving_the_group_ends_a_download_from_it(one_tracker: Cluster,
                                                   tmp_path: Path) -> None:
    """A download from a group its user left can never finish: it fails at once and says
    why (rather than waiting for peers for good, then being dropped unannounced at the
    next login with its partial file left behind)."""
    count = 12  # at 512 KiB/s: most of it is left when the ticket's 5 s run out
    cl, _data, dest = sharing(one_tracker, tmp_path, ["alice", "bob"], count, 512)
    bob = cl["bob"]
    bob.ok(f"download_file g f.bin {dest}")
    wait_for(lambda: have_at_least(bob, "g", "f.bin", count, 0.1), 30, "a piece of f.bin")
    bob.ok("leave_group g")
    ended = bob.ok("wait g f.bin", timeout=15)
    assert [(d["state"], "left group g" in d["error"]) for d in ended] == [("failed", True)], \
        ended
    assert entry(bob, "g", "f.bin")["state"] == "failed"
    assert list(dest.iterdir()) == []
    bob.ok("logout")
    assert login(bob, "bob", create=False)["resumed"] == []
    assert json.loads((bob.data_dir / "downloads.json").read_text())["downloads"] == []


def test_cancel_download_ends_it_for_good(one_tracker: Cluster, tmp_path: Path) -> None:
    """A user who no longer wants a file stops its download: the partial file goes, the
    others' view of bob as a source goes, and no later login resumes it."""
    cl, data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    alice, bob = cl["alice"], cl["bob"]
    started(bob, dest)
    [cancelled] = bob.ok("cancel_download g f.bin", timeout=15)
    assert (cancelled["state"], cancelled["error"]) == ("failed", "cancelled"), cancelled
    assert entry(bob, "g", "f.bin")["state"] == "failed"
    assert list(dest.iterdir()) == []  # no partial file, hidden or not
    assert [f["seeders"] for f in alice.ok("list_files g")] == [1]
    assert "is running" in bob.fails("cancel_download g f.bin", "no_such_file")  # none runs
    bob.ok("logout")
    assert login(bob, "bob", create=False)["resumed"] == []
    assert json.loads((bob.data_dir / "downloads.json").read_text())["downloads"] == []
    bob.ok(f"download_file g f.bin {dest}")  # and it may be fetched again from scratch
    done(bob, "g", "f.bin", timeout=60)
    assert (dest / "f.bin").read_bytes() == data


@pytest.mark.parametrize("gone", ["membership", "group"])
def test_a_saved_download_from_a_group_left_elsewhere_is_dropped_at_login(
        one_tracker: Cluster, tmp_path: Path, gone: str) -> None:
    """bob leaves g from another client while his download is paused (and with him
    everyone else, so that g is deleted): his next login says the download was dropped
    and why, deletes its partial file, and does not try it again at the login after."""
    cl, _data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    alice, bob = cl["alice"], cl["bob"]
    started(bob, dest)
    bob.ok("logout")
    elsewhere = Session(one_tracker, "bob")
    elsewhere.call("leave_group", {"group": "g"})
    elsewhere.close()
    if gone == "group":
        alice.ok("leave_group g")
    assert login(bob, "bob", create=False)["resumed"] == []
    dropped = [e for e in bob.events if e["event"] == "download_dropped"]
    assert [(e["group"], e["file"]) for e in dropped] == [("g", "f.bin")], bob.events
    why = "no longer a member" if gone == "membership" else "no longer exists"
    assert "g/f.bin" in dropped[0]["message"] and why in dropped[0]["message"], dropped
    assert leftovers(dest) == []
    assert list((bob.data_dir / "partial").iterdir()) == []
    assert json.loads((bob.data_dir / "downloads.json").read_text())["downloads"] == []
    bob.ok("logout")
    assert login(bob, "bob", create=False)["resumed"] == []
    assert len([e for e in bob.events if e["event"] == "download_dropped"]) == 1


def test_an_unreadable_downloads_record_is_kept_and_said_so(one_tracker: Cluster,
                                                            tmp_path: Path) -> None:
    """A downloads.json cut short from outside: login says its downloads will not resume
    and where the file was kept; the partial file is left, so the same download_file
    again picks up the pieces it had."""
    cl, data, dest = slow_share(one_tracker, tmp_path, ["alice", "bob"])
    bob = cl["bob"]
    started(bob, dest)
    bob.ok("logout")
    record = bob.data_dir / "downloads.json"
    truncated = record.read_bytes()[:20]
    record.write_bytes(truncated)
    assert login(bob, "bob", create=False)["resumed"] == []
    told = [e for e in bob.events if e["event"] == "downloads_unreadable"]
    assert len(told) == 1, bob.events
    aside = bob.data_dir / "downloads.json.unreadable"
    assert told[0]["kept_as"] == str(aside)
    assert str(record) in told[0]["message"] and str(aside) in told[0]["message"]
    assert aside.read_bytes() == truncated
    assert leftovers(dest) == [".f.bin.part"]
    bob.ok(f"download_file g f.bin {dest}")
    finished = done(bob, "g", "f.bin")
    assert (dest / "f.bin").read_bytes() == data
    assert sum(finished["sources"].values()) < COUNT  # what it had was not fetched again
    assert aside.read_bytes() == truncated
    assert len([e for e in bob.events if e["event"] == "downloads_unreadable"]) == 1
