"""Swarms of real clients: several sources, peers killed mid-transfer, resume, waiting.

Seeders get an upload limit (--upload-limit, KiB/s) so that a download is still
running when the test acts on it.  A limit of L KiB/s lets a seeder send L/512
pieces a second after a burst of as many.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from p2p.pieces import Bitfield
from tests.files_support import (
    addr,
    done,
    entry,
    group_of,
    have_at_least,
    leftovers,
    login,
    make_file,
    pieces,
    restart,
    served,
    sharing,
)
from tests.procs import ClientProc, Cluster, tracker_events, wait_for

pytestmark = pytest.mark.timeout(90)


def _waiting(client: ClientProc) -> str:
    return str(entry(client, "g", "f.bin")["waiting"])


def _two_seeders(c: Cluster, tmp_path: Path, count: int, limit: int
                 ) -> tuple[ClientProc, ClientProc, ClientProc, bytes]:
    """alice and bob share the same file of ``count`` pieces in group g, each at
    ``limit`` KiB/s; carol is a member with nothing.  Returns them and the data."""
    cl = group_of(c, ["alice", "bob", "carol"], limits={"alice": limit, "bob": limit})
    data = make_file(tmp_path / "a" / "f.bin", pieces(count))
    make_file(tmp_path / "b" / "f.bin", pieces(count))
    cl["alice"].ok(f"upload_file {tmp_path / 'a' / 'f.bin'} g")
    cl["bob"].ok(f"upload_file {tmp_path / 'b' / 'f.bin'} g")
    return cl["alice"], cl["bob"], cl["carol"], data


def test_download_takes_pieces_from_two_peers(one_tracker: Cluster, tmp_path: Path) -> None:
    count = 12
    alice, bob, carol, data = _two_seeders(one_tracker, tmp_path, count, limit=2048)

    carol.ok(f"download_file g f.bin {tmp_path}")
    finished = done(carol, "g", "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == data
    sources = finished["sources"]
    assert set(sources) == {addr(alice), addr(bob)}, sources
    assert all(n > 0 for n in sources.values()) and sum(sources.values()) == count, sources
    # Both seeders count what they sent (each counts just after sending).
    wait_for(lambda: served(alice, "g", "f.bin") >= sources[addr(alice)]
             and served(bob, "g", "f.bin") >= sources[addr(bob)], 5, "served counts")


def test_seeder_killed_mid_download(one_tracker: Cluster, tmp_path: Path) -> None:
    count = 12
    alice, bob, carol, data = _two_seeders(one_tracker, tmp_path, count, limit=1024)

    dest = tmp_path / "dl"
    dest.mkdir()
    carol.ok(f"download_file g f.bin {dest}")

    def quarter_with_some_from_alice() -> dict[str, Any] | None:
        d = have_at_least(carol, "g", "f.bin", count, 0.25)
        return d if d and d["sources"].get(addr(alice)) else None

    at_kill = wait_for(quarter_with_some_from_alice, 20,
                       "carol to have a quarter of the file, some of it from alice")
    alice.kill()
    assert at_kill["state"] == "downloading" and at_kill["progress"] < 1, at_kill

    finished = done(carol, "g", "f.bin", timeout=40)
    assert (dest / "f.bin").read_bytes() == data
    assert leftovers(dest) == []
    # bob supplied what alice no longer could.
    assert finished["sources"][addr(bob)] >= count - finished["sources"][addr(alice)]
    assert sum(finished["sources"].values()) == count


def test_third_member_fetches_from_a_member_still_downloading(one_tracker: Cluster,
                                                              tmp_path: Path) -> None:
    """A seeds slowly; B downloads; A dies at B >= 30%; C gets B's pieces from B alone;
    A comes back (new process, same data dir) and both B and C complete."""
    count = 12
    cl = group_of(one_tracker, ["alice", "bob", "carol"], limits={"alice": 1024})
    alice, bob, carol = cl["alice"], cl["bob"], cl["carol"]
    data = make_file(tmp_path / "a" / "f.bin", pieces(count))
    alice.ok(f"upload_file {tmp_path / 'a' / 'f.bin'} g")
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()

    bob.ok(f"download_file g f.bin {tmp_path / 'b'}")
    wait_for(lambda: have_at_least(bob, "g", "f.bin", count, 0.3), 20, "bob to reach 30%")
    alice.kill()

    carol.ok(f"download_file g f.bin {tmp_path / 'c'}")

    def carol_caught_up() -> dict[str, Any] | None:
        b, c = entry(bob, "g", "f.bin"), entry(carol, "g", "f.bin")
        return c if c["progress"] >= b["progress"] >= 0.3 else None

    caught_up = wait_for(carol_caught_up, 30, "carol to have as many pieces as bob")
    assert caught_up["state"] == "downloading", caught_up
    assert set(caught_up["sources"]) == {addr(bob)}, caught_up
    # Nobody online has the rest: both say so instead of failing.
    for client in (bob, carol):
        waiting = wait_for(functools.partial(_waiting, client), 20,
                           "show_downloads to report waiting")
        assert "missing" in waiting
        assert entry(client, "g", "f.bin")["state"] == "downloading"

    alice2 = restart(one_tracker, "alice")
    done(bob, "g", "f.bin", timeout=40)
    finished = done(carol, "g", "f.bin", timeout=40)
    assert (tmp_path / "b" / "f.bin").read_bytes() == data
    assert (tmp_path / "c" / "f.bin").read_bytes() == data
    assert finished["sources"][addr(bob)] >= round(caught_up["progress"] * count)
    wait_for(lambda: served(alice2, "g", "f.bin") > 0, 5, "the new alice to have served")


def _stall_after_30_percent(c: Cluster, tmp_path: Path, count: int, limit_kib: float
                            ) -> tuple[ClientProc, ClientProc, bytes, Path]:
    """alice seeds ``count`` pieces at ``limit_kib``; once bob has 30 % she logs out.

    Returns (alice, bob, the file's bytes, bob's destination directory).
    """
    cl, data, dest = sharing(c, tmp_path, ["alice", "bob"], count, limit_kib)
    alice, bob = cl["alice"], cl["bob"]
    bob.ok(f"download_file g f.bin {dest}")
    wait_for(lambda: have_at_least(bob, "g", "f.bin", count, 0.3), 20, "bob to reach 30%")
    alice.ok("logout")  # bob's progress stops here
    return alice, bob, data, dest


def test_waiting_when_the_only_seeder_logs_out_then_resumes(one_tracker: Cluster,
                                                            tmp_path: Path) -> None:
    count = 6
    alice, bob, data, dest = _stall_after_30_percent(one_tracker, tmp_path, count, 1024)
    waiting = wait_for(lambda: entry(bob, "g", "f.bin")["waiting"], 20,
                       "show_downloads to report that no peer has the missing pieces")
    assert "missing" in waiting
    # It keeps saying so (it does not flicker back to "downloading from a peer").
    for _ in range(5):
        d = entry(bob, "g", "f.bin")
        assert d["state"] == "downloading" and d["waiting"] and d["progress"] < 1, d

    alice.ok("login alice pw-secret")
    done(bob, "g", "f.bin", timeout=40)
    assert (dest / "f.bin").read_bytes() == data
    assert leftovers(dest) == []
    # While it waited, bob did not keep writing the same progress into the trackers' log.
    announced: dict[str, list[bytes | None]] = {}
    for event in tracker_events(one_tracker.tracker(1).data_dir):
        if event.type == "have":
            announced.setdefault(event.data["sid"], []).append(event.data["have"])
    for sid, haves in announced.items():
        repeats = sum(a == b for a, b in zip(haves, haves[1:], strict=False))
        assert repeats == 0, f"{sid[:8]} announced the same pieces again {repeats} times"


def _kept(client: ClientProc, count: int) -> int:
    """Pieces the client's resume record says are verified (what survives a SIGKILL)."""
    records = list((client.data_dir / "partial").glob("*.json"))
    assert len(records) == 1, records
    record = json.loads(records[0].read_text())
    return Bitfield.from_bytes(count, bytes.fromhex(record["bitfield"])).count()


