"""The largest file that can be shared: every message that carries its piece hashes or
its bitfield fits its limit, and a larger file is refused at once, before hashing."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from p2p import codec
from p2p.config import load_tracker_info
from p2p.errors import ProtocolError
from p2p.messages import piece as msg
from p2p.messages.sync import Batch, Event, encode_sync
from p2p.messages.tracker import (
    MAX_FILE_INFO_REPLY,
    MAX_LISTED_PEERS,
    MAX_REPLY,
    MAX_REQUEST,
    MAX_SHARED_PIECES,
    MAX_SHARED_SIZE,
    Reply,
    Request,
)
from p2p.pieces import Bitfield, piece_count
from peers.tracker_client import TrackerClient
from tests.files_support import group_of, seeders
from tests.procs import Cluster, cluster, free_port
from trackers import commands
from trackers import state as st
from trackers.commands import session_id
from trackers.log import EventLog

pytestmark = pytest.mark.timeout(120)

NAME = "\U0001f4be" * 63 + "abc"  # 255 bytes of UTF-8, the longest name there is
LONG_ID = "u" * 64


def partial_have(n: int) -> bytes:
    """A partial holder's bitfield of ``n`` pieces: every other piece."""
    bits = Bitfield(n)
    for i in range(0, n, 2):
        bits.add(i)
    return bits.to_bytes()


def biggest_share() -> dict[str, Any]:
    """The share of a partial download of the largest shareable file, longest fields."""
    return {"group": LONG_ID, "name": NAME, "size": MAX_SHARED_SIZE, "sha1": "a" * 40,
            "pieces": secrets.token_bytes(20 * MAX_SHARED_PIECES),
            "have": partial_have(MAX_SHARED_PIECES)}


def test_the_limit_is_about_405_gib_and_whole_pieces() -> None:
    assert piece_count(MAX_SHARED_SIZE) == MAX_SHARED_PIECES
    assert 400 * 2**30 < MAX_SHARED_SIZE < 406 * 2**30


def test_every_message_carrying_the_largest_file_fits_its_limit(tmp_path: Path) -> None:
    share = biggest_share()
    request = Request("share", "c" * 64, 2**63 - 1, share, "t" * 128).to_wire()
    assert len(codec.encode(request)) <= MAX_REQUEST
    # The event the tracker makes of it, alone in a catch-up batch as it would be.
    event = Event(1000, 2**63 - 1, 2**63 - 1, "c" * 64, 2**63 - 1, "share",
                  {**share, "sid": "s" * 64})
    assert len(encode_sync(event)) <= MAX_REQUEST
    assert len(encode_sync(Batch(1000, (event,), True))) <= MAX_REQUEST
    # A tracker restarting reads it back from its log.
    log = EventLog(tmp_path / "events.sqlite3")
    try:
        log.append([event])
        assert log.load() == [event]
        assert log.since({}) == [event]
    finally:
        log.close()
    # file_info: the hashes and as many partial holders as it lists (see below for more).
    peer = {"user": LONG_ID, "addr": "h" * 253 + ":65535", "have": share["have"],
            "ticket": "f" * 64}
    info = {"group": LONG_ID, "name": NAME, "size": MAX_SHARED_SIZE, "sha1": "a" * 40,
            "pieces": share["pieces"], "peers": [peer] * MAX_LISTED_PEERS}
    reply = len(codec.encode(Reply(2**63 - 1, True, info).to_wire()))
    assert reply <= MAX_FILE_INFO_REPLY <= MAX_REPLY
    # A peer's bitfield of it reaches the downloader.
    frames = msg.bitfield_frame(NAME, Bitfield.full(MAX_SHARED_PIECES).to_bytes())
    have = msg.parse_reply(frames)
    assert isinstance(have, msg.Have) and have.bits is not None
    assert Bitfield.from_bytes(MAX_SHARED_PIECES, have.bits).complete


