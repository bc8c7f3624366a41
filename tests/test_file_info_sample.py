"""file_info lists a bounded sample of a file's holders: seeders first, then partial
holders at random, a different sample for each downloader and for each of its refreshes.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from p2p.messages.sync import Event
from p2p.messages.tracker import MAX_LISTED_PEERS, Reply, Request
from p2p.pieces import PIECE_SIZE, Bitfield
from trackers import commands
from trackers import state as st
from trackers.commands import Context, choose_peers, session_id, ticket_for

pytestmark = pytest.mark.timeout(60)

CTX = Context(salt=b"S" * 16)
_ts = itertools.count(1)


def _given(s: st.State, etype: str, **data: Any) -> None:
    outcome = st.apply(s, Event(1, next(_ts), next(_ts), "", 0, etype, data))
    assert outcome.ok, outcome


def crowd(seeders: int, partials: int, downloaders: int = 2, count: int = 16) -> st.State:
    """Group g: ``seeders`` members with all of f.bin (``count`` pieces), ``partials``
    with part of it, and ``downloaders`` (d0, d1...) with none; all logged in.  A member
    listens at ``<user>.lan:7000``; user ``u`` has session ``sid-u``."""
    s = st.State()
    users = ([f"s{i}" for i in range(seeders)] + [f"p{i}" for i in range(partials)]
             + [f"d{i}" for i in range(downloaders)])
    _given(s, "create_user", user="owner", pw=b"x")
    _given(s, "create_group", group="g", user="owner")
    for user in users:
        _given(s, "create_user", user=user, pw=b"x")
        _given(s, "login", user=user, sid=session_id(f"token-{user}"), cid=f"cid-{user}",
               addr=f"{user}.lan:7000")
        _given(s, "join_group", group="g", user=user)
        _given(s, "accept_request", group="g", user="owner", member=user)
    have = Bitfield(count)
    have.add(0)
    for user in users[:seeders + partials]:
        _given(s, "share", sid=session_id(f"token-{user}"), group="g", name="f.bin",
               size=count * PIECE_SIZE, sha1="a" * 40, pieces=b"\x01" * 20 * count,
               have=None if user.startswith("s") else have.to_bytes())
    return s


def listed(s: st.State, user: str, rid: int = 1) -> list[dict[str, Any]]:
    """The peers ``user`` is told of in file_info request number ``rid``."""
    req = Request("file_info", f"cid-{user}", rid, {"group": "g", "name": "f.bin"},
                  f"token-{user}")
    reply = commands.plan(s, req, CTX)
    assert isinstance(reply, Reply) and reply.ok, reply
    peers: list[dict[str, Any]] = reply.result["peers"]
    return peers


def users(peers: list[dict[str, Any]]) -> list[str]:
    return [peer["user"] for peer in peers]


# --- the choice --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("seeders", "partials", "seeders_listed", "partials_listed"),
    [
        (3, 200, 3, 47),  # every seeder, the rest of the list partial holders
        (100, 100, 25, 25),  # seeders in plenty: half the list is kept for partial holders
        (100, 3, 47, 3),  # ...unless there are fewer of them to list
        (0, 200, 0, 50),
        (200, 0, 50, 0),
        (10, 20, 10, 20),  # under the cap: everyone
    ],
)
def test_file_info_lists_at_most_the_cap_seeders_first(
        seeders: int, partials: int, seeders_listed: int, partials_listed: int) -> None:
    assert MAX_LISTED_PEERS == 50
    s = crowd(seeders, partials)
    peers = listed(s, "d0")
    names = users(peers)
    assert len(names) == len(set(names)) == seeders_listed + partials_listed
    assert sum(1 for n in names if n.startswith("s")) == seeders_listed
    assert sum(1 for n in names if n.startswith("p")) == partials_listed
    assert not any(n.startswith("d") for n in names)  # nobody who holds nothing, nor d0
    assert names[:seeders_listed] == [n for n in names if n.startswith("s")]  # seeders first
    record = s.files["g"]["f.bin"]
    for peer in peers:  # each entry is what it was before the cap: its bitfield, its ticket
        sid = session_id(f"token-{peer['user']}")
        assert peer["addr"] == f"{peer['user']}.lan:7000"
        assert peer["have"] == record.holders[sid]
        assert peer["ticket"] == ticket_for(session_id("token-d0"), "g", peer["addr"])


def test_different_downloaders_are_told_of_different_partial_holders() -> None:
    s = crowd(0, 200, downloaders=8)
    samples = {frozenset(users(listed(s, f"d{i}"))) for i in range(8)}
    assert len(samples) == 8
    # and no partial holder is on every list: the load spreads over the group
    assert len(frozenset.intersection(*samples)) < 10


def test_a_downloader_meets_every_holder_over_its_refreshes() -> None:
    s = crowd(2, 200)
    seen: set[str] = set()
    for rid in range(1, 101):
        names = users(listed(s, "d0", rid))
        assert {"s0", "s1"} <= set(names)  # seeders on every list
        seen.update(names)
        if len(seen) == 202:
            break
    assert len(seen) == 202, f"{202 - len(seen)} holders never listed in 100 refreshes"
    assert rid <= 60, rid  # 48 of 200 partial holders a time: about 25 refreshes
    # successive refreshes list others
    assert users(listed(s, "d0", 1)) != users(listed(s, "d0", 2))


def test_a_retried_request_gets_the_same_answer() -> None:
    """A retry at another tracker (same state, same request) is told the same peers."""
    s = crowd(5, 200)
    assert listed(s, "d0", 7) == listed(st.copy_state(s), "d0", 7)


def test_choose_peers_with_a_small_cap() -> None:
    holders: dict[str, bytes | None] = {f"seed{i}": None for i in range(3)}
    holders.update({f"part{i}": b"\x80" for i in range(5)})
    for seed in (b"a", b"b", b"c"):
        chosen = choose_peers(holders, seed, 4)
        assert len(chosen) == len(set(chosen)) == 4
        assert sum(1 for h in chosen if h.startswith("seed")) == 2
    assert sorted(choose_peers(holders, b"a", 100)) == sorted(holders)
    assert choose_peers({}, b"a", 4) == []
    assert choose_peers(holders, b"a", 0) == []