def test_killed_downloader_resumes_without_fetching_again(one_tracker: Cluster,
                                                          tmp_path: Path) -> None:
    count = 10
    # 2 pieces a second: once bob has 3, the other 7 take alice 3.5 s, time enough for
    # her logout to land first on a busy machine (at 4 a second it was 1.5 s).
    alice, bob, data, dest = _stall_after_30_percent(one_tracker, tmp_path, count, 1024)
    frozen = wait_for(lambda: (d := entry(bob, "g", "f.bin"))["waiting"] and d, 20,
                      "bob to notice that nobody has the rest")
    verified = round(frozen["progress"] * count)
    assert 0 < verified < count, frozen
    # Pieces verified before a pause are on record soon, even though no more arrive.
    wait_for(lambda: _kept(bob, count) == verified, 5, "the resume record to catch up")
    bob.kill()

    alice.ok("login alice pw-secret")
    bob2 = one_tracker.client("bob")  # same data dir
    assert login(bob2, "bob", create=False)["resumed"] == ["f.bin"]
    finished = done(bob2, "g", "f.bin", timeout=40)
    assert (dest / "f.bin").read_bytes() == data
    assert leftovers(dest) == []
    # Only the missing pieces were fetched again.
    assert sum(finished["sources"].values()) == count - verified, (finished, verified)
    assert served(alice, "g", "f.bin") < 2 * count
