"""Files between real clients: uploads, downloads, errors, stop_share, logout/login, tampering.

Swarm behaviour (several peers, killed peers, resume) is in test_files_swarm.py and
peer-level access control in test_files_security.py.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from p2p.messages import piece as msg
from tests.files_support import (
    Probe,
    Session,
    addr,
    done,
    entry,
    group_of,
    leftovers,
    login,
    make_file,
    pieces,
    restart,
    seeders,
    served,
)
from tests.procs import Cluster, wait_for

pytestmark = pytest.mark.timeout(90)


def test_upload_errors_and_a_second_seeder(one_tracker: Cluster, tmp_path: Path) -> None:
    cl = group_of(one_tracker, ["alice", "bob"])
    alice, bob = cl["alice"], cl["bob"]
    mallory = one_tracker.client("mallory")
    login(mallory, "mallory")
    data = make_file(tmp_path / "a" / "f.bin", pieces(2), seed=1)
    make_file(tmp_path / "b" / "f.bin", pieces(2), seed=1)  # bob's copy of the same bytes
    make_file(tmp_path / "c" / "f.bin", pieces(2), seed=2)  # same name, other bytes

    alice.fails(f"upload_file {tmp_path / 'nope.bin'} g", "no_such_file")
    alice.fails(f"upload_file {tmp_path / 'a'} g", "no_such_file")  # a directory
    mallory.fails(f"upload_file {tmp_path / 'a' / 'f.bin'} g", "not_member")
    alice.fails(f"upload_file {tmp_path / 'a' / 'f.bin'} g9", "no_such_group")
    assert mallory.ok("list_shares") == []

    result = alice.ok(f"upload_file {tmp_path / 'a' / 'f.bin'} g")
    assert result == {"name": "f.bin", "size": len(data), "sha1": hashlib.sha1(data).hexdigest(),
                      "pieces": 2}
    assert seeders(bob, "g", "f.bin") == 1

    bob.fails(f"upload_file {tmp_path / 'c' / 'f.bin'} g", "file_exists")
    assert bob.ok("list_shares") == []  # the failed upload changed nothing
    listed = bob.ok("list_files g")
    assert [(f["name"], f["sha1"], f["seeders"]) for f in listed] == [
        ("f.bin", result["sha1"], 1)]

    bob.ok(f"upload_file {tmp_path / 'b' / 'f.bin'} g")
    assert seeders(alice, "g", "f.bin") == 2
    mallory.fails("list_files g", "not_member")


def test_download_errors_leave_nothing_behind(one_tracker: Cluster, tmp_path: Path) -> None:
    cl = group_of(one_tracker, ["alice", "bob"])
    alice, bob = cl["alice"], cl["bob"]
    data = make_file(tmp_path / "src" / "f.bin", pieces(2))
    alice.ok(f"upload_file {tmp_path / 'src' / 'f.bin'} g")
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "f.bin").write_bytes(b"older file")

    bob.fails(f"download_file g f.bin {tmp_path / 'missing' / 'f.bin'}", "io_error")
    bob.fails(f"download_file g f.bin {tmp_path / 'missing' / 'sub' / 'x'}", "io_error")
    bob.fails(f"download_file g f.bin {dest}", "io_error")  # dest/f.bin exists
    bob.fails(f"download_file g f.bin {dest / 'f.bin'}", "io_error")
    for bad in ("../f.bin", "..", "a/f.bin", "/f.bin"):
        bob.fails(f"download_file g {bad} {dest}", "bad_request")
    bob.fails(f"download_file g nope.bin {dest}", "no_such_file")
    bob.fails(f"download_file g9 f.bin {dest / 'x.bin'}", "no_such_group")
    # alice shares it herself: a download would swap her complete file for a partial.
    assert "already share" in alice.fails(f"download_file g f.bin {dest / 'mine.bin'}",
                                          "file_exists")

    assert not (tmp_path / "missing").exists()
    assert sorted(p.name for p in dest.iterdir()) == ["f.bin"]
    assert (dest / "f.bin").read_bytes() == b"older file"
    assert bob.ok("show_downloads") == []
    assert alice.ok("show_downloads") == []

    # The same client can still download it properly, and leaves no partial file.
    assert bob.ok(f"download_file g f.bin {dest / 'copy.bin'}")["path"] == str(dest / "copy.bin")
    done(bob, "g", "f.bin")
    assert (dest / "copy.bin").read_bytes() == data
    assert leftovers(dest) == []
    # bob now shares the complete copy: fetching it again is refused the same way.
    bob.fails(f"download_file g f.bin {dest / 'again.bin'}", "file_exists")
    assert [(d["path"], d["state"]) for d in bob.ok("show_downloads")] == [
        (str(dest / "copy.bin"), "complete")]
    assert [(s["path"], s["complete"]) for s in bob.ok("list_shares")] == [
        (str(dest / "copy.bin"), True)]
    bob.ok("stop_share g f.bin")  # once no longer shared, it may be downloaded again
    bob.ok(f"download_file g f.bin {dest / 'again.bin'}")
    done(bob, "g", "f.bin")
    assert (dest / "again.bin").read_bytes() == data


def test_empty_and_one_byte_files(one_tracker: Cluster, tmp_path: Path) -> None:
    cl = group_of(one_tracker, ["alice", "bob"])
    alice, bob = cl["alice"], cl["bob"]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "empty.bin").write_bytes(b"")
    (tmp_path / "src" / "one.bin").write_bytes(b"\x00")
    assert alice.ok(f"upload_file {tmp_path / 'src' / 'empty.bin'} g")["pieces"] == 0
    assert alice.ok(f"upload_file {tmp_path / 'src' / 'one.bin'} g")["pieces"] == 1
    sizes = {f["name"]: f["size"] for f in bob.ok("list_files g")}
    assert sizes == {"empty.bin": 0, "one.bin": 1}

    dest = tmp_path / "dl"
    dest.mkdir()
    bob.ok(f"download_file g empty.bin {dest}")
    bob.ok(f"download_file g one.bin {dest}")
    done(bob, "g", "empty.bin")
    done(bob, "g", "one.bin")
    assert (dest / "empty.bin").read_bytes() == b""
    assert (dest / "one.bin").read_bytes() == b"\x00"
    assert leftovers(dest) == []
    # bob now seeds both.
    assert seeders(alice, "g", "empty.bin") == 2
    assert seeders(alice, "g", "one.bin") == 2


def test_stop_share(one_tracker: Cluster, tmp_path: Path) -> None:
    cl = group_of(one_tracker, ["alice", "bob", "carol"])
    alice, bob, carol = cl["alice"], cl["bob"], cl["carol"]
    data = make_file(tmp_path / "a" / "f.bin", pieces(4))
    make_file(tmp_path / "c" / "f.bin", pieces(4))
    alice.ok(f"upload_file {tmp_path / 'a' / 'f.bin'} g")
    carol.ok(f"upload_file {tmp_path / 'c' / 'f.bin'} g")
    sha1 = hashlib.sha1(data).hexdigest()
    assert seeders(bob, "g", "f.bin") == 2
    bob_session = Session(one_tracker, "bob")  # real tickets of bob's, for probing peers
    at_alice = bob_session.ticket("g", "f.bin", alice)
    at_carol = bob_session.ticket("g", "f.bin", carol)

    alice.fails("stop_share g other.bin", "not_shared")
    alice.ok("stop_share g f.bin")
    assert alice.ok("list_shares") == []
    assert seeders(bob, "g", "f.bin") == 1
    alice.fails("stop_share g f.bin", "not_shared")

    # alice's piece server no longer serves it, even to a member with a valid ticket...
    probe = Probe(alice)
    refused = probe.hello("g", "f.bin", sha1, "bob", at_alice)
    assert isinstance(refused, msg.Refused) and refused.code == "not_shared", refused
    probe.close()
    probe = Probe(carol)  # ...while carol, who still shares it, does
    assert isinstance(probe.hello("g", "f.bin", sha1, "bob", at_carol), msg.Have)
    probe.close()

    dest = tmp_path / "dl"
    dest.mkdir()
    bob.ok(f"download_file g f.bin {dest}")
    finished = done(bob, "g", "f.bin")
    assert set(finished["sources"]) == {addr(carol)}, finished
    assert (dest / "f.bin").read_bytes() == data
    assert served(alice, "g", "f.bin") == 0

    carol.ok("stop_share g f.bin")
    bob.ok("stop_share g f.bin")
    assert alice.ok("list_files g") == []
    alice.fails(f"download_file g f.bin {tmp_path / 'again.bin'}", "no_such_file")
    # A later login does not share it again.
    carol.ok("logout")
    assert login(carol, "carol", create=False)["reshared"] == []
    assert alice.ok("list_files g") == []
    bob_session.close()


def test_logout_login_and_a_new_process_share_again(one_tracker: Cluster,
                                                    tmp_path: Path) -> None:
    cl = group_of(one_tracker, ["alice", "bob"])
    alice, bob = cl["alice"], cl["bob"]
    data = make_file(tmp_path / "src" / "f.bin", pieces(3))
    alice.ok(f"upload_file {tmp_path / 'src' / 'f.bin'} g")
    assert seeders(bob, "g", "f.bin") == 1

    alice.ok("logout")
    assert bob.ok("list_files g") == []
    alice.fails("list_shares", "not_logged_in")
    assert login(alice, "alice", create=False)["reshared"] == ["g/f.bin"]
    assert seeders(bob, "g", "f.bin") == 1
    (tmp_path / "d1").mkdir()
    bob.ok(f"download_file g f.bin {tmp_path / 'd1'}")
    assert set(done(bob, "g", "f.bin")["sources"]) == {addr(alice)}
    assert (tmp_path / "d1" / "f.bin").read_bytes() == data
    bob.ok("stop_share g f.bin")  # so that only alice can serve the next download

    assert alice.close() == 0  # end of input: logs out and quits
    assert bob.ok("list_files g") == []
    alice2 = restart(one_tracker, "alice")
    assert seeders(bob, "g", "f.bin") == 1
    assert alice2.ok("list_shares")[0]["name"] == "f.bin"
    (tmp_path / "d2").mkdir()
    bob.ok(f"download_file g f.bin {tmp_path / 'd2'}")
    assert set(done(bob, "g", "f.bin")["sources"]) == {addr(alice2)}
    assert (tmp_path / "d2" / "f.bin").read_bytes() == data


def test_file_changed_after_upload_is_dropped_at_next_login(one_tracker: Cluster,
                                                           tmp_path: Path) -> None:
    cl = group_of(one_tracker, ["alice", "bob"])
    alice, bob = cl["alice"], cl["bob"]
    path = tmp_path / "src" / "f.bin"
    make_file(path, pieces(1))
    alice.ok(f"upload_file {path} g")
    alice.ok("logout")
    with open(path, "r+b") as f:
        f.write(b"changed")
    result = login(alice, "alice", create=False)
    assert result["reshared"] == [] and result["dropped"] == ["g/f.bin"], result
    assert bob.ok("list_files g") == []


def test_tampered_seeder_never_yields_a_wrong_file(one_tracker: Cluster,
                                                   tmp_path: Path) -> None:
    """bob's copy is altered on disk after upload (same size); alice's is honest."""
    count = 8
    cl = group_of(one_tracker, ["carol", "alice", "bob"], limits={"alice": 2048})
    alice, bob, carol = cl["alice"], cl["bob"], cl["carol"]
    data = make_file(tmp_path / "a" / "f.bin", pieces(count))
    make_file(tmp_path / "b" / "f.bin", pieces(count))
    alice.ok(f"upload_file {tmp_path / 'a' / 'f.bin'} g")
    bob.ok(f"upload_file {tmp_path / 'b' / 'f.bin'} g")
    altered = [0, 2, 3, 4, 5, 6]
    fd = os.open(tmp_path / "b" / "f.bin", os.O_WRONLY)
    try:
        for index in altered:
            os.pwrite(fd, b"\xffTAMPERED\xff", index * 512 * 1024 + 100)
    finally:
        os.close(fd)
    assert os.path.getsize(tmp_path / "b" / "f.bin") == len(data)

    dest = tmp_path / "dl"
    dest.mkdir()
    carol.ok(f"download_file g f.bin {dest}")
    finished = done(carol, "g", "f.bin", timeout=40)
    assert (dest / "f.bin").read_bytes() == data
    assert finished["sources"].get(addr(bob), 0) <= count - len(altered), finished
    assert sum(finished["sources"].values()) == count
    assert leftovers(dest) == []
    assert entry(carol, "g", "f.bin")["error"] == ""
    # The test did put the tampered copy to work: bob refused to pass altered pieces on.
    assert "no longer matches its hash" in cl["bob"].log_path.read_text()


def test_tampered_sole_seeder_makes_the_download_wait(one_tracker: Cluster,
                                                      tmp_path: Path) -> None:
    """With only a tampered copy online, the download waits (and says so) rather than
    spinning on refusals; an honest seeder then lets it complete with the right bytes."""
    cl = group_of(one_tracker, ["alice", "bob", "carol"])
    alice, bob, carol = cl["alice"], cl["bob"], cl["carol"]
    data = make_file(tmp_path / "b" / "f.bin", pieces(4))
    bob.ok(f"upload_file {tmp_path / 'b' / 'f.bin'} g")
    fd = os.open(tmp_path / "b" / "f.bin", os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xffTAMPERED\xff", 2 * 512 * 1024 + 100)  # piece 2 only
    finally:
        os.close(fd)

    dest = tmp_path / "dl"
    dest.mkdir()
    carol.ok(f"download_file g f.bin {dest}")
    waiting = wait_for(lambda: entry(carol, "g", "f.bin")["waiting"], 20,
                       "carol to report that nobody can serve the missing piece")
    assert "1 missing" in waiting, waiting
    stuck = entry(carol, "g", "f.bin")
    assert stuck["state"] == "downloading" and stuck["sources"] == {addr(bob): 3}, stuck
    assert not (dest / "f.bin").exists()

    make_file(tmp_path / "a" / "f.bin", pieces(4))
    alice.ok(f"upload_file {tmp_path / 'a' / 'f.bin'} g")
    finished = done(carol, "g", "f.bin", timeout=30)
    assert (dest / "f.bin").read_bytes() == data
    assert finished["sources"] == {addr(bob): 3, addr(alice): 1}, finished


def test_second_download_of_a_running_file_is_refused(one_tracker: Cluster,
                                                      tmp_path: Path) -> None:
    # One copy at a time: a second partial would replace the first one as what this
    # client serves, and the two would fight over the tracker's record of its pieces.
    cl = group_of(one_tracker, ["alice", "bob"], limits={"alice": 1024})
    alice, bob = cl["alice"], cl["bob"]
    data = make_file(tmp_path / "src" / "f.bin", pieces(4))
    alice.ok(f"upload_file {tmp_path / 'src' / 'f.bin'} g")
    (tmp_path / "dl").mkdir()
    bob.ok(f"download_file g f.bin {tmp_path / 'dl' / 'one.bin'}")
    error = bob.fails(f"download_file g f.bin {tmp_path / 'dl' / 'two.bin'}", "io_error")
    assert "already being downloaded" in error
    done(bob, "g", "f.bin")
    assert (tmp_path / "dl" / "one.bin").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["one.bin"]


def test_a_file_written_while_it_is_hashed_is_not_shared(one_tracker: Cluster,
                                                         tmp_path: Path) -> None:
    """Hashes of a file that changed under the hashing match no state of it: downloads
    of it would wait forever for a piece nobody can serve."""
    cl = group_of(one_tracker, ["alice", "bob"])
    alice, bob = cl["alice"], cl["bob"]
    path = tmp_path / "a" / "log.bin"
    make_file(path, 64 * 1024 * 1024)
    stop = threading.Event()

    def write() -> None:  # someone still writing the file, near its start
        fd = os.open(path, os.O_WRONLY)
        try:
            n = 0
            while not stop.is_set():
                n += 1
                os.pwrite(fd, n.to_bytes(8, "big"), 0)
                stop.wait(0.001)
        finally:
            os.close(fd)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        error = alice.fails(f"upload_file {path} g", "io_error", timeout=60)
    finally:
        stop.set()
        writer.join(10)
    assert "changed while" in error
    assert alice.ok("list_shares") == [] and seeders(bob, "g", "log.bin") == 0
    alice.ok(f"upload_file {path} g")  # once nobody writes it, it is shared
    bob.ok(f"download_file g log.bin {tmp_path / 'b.bin'}")
    done(bob, "g", "log.bin", timeout=60)
    assert (tmp_path / "b.bin").read_bytes() == path.read_bytes()
