"""Piece selection (random start, rarest first, endgame, failures) and peer trust."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.pieces import Bitfield
from peers.picker import TIE_WINDOW, WINDOW, Picker, Trust

pytestmark = pytest.mark.timeout(30)


def bf(n: int, members: Iterable[int]) -> Bitfield:
    b = Bitfield(n)
    for i in members:
        b.add(i)
    return b


def picker(n: int, have: Iterable[int] = (), seed: int = 0, **kw: int) -> Picker:
    return Picker(n, bf(n, have), random.Random(seed), **kw)


def test_random_start_varies_with_seed_and_stays_within_peer() -> None:
    n = 64
    peer_pieces = set(range(0, n, 3))
    firsts: set[int] = set()
    for seed in range(30):
        p = picker(n, seed=seed)
        p.add_peer("a", bf(n, peer_pieces))
        picks = [p.pick("a") for _ in range(4)]
        assert all(i in peer_pieces for i in picks)
        assert len(set(picks)) == 4
        assert picks[0] is not None
        firsts.add(picks[0])
    # Random order, not rarest first or lowest index first.
    assert len(firsts) > 5


def test_same_seed_same_picks() -> None:
    def run() -> list[int | None]:
        p = picker(50, seed=7)
        p.add_peer("a", Bitfield.full(50))
        return [p.pick("a") for _ in range(10)]

    assert run() == run()


def test_rarest_first_after_random_start() -> None:
    n = 10
    p = picker(n, have=range(4), random_first=4)
    p.add_peer("a", Bitfield.full(n))
    p.add_peer("b", bf(n, [4, 5, 6, 7, 8]))
    p.add_peer("c", bf(n, [4, 5, 6, 7]))
    # Availability: 4-7 -> 3, 8 -> 2, 9 -> 1.
    assert p.pick("a") == 9
    assert p.pick("a") == 8
    assert p.pick("a") in {4, 5, 6, 7}


def test_rarest_first_ties_are_random() -> None:
    seen = set()
    for seed in range(20):
        p = picker(20, seed=seed, random_first=0)
        p.add_peer("a", Bitfield.full(20))
        p.add_peer("b", bf(20, range(10)))
        seen.add(p.pick("a"))
    assert seen <= set(range(10, 20))
    assert len(seen) > 3


def test_random_first_zero_goes_straight_to_rarest() -> None:
    p = picker(3, random_first=0)
    p.add_peer("a", Bitfield.full(3))
    p.add_peer("b", bf(3, [0, 1]))
    assert p.pick("a") == 2


def test_never_picks_what_we_have_or_peer_lacks() -> None:
    p = picker(8, have=[0, 1, 2])
    p.add_peer("a", bf(8, [0, 1, 2, 5]))
    assert p.pick("a") == 5
    assert p.pick("a") is None
    assert p.pick("nobody") is None


def test_piece_in_flight_to_one_peer_only() -> None:
    p = picker(4, random_first=0)
    p.add_peer("a", Bitfield.full(4))
    p.add_peer("b", Bitfield.full(4))
    picked = [p.pick("a"), p.pick("b"), p.pick("a"), p.pick("b")]
    assert sorted(i for i in picked if i is not None) == [0, 1, 2, 3]
    assert p.in_flight("a") | p.in_flight("b") == {0, 1, 2, 3}
    assert not p.in_flight("a") & p.in_flight("b")


def test_peer_has_makes_piece_pickable() -> None:
    p = picker(4, random_first=0)
    p.add_peer("a", Bitfield(4))
    assert p.pick("a") is None
    p.peer_has("a", 2)
    p.peer_has("a", 2)  # repeated HAVE does not inflate availability
    p.peer_has("ghost", 1)  # unknown peer: ignored
    assert p.pick("a") == 2
    assert p.unavailable() == [0, 1, 3]


def test_add_peer_replaces_bitfield() -> None:
    p = picker(4, random_first=0)
    p.add_peer("a", bf(4, [0, 1]))
    p.add_peer("a", bf(4, [3]))
    assert p.unavailable() == [0, 1, 2]
    assert p.pick("a") == 3
    with pytest.raises(ValueError):
        p.add_peer("b", Bitfield(5))


def test_remove_peer_requeues_its_pieces() -> None:
    p = picker(3, random_first=0)
    p.add_peer("a", Bitfield.full(3))
    p.add_peer("b", Bitfield.full(3))
    taken = {p.pick("a"), p.pick("a")}
    assert p.remove_peer("a") == sorted(i for i in taken if i is not None)
    assert p.in_flight("a") == set()
    got = {p.pick("b") for _ in range(3)}
    assert got == {0, 1, 2}
    assert p.remove_peer("a") == []
    p.remove_peer("b")
    assert p.unavailable() == [0, 1, 2]


def test_failed_moves_piece_to_another_peer() -> None:
    p = picker(2, random_first=0)
    p.add_peer("a", Bitfield.full(2))
    p.add_peer("b", bf(2, [0]))
    assert p.pick("a") == 1  # rarest
    assert p.pick("a") == 0
    p.failed("a", 0)
    assert p.in_flight("a") == {1}
    # "a" sent 0 bad, "b" also has it: "a" is not asked again, "b" is.
    assert p.pick("a") is None
    assert p.pick("b") == 0


def test_failed_falls_back_to_sole_source() -> None:
    p = picker(2, random_first=0)
    p.add_peer("a", Bitfield.full(2))
    p.add_peer("b", bf(2, [1]))
    assert p.pick("a") == 0
    p.failed("a", 0)
    assert p.pick("a") == 0


def test_failed_sources_only_then_fallback() -> None:
    p = picker(1, random_first=0)
    p.add_peer("a", Bitfield.full(1))
    p.add_peer("b", Bitfield.full(1))
    assert p.pick("a") == 0
    p.failed("a", 0)
    assert p.pick("a") is None
    assert p.pick("b") == 0
    p.failed("b", 0)
    # Both sources have failed it: nobody better exists, so either may retry.
    assert p.pick("a") == 0


def test_endgame_duplicates_and_received_returns_cancels() -> None:
    p = picker(3, random_first=0, endgame_dup=2)
    p.add_peer("slow", Bitfield.full(3))
    p.add_peer("fast", Bitfield.full(3))
    for _ in range(3):
        assert p.pick("slow") is not None
    assert p.in_flight("slow") == {0, 1, 2}
    # Everything missing is in flight: the other peer may duplicate it.
    dup = {p.pick("fast") for _ in range(3)}
    assert dup == {0, 1, 2}
    # Not to the same peer twice, and not more than endgame_dup requests per piece.
    assert p.pick("fast") is None
    p.add_peer("third", Bitfield.full(3))
    assert p.pick("third") is None
    assert p.received("fast", 1) == ["slow"]
    assert p.in_flight("slow") == {0, 2}
    assert p.in_flight("fast") == {0, 2}
    assert p.received("slow", 0) == ["fast"]
    assert p.received("slow", 2) == ["fast"]
    assert p.in_flight("slow") == p.in_flight("fast") == set()
    assert p.done


def test_no_endgame_while_unrequested_pieces_remain() -> None:
    p = picker(3, random_first=0)
    p.add_peer("a", bf(3, [0]))
    p.add_peer("b", bf(3, [1, 2]))
    assert p.pick("a") == 0
    # Piece 1 and 2 are still unrequested (only "b" has them): no duplicate of 0.
    p.add_peer("c", bf(3, [0]))
    assert p.pick("c") is None
    assert p.pick("b") in {1, 2}
    assert p.pick("b") in {1, 2}
    assert p.pick("c") == 0


def test_endgame_dup_one_disables_duplicates() -> None:
    p = picker(1, endgame_dup=1)
    p.add_peer("a", Bitfield.full(1))
    p.add_peer("b", Bitfield.full(1))
    assert p.pick("a") == 0
    assert p.pick("b") is None


def test_done_and_unavailable() -> None:
    p = picker(4, have=[0])
    assert not p.done
    assert p.unavailable() == [1, 2, 3]
    p.add_peer("a", bf(4, [1, 2]))
    assert p.unavailable() == [3]
    for i in (1, 2, 3):
        p.received("a", i)
    assert p.done
    assert p.have == Bitfield.full(4)
    assert p.unavailable() == []
    assert picker(0).done


def test_have_is_a_copy() -> None:
    p = picker(2)
    p.have.add(0)
    assert 0 not in p.have


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Picker(3, Bitfield(2), random.Random(0))
    with pytest.raises(ValueError):
        picker(3, endgame_dup=0)
    p = picker(3)
    with pytest.raises(IndexError):
        p.received("a", 3)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["pick", "pick", "pick", "received", "failed", "remove", "add", "has"]),
        st.integers(0, 3),  # peer
        st.integers(0, 1000),  # piece (modulo n)
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 24),
    seed=st.integers(0, 2**32),
    masks=st.lists(st.integers(0, 2**24 - 1), min_size=4, max_size=4),
    have_mask=st.integers(0, 2**24 - 1),
    dup=st.integers(1, 3),
    ops=OPS,
)
def test_invariants_under_random_operations(
    n: int,
    seed: int,
    masks: list[int],
    have_mask: int,
    dup: int,
    ops: list[tuple[str, int, int]],
) -> None:
    full = (1 << n) - 1
    have = Bitfield.from_int(n, have_mask & full)
    p = Picker(n, have, random.Random(seed), random_first=2, endgame_dup=dup)
    peers = [f"p{k}" for k in range(4)]
    known: dict[str, set[int]] = {}
    got = set(have)
    flight: dict[str, set[int]] = {}
    for k, peer in enumerate(peers[:3]):
        known[peer] = set(Bitfield.from_int(n, masks[k] & full))
        p.add_peer(peer, Bitfield.from_int(n, masks[k] & full))

    for op, k, raw in ops:
        peer = peers[k]
        index = raw % n
        if op == "pick":
            i = p.pick(peer)
            if i is None:
                continue
            assert peer in known, "picked for an unknown peer"
            assert i in known[peer], "asked a peer for a piece it lacks"
            assert i not in got, "asked for a piece we have"
            assert i not in flight.get(peer, set()), "same piece twice to one peer"
            holders = [q for q, s in flight.items() if i in s]
            assert len(holders) < dup
            if holders:
                # Duplicates only in endgame: every available missing piece in flight.
                available = set().union(*known.values()) - got
                in_flight = set().union(*flight.values())
                assert available <= in_flight | {i}
            flight.setdefault(peer, set()).add(i)
        elif op == "received":
            others = p.received(peer, index)
            expected = sorted(q for q, s in flight.items() if index in s and q != peer)
            assert others == expected
            got.add(index)
            for s in flight.values():
                s.discard(index)
        elif op == "failed":
            p.failed(peer, index)
            flight.get(peer, set()).discard(index)
        elif op == "remove":
            back = p.remove_peer(peer)
            if peer in known:
                assert back == sorted(flight.get(peer, set()))
            else:
                assert back == []
            known.pop(peer, None)
            flight.pop(peer, None)
        elif op == "add":
            members = set(Bitfield.from_int(n, masks[(k + raw) % 4] & full))
            known[peer] = members
            p.add_peer(peer, Bitfield.from_int(n, masks[(k + raw) % 4] & full))
        elif op == "has":
            p.peer_has(peer, index)
            if peer in known:
                known[peer].add(index)

        for q in peers:
            assert p.in_flight(q) == flight.get(q, set())
        assert set(p.have) == got
        assert p.done == (len(got) == n)
        available = set().union(*known.values()) if known else set()
        assert p.unavailable() == sorted(set(range(n)) - got - available)


def test_progress_always_possible() -> None:
    """With every piece held by someone, repeated picks and receipts finish."""
    rng = random.Random(1)
    n = 300
    p = Picker(n, Bitfield(n), random.Random(2))
    for k in range(5):
        p.add_peer(f"p{k}", Bitfield.from_int(n, rng.getrandbits(n)))
    p.add_peer("seed", Bitfield.full(n))
    for _ in range(10 * n):
        if p.done:
            break
        peer = rng.choice([f"p{k}" for k in range(5)] + ["seed"])
        i = p.pick(peer)
        if i is not None:
            p.received(peer, i)
    assert p.done


def test_pick_is_fast_for_2048_pieces() -> None:
    n = 2048
    rng = random.Random(3)
    p = Picker(n, Bitfield(n), random.Random(4))
    peers = [f"p{k}" for k in range(30)]
    for peer in peers:
        p.add_peer(peer, Bitfield.from_int(n, rng.getrandbits(n)))
    start = time.perf_counter()
    picks = 0
    for round_ in range(4000):
        peer = peers[round_ % len(peers)]
        i = p.pick(peer)
        if i is not None:
            picks += 1
            if round_ % 3:
                p.received(peer, i)
            else:
                p.failed(peer, i)
    elapsed = time.perf_counter() - start
    assert picks > 1000
    # Generous bound; it runs around 20x faster on a laptop.
    assert elapsed < 2.0


# -- Trust ---------------------------------------------------------------------


def test_trust_scoring_and_ban() -> None:
    t = Trust()
    assert not t.banned("a")
    for _ in range(3):
        t.bad("a")
    assert t.score("a") == -6 and not t.banned("a")
    t.good("a")
    t.bad("a")
    assert t.score("a") == -7 and t.banned("a")


def test_trust_good_offsets_bad() -> None:
    t = Trust()
    for _ in range(10):
        t.good("a")
    for _ in range(8):
        t.bad("a")
    assert t.score("a") == -6
    assert not t.banned("a")


def test_trust_sole_source_bans_at_once() -> None:
    t = Trust()
    for _ in range(100):
        t.good("a")
    t.bad("a", sole_source=True)
    assert t.banned("a")
    assert not t.banned("b")


def test_rarest_ties_are_drawn_from_the_lowest_pieces() -> None:
    n = 4 * TIE_WINDOW
    have = Bitfield(n)
    for i in range(8):  # past the random start
        have.add(i)
    firsts: set[int] = set()
    for seed in range(20):
        picker = Picker(n, have.copy(), random.Random(seed))
        picker.add_peer("p", Bitfield.full(n))
        requested: set[int] = set()
        for k in range(TIE_WINDOW):
            window = sorted(set(range(8, n)) - requested)[:TIE_WINDOW]
            index = picker.pick("p")
            assert index in window
            requested.add(index)
            if k == 0:
                firsts.add(index)
    assert len(firsts) > 5  # still random within the window


def test_random_start_counts_pieces_in_flight() -> None:
    # A pipeline filled before any piece arrives must not be all random picks.
    n = 1024
    p = picker(n, seed=3, random_first=4)
    p.add_peer("p", Bitfield.full(n))
    picks = [p.pick("p") for _ in range(40)]
    assert all(i is not None for i in picks)
    assert all(i is not None and i < 40 + TIE_WINDOW for i in picks[4:])


@pytest.mark.parametrize("seed", range(5))
def test_pieces_arrive_close_to_file_order(seed: int) -> None:
    # The whole-file SHA1 hashes pieces from memory only while they arrive near
    # the lowest missing one: with one peer and 32 requests in flight, no piece
    # past the random start is picked far ahead of the lowest missing piece.
    n = 2048
    p = picker(n, seed=seed, random_first=4)
    p.add_peer("p", Bitfield.full(n))
    in_flight: list[int] = []
    missing = set(range(n))
    leads = []
    while not p.done:
        while len(in_flight) < 32 and (i := p.pick("p")) is not None:
            in_flight.append(i)
            leads.append(i - min(missing))
        index = in_flight.pop(0)
        p.received("p", index)
        missing.discard(index)
    assert max(leads[4:]) < 128


def test_withdrawn_request_is_requestable_again_without_blame() -> None:
    p = picker(2, random_first=0)
    p.add_peer("a", Bitfield.full(2))
    p.add_peer("b", Bitfield.full(2))
    first = p.pick("a")
    assert first is not None
    p.withdrawn("a", first)
    assert p.in_flight("a") == set()
    # Not blamed: "a" may be asked for it again, unlike after failed().
    assert {p.pick("a"), p.pick("a")} == {0, 1}


def test_a_piece_being_verified_is_asked_of_nobody_else() -> None:
    # Endgame: both pieces in flight to "a"; piece 0 arrives and is being verified.
    p = picker(2, random_first=0, endgame_dup=2)
    p.add_peer("a", Bitfield.full(2))
    p.add_peer("b", Bitfield.full(2))
    assert {p.pick("a"), p.pick("a")} == {0, 1}
    p.arrived("a", 0)
    assert p.pick("b") == 1  # the endgame duplicates only the piece still out
    assert p.pick("b") is None
    p.remove_peer("a")  # its copy is still being verified: not requestable
    assert p.pick("b") is None
    assert p.unavailable() == []
    assert p.received("a", 0) == []
    assert not p.done


def test_a_verified_copy_that_fails_makes_the_piece_requestable_again() -> None:
    p = picker(1, random_first=0)
    p.add_peer("a", Bitfield.full(1))
    p.add_peer("b", Bitfield.full(1))
    assert p.pick("a") == 0
    p.arrived("a", 0)
    assert p.pick("b") is None
    p.failed("b", 0)  # someone else's refusal does not end the verification
    assert p.pick("b") is None
    p.failed("a", 0)  # the copy from "a" was bad
    assert p.pick("b") == 0


def test_rarest_first_looks_only_at_the_lowest_pieces_a_peer_can_give() -> None:
    n = 512
    p = picker(n, have=range(8), random_first=0)  # past the random start
    p.add_peer("a", Bitfield.full(n))
    p.add_peer("b", bf(n, list(range(8, 20)) + list(range(40, 300))))  # 20..39 and 300.. rare
    requested: set[int] = set()
    for _ in range(60):
        window = sorted(set(range(8, n)) - requested)[:WINDOW]
        index = p.pick("a")
        assert index is not None
        # Rare pieces first, but only among the lowest the peer can give: never the
        # rare ones far ahead, which would leave the common ones for the end.
        assert index in window and index < 300
        requested.add(index)
    assert set(range(20, 40)) <= requested  # the rare ones in the window went first


def test_which_peers_and_bitfields_have_a_piece_we_lack() -> None:
    """What a download's links are kept or dropped by (peers.download.plan_links)."""
    p = picker(4, have=[0])
    p.add_peer("only-ours", bf(4, [0]))
    p.add_peer("more", bf(4, [0, 1]))
    assert not p.wanted_from("only-ours") and p.wanted_from("more")
    assert not p.wanted_from("unknown")
    assert not p.lacks_any(bf(4, [0])) and p.lacks_any(bf(4, [0, 3]))
    assert p.pick("more") == 1
    p.arrived("more", 1)
    p.received("more", 1)
    assert not p.wanted_from("more")  # what it had for us came
