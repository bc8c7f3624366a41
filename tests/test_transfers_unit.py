"""Where a download writes (resolve_destination), the upload rate limit (TokenBucket),
the resume record of a stalled download (PartialDownload.save_pending), and a piece a
peer refused (Picker.peer_lacks)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2p.errors import LocalError
from p2p.messages.tracker import check_file_name
from p2p.pieces import PIECE_SIZE, Bitfield, piece_sha1
from peers import piece_server
from peers.picker import Picker
from peers.piece_server import TokenBucket
from peers.storage import PartialDownload
from peers.transfers import resolve_destination

pytestmark = pytest.mark.timeout(60)


# --- resolve_destination ------------------------------------------------------------------

def test_directory_keeps_the_file_name(tmp_path: Path) -> None:
    assert resolve_destination(str(tmp_path), "a.bin") == tmp_path / "a.bin"


def test_file_path_is_used_as_given(tmp_path: Path) -> None:
    assert resolve_destination(str(tmp_path / "b.dat"), "a.bin") == tmp_path / "b.dat"


def test_relative_destination_becomes_absolute(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    assert resolve_destination("sub", "a.bin") == tmp_path / "sub" / "a.bin"
    assert resolve_destination("out.bin", "a.bin") == tmp_path / "out.bin"


def test_missing_directory_is_an_io_error(tmp_path: Path) -> None:
    with pytest.raises(LocalError) as err:
        resolve_destination(str(tmp_path / "nope" / "a.bin"), "a.bin")
    assert err.value.code == "io_error"
    assert not (tmp_path / "nope").exists()


def test_destination_under_a_file_is_an_io_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(LocalError) as err:
        resolve_destination(str(tmp_path / "plain" / "a.bin"), "a.bin")
    assert err.value.code == "io_error"


def test_existing_file_is_an_io_error(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"old")
    for destination in (tmp_path, tmp_path / "a.bin"):
        with pytest.raises(LocalError) as err:
            resolve_destination(str(destination), "a.bin")
        assert err.value.code == "io_error"
    assert (tmp_path / "a.bin").read_bytes() == b"old"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_directory_is_an_io_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(LocalError) as err:
            resolve_destination(str(locked), "a.bin")
        assert err.value.code == "io_error"
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("name", ["../a.bin", "..", ".", "a/b", "/etc/passwd", "", "a\\b",
                                  "a\0b", "x\n"])
def test_names_that_could_leave_the_directory_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(LocalError) as err:
        resolve_destination(str(tmp_path), name)
    assert err.value.code == "bad_request"
    # Even with a full file path as destination, a bad name is refused.
    with pytest.raises(LocalError):
        resolve_destination(str(tmp_path / "out.bin"), name)
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # tmp_path stays empty
@given(st.text(min_size=1, max_size=40))
def test_accepted_names_stay_in_the_directory(tmp_path: Path, name: str) -> None:
    try:
        check_file_name(name)
    except LocalError:
        with pytest.raises(LocalError):
            resolve_destination(str(tmp_path), name)
        return
    try:
        final = resolve_destination(str(tmp_path), name)
    except LocalError as exc:  # e.g. a name that happens to exist already
        assert exc.code == "io_error"
        return
    assert final.parent == tmp_path
    assert final.name == name


# --- TokenBucket --------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(piece_server, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def _send(bucket: TokenBucket, clock: FakeClock, size: int) -> None:
    """Wait (in fake time) as the bucket says, then send ``size`` bytes.

    Like the piece server, wait whole milliseconds, at least one.
    """
    for _ in range(20):
        delay = bucket.delay(size)
        if delay == 0:
            return
        assert delay > 0
        clock.now += max(1, int(delay * 1000)) / 1000
    raise AssertionError(f"bucket never let {size} bytes go")


def test_one_second_burst_then_paced(clock: FakeClock) -> None:
    bucket = TokenBucket(1000.0)
    assert bucket.delay(600) == 0
    assert bucket.delay(400) == 0  # the burst: one second's worth at once
    assert bucket.delay(500) == pytest.approx(0.5)
    assert bucket.delay(500) == pytest.approx(0.5)  # asking again does not take tokens
    clock.now += 0.5
    assert bucket.delay(500) == 0


def test_idle_time_refills_no_more_than_one_burst(clock: FakeClock) -> None:
    bucket = TokenBucket(1000.0)
    assert bucket.delay(1000) == 0
    clock.now += 3600
    assert bucket.delay(1000) == 0
    assert bucket.delay(1) > 0


def test_piece_bigger_than_the_rate_still_goes(clock: FakeClock) -> None:
    """A 512 KiB piece under a 100 KiB/s limit must not wait forever."""
    bucket = TokenBucket(100 * 1024.0)
    _send(bucket, clock, 512 * 1024)
    start = clock.now
    _send(bucket, clock, 512 * 1024)
    # The second piece waits until the first one is paid for.
    assert clock.now - start == pytest.approx(512 / 100, rel=0.01)


@settings(max_examples=200, deadline=None)
@given(st.floats(1024, 4 * 1024 * 1024),
       st.lists(st.integers(1, 512 * 1024), min_size=1, max_size=40))
def test_long_run_rate_is_respected(rate: float, sizes: list[int]) -> None:
    fake = FakeClock()
    original = piece_server.time
    piece_server.time = types.SimpleNamespace(monotonic=fake.monotonic)  # type: ignore[assignment]
    try:
        bucket = TokenBucket(rate)
        start, sent = fake.now, 0
        for size in sizes:
            _send(bucket, fake, size)
            elapsed = fake.now - start
            # What went before this piece fits in the burst plus the elapsed time...
            assert sent <= rate * (1 + elapsed) * (1 + 1e-9) + 1
            sent += size
        # ...and the bucket never holds back more than the rate requires.
        assert fake.now - start <= sent / rate + 0.001 * len(sizes)
    finally:
        piece_server.time = original


# --- the resume record keeps up with a stalled download -----------------------------------

def test_save_pending_records_pieces_verified_before_a_stall(tmp_path: Path) -> None:
    data = bytes(range(256)) * (3 * PIECE_SIZE // 256)
    hashes = [piece_sha1(data[i:i + PIECE_SIZE]) for i in range(0, len(data), PIECE_SIZE)]
    resume = tmp_path / "resume.json"
    partial = PartialDownload.open(tmp_path / "f.bin", len(data),
                                   hashlib.sha1(data).hexdigest(), hashes, resume)

    def recorded() -> int:
        bits = json.loads(resume.read_text())["bitfield"]
        return Bitfield.from_bytes(3, bytes.fromhex(bits)).count()

    try:
        assert partial.write_piece(1, data[PIECE_SIZE:2 * PIECE_SIZE])
        assert recorded() == 0  # just opened: the piece is not on record yet
        partial.save_pending()
        assert recorded() == 1
        partial.save_pending()  # nothing new: harmless
        assert recorded() == 1
    finally:
        partial.close()


# --- a peer that refuses a piece it advertised is not asked for it again -----------------

def test_picker_forgets_a_piece_its_peer_refused() -> None:
    picker = Picker(2, Bitfield(2), random.Random(0), random_first=0)
    picker.add_peer("p", Bitfield.full(2))
    refused = picker.pick("p")
    assert refused is not None
    picker.failed("p", refused)
    picker.peer_lacks("p", refused)
    assert picker.unavailable() == [refused]  # so the download reports waiting
    assert picker.pick("p") == 1 - refused
    assert picker.pick("p") is None  # not the refused piece again, not even in endgame
    picker.peer_lacks("p", refused)  # repeated, or for an unknown peer: ignored
    picker.peer_lacks("q", refused)
    picker.peer_has("p", refused)  # a later HAVE brings it back
    assert picker.unavailable() == []
    assert picker.pick("p") == refused