def test_file_info_of_the_largest_file_with_200_partial_holders_fits_max_reply() -> None:
    """Listing every holder, 163 partial copies of the largest file (104 KB of bitfield
    each) took the reply over MAX_REPLY: every downloader was told no_tracker."""
    share = {**biggest_share(), "group": "g"}
    state = st.State()

    def given(etype: str, **data: Any) -> None:
        assert st.apply(state, Event(1, 1, 1, "", 0, etype, data)).ok

    users = [f"{'u' * 60}{i:04}" for i in range(201)]  # the longest ids there are
    for port, user in enumerate(users, start=10000):
        sid = session_id(f"token-{user}")
        given("create_user", user=user, pw=b"x")
        given("login", user=user, sid=sid, cid=user, addr=f"{'h' * 253}:{port}")
        if user == users[0]:
            given("create_group", group="g", user=user)
            continue
        given("join_group", group="g", user=user)
        given("accept_request", group="g", user=users[0], member=user)
        given("share", **{**share, "sid": sid})
    req = Request("file_info", "c" * 64, 2**63 - 1, {"group": "g", "name": NAME},
                  f"token-{users[0]}")
    reply = commands.plan(state, req, commands.Context(salt=bytes(16)))
    assert isinstance(reply, Reply) and reply.ok, reply
    assert len(codec.encode(reply.to_wire())) <= MAX_REPLY
    assert 0 < len(reply.result["peers"]) <= MAX_LISTED_PEERS


def test_trackers_take_keep_and_replicate_the_largest_share_and_refuse_more(
        tmp_path: Path) -> None:
    with cluster(tmp_path, trackers=2) as c:
        addresses = load_tracker_info(c.info)
        alice = TrackerClient(addresses)
        bob = TrackerClient(addresses[1:])  # tracker 2 only: what it holds came replicated
        try:
            for user, tracker in (("alice", alice), ("bob", bob)):
                tracker.call("create_user", {"user": user, "password": "pw"})
                tracker.token = secrets.token_hex(32)
                tracker.call("login", {"user": user, "password": "pw",
                                       "addr": f"127.0.0.1:{free_port()}"})
            alice.call("create_group", {"group": "g"})
            bob.call("join_group", {"group": "g"})
            alice.call("accept_request", {"group": "g", "user": "bob"})
            share = {**biggest_share(), "group": "g"}
            alice.call("share", share)

            def info() -> dict[str, Any]:
                result: dict[str, Any] = bob.call("file_info", {"group": "g", "name": NAME})
                return result

            assert info()["pieces"] == share["pieces"]
            assert [p["have"] for p in info()["peers"]] == [share["have"]]

            # Tracker 2 restarts from its log, which holds the share.
            c.tracker(2).stop()
            c.tracker(2).start()
            assert info()["pieces"] == share["pieces"]

            # One piece more is refused with the code a user is told, not dropped unread.
            more = {**share, "name": "more.bin", "size": MAX_SHARED_SIZE + 1,
                    "pieces": share["pieces"] + bytes(20)}
            del more["have"]
            with pytest.raises(ProtocolError) as refused:
                alice.call("share", more)
            assert refused.value.code == "file_too_large"
        finally:
            alice.close()
            bob.close()


def test_upload_of_a_file_too_large_is_refused_before_hashing(one_tracker: Cluster,
                                                              tmp_path: Path) -> None:
    """A sparse file one byte over the limit: hashing it would take many minutes."""
    cl = group_of(one_tracker, ["alice", "bob"])
    alice = cl["alice"]
    path = tmp_path / "huge.img"
    path.touch()
    os.truncate(path, MAX_SHARED_SIZE + 1)
    error = alice.fails(f"upload_file {path} g", "file_too_large", timeout=15)
    assert error == (f"{path} is 405.5 GiB ({MAX_SHARED_SIZE + 1} bytes); the largest file "
                     f"that can be shared is 405.5 GiB ({MAX_SHARED_SIZE} bytes)")
    assert alice.ok("list_shares") == []
    assert seeders(cl["bob"], "g", "huge.img") == 0
