"""A ticket with a non-ASCII character (a downloader's hello may carry any string) must
get a no, not break the tracker's handler: hmac.compare_digest raises TypeError on a
non-ASCII str, the tracker drops the request without a reply, the serving peer retries
every tracker for 8 s and gets no_tracker for every ticket of the call."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from p2p.errors import ProtocolError
from p2p.messages import piece as msg
from peers.client import Client
from tests.files_support import Probe, Session, group_of, make_file, pieces
from tests.procs import ClientProc, Cluster
from tests.test_commands import SID, answer, call, refused, world
from tests.test_ticket_checks import BOB, _client, _Tracker
from trackers.commands import ticket_for

POISON = "\u00e9" * 64


def test_check_tickets_says_no_to_a_non_ascii_ticket_and_yes_to_the_good_one() -> None:
    good = ticket_for(SID["alice"], "g1", "bob.lan:7000")
    asked = [{"group": "g1", "user": "alice", "ticket": good},
             {"group": "g1", "user": "alice", "ticket": POISON}]
    assert answer(call(world(), "check_tickets", "bob", tickets=asked)) == [True, False]


def test_check_ticket_refuses_a_non_ascii_ticket() -> None:
    refused(call(world(), "check_ticket", "bob", group="g1", user="alice", ticket=POISON),
            "bad_ticket")


def _bob_may_fetch_from_alice(cluster: Cluster,
                              tmp_path: Path) -> tuple[ClientProc, Session, str, str]:
    """alice shares f.bin in g, where bob is a member: alice's client, bob's session, the
    file's SHA1, and the ticket the tracker gave bob for alice's peer."""
    alice = group_of(cluster, ["alice", "bob"])["alice"]
    make_file(tmp_path / "src" / "f.bin", pieces(2))
    sha1 = alice.ok(f"upload_file {tmp_path / 'src' / 'f.bin'} g")["sha1"]
    bob = Session(cluster, "bob")
    return alice, bob, sha1, bob.ticket("g", "f.bin", alice)


# Both send their hellos back to back, as a stranger would: whichever way the serving
# peer groups them into tracker calls, the member must get in.

@pytest.mark.timeout(90)
def test_a_strangers_non_ascii_ticket_does_not_hold_up_a_member(one_tracker: Cluster,
                                                               tmp_path: Path) -> None:
    alice, bob, sha1, ticket = _bob_may_fetch_from_alice(one_tracker, tmp_path)
    stranger, member = Probe(alice), Probe(alice)
    try:
        stranger.send(msg.Hello("g", "f.bin", sha1, "bob", POISON).to_wire())
        started = time.monotonic()
        have = member.hello("g", "f.bin", sha1, "bob", ticket)
        took = time.monotonic() - started
        assert isinstance(have, msg.Have), (member.last, f"{took:.1f} s")
        assert took < 3.0, f"the member waited {took:.1f} s (downloaders give up after 3 s)"
    finally:
        stranger.close()
        member.close()
        with contextlib.suppress(ProtocolError):  # expired after a long wait
            bob.close()


@pytest.mark.timeout(90)
def test_a_member_is_not_refused_for_a_strangers_ticket_in_the_same_call(
        one_tracker: Cluster, tmp_path: Path) -> None:
    alice, bob, sha1, ticket = _bob_may_fetch_from_alice(one_tracker, tmp_path)
    first, second, member = Probe(alice), Probe(alice), Probe(alice)
    try:
        first.send(msg.Hello("g", "f.bin", sha1, "bob", POISON).to_wire())
        second.send(msg.Hello("g", "f.bin", sha1, "bob", POISON[1:]).to_wire())
        member.send(msg.Hello("g", "f.bin", sha1, "bob", ticket).to_wire())
        reply = member.reply(30)
        assert isinstance(reply, msg.Have), member.last
    finally:
        for p in (first, second, member):
            p.close()
        with contextlib.suppress(ProtocolError):  # expired after a long wait
            bob.close()


def test_the_client_never_sends_a_non_ascii_ticket_to_a_tracker() -> None:
    """An older tracker breaks on one (no reply): the whole call would wait 8 s."""
    tracker = _Tracker("new")
    assert Client._check_tickets(_client(tracker), [BOB, ("eve", "g", POISON)]) == [
        True, False]
    assert tracker.calls == [("check_tickets", {"tickets": [
        {"user": "bob", "group": "g", "ticket": "t1"}]})]
