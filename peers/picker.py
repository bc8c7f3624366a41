"""Which piece to ask which peer for next, and how much to trust each peer.

Pure logic: no I/O, no clock, randomness only through an injected ``random.Random``.

Piece sets are Python ints used as bit sets (bit i = piece i), so the set
algebra of a pick (missing, not in flight, held by this peer, rarest) runs in C
over n/64 machine words instead of a Python loop over n pieces.
"""

from __future__ import annotations

import random

from p2p.pieces import Bitfield, iter_set_bits

__all__ = ["Picker", "Trust"]

# Rarest-first ties are drawn from this many lowest-numbered pieces.  Small, so no
# piece lingers far behind the others (each pick takes a given one with odds
# 1/TIE_WINDOW): pieces then arrive close to file order, which the whole-file
# SHA1 needs to hash them from memory instead of reading them back.
TIE_WINDOW = 8
# Rarest first looks only at the WINDOW lowest-numbered pieces a peer can give us:
# a piece common among peers would otherwise wait until the end, and the whole-file
# SHA1, which goes in file order, would wait with it and then have to read back
# every piece that came meanwhile.
WINDOW = 48


def _nth_set_bit(value: int, n: int) -> int:
    """Position of the n-th (0-based, lowest first) set bit of ``value``."""
    # Binary search on popcounts of prefixes: O(log bits) big-int operations,
    # so choosing at random among candidates never lists them.
    lo, hi = 0, value.bit_length()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (value & ((1 << mid) - 1)).bit_count() > n:
            hi = mid
        else:
            lo = mid
    return lo


class Picker:
    """Piece selection for one download.

    A few random pieces first (something to trade quickly), then rarest first among
    the ``WINDOW`` lowest-numbered pieces the peer can give us, with random ties
    among the lowest-numbered ``TIE_WINDOW``; a piece is in flight to one peer at
    a time, except in endgame, when every missing piece that any peer has is
    already requested: then a piece may be requested from up to
    ``endgame_dup`` peers, and ``received`` names the others to cancel.
    """

    def __init__(
        self,
        num_pieces: int,
        have: Bitfield,
        rng: random.Random,
        random_first: int = 4,
        endgame_dup: int = 2,
    ) -> None:
        if num_pieces < 0:
            raise ValueError(f"num_pieces must not be negative, got {num_pieces}")
        if len(have) != num_pieces:
            raise ValueError(f"have has {len(have)} pieces, expected {num_pieces}")
        if random_first < 0:
            raise ValueError("random_first must not be negative")
        if endgame_dup < 1:
            raise ValueError("endgame_dup must be at least 1")
        self._n = num_pieces
        self._rng = rng
        self._random_first = random_first
        self._endgame_dup = endgame_dup
        self._have = have.copy()
        self._missing = ((1 << num_pieces) - 1) & ~have.to_int()
        self._peers: dict[str, int] = {}
        # _avail[i] = number of connected peers having piece i, and
        # _levels[k] = pieces whose availability is k, so the rarest candidates
        # are one AND per level away.
        self._avail = [0] * num_pieces
        self._levels: list[int] = [(1 << num_pieces) - 1]
        self._requesters: dict[int, set[str]] = {}  # piece -> peers it is in flight to
        self._inflight = 0  # pieces in flight to at least one peer
        self._saturated = 0  # pieces in flight to endgame_dup peers
        self._arrived = 0  # pieces whose copy is being verified: asked of nobody meanwhile
        self._arrived_from: dict[int, str] = {}
        self._peer_inflight: dict[str, int] = {}
        self._failed: dict[int, set[str]] = {}  # piece -> peers that sent it bad
        self._peer_failed: dict[str, int] = {}

    # -- peers ---------------------------------------------------------------

    def _bump(self, index: int, delta: int) -> None:
        bit = 1 << index
        k = self._avail[index]
        self._levels[k] &= ~bit
        k += delta
        self._avail[index] = k
        if k == len(self._levels):
            self._levels.append(0)
        self._levels[k] |= bit

    def add_peer(self, peer: str, bitfield: Bitfield) -> None:
        """Record a peer's pieces, replacing what was known of it."""
        if len(bitfield) != self._n:
            raise ValueError(f"bitfield has {len(bitfield)} pieces, expected {self._n}")
        old = self._peers.get(peer, 0)
        new = bitfield.to_int()
        # Only the difference moves availability: a re-sent bitfield is cheap.
        for i in iter_set_bits(old & ~new):
            self._bump(i, -1)
        for i in iter_set_bits(new & ~old):
            self._bump(i, +1)
        self._peers[peer] = new
        self._peer_inflight.setdefault(peer, 0)

    def peer_has(self, peer: str, index: int) -> None:
        """A HAVE announcement; ignored for a peer not (or no longer) known."""
        self._check(index)
        bits = self._peers.get(peer)
        if bits is None or bits >> index & 1:
            return
        self._peers[peer] = bits | 1 << index
        self._bump(index, +1)

    def peer_lacks(self, peer: str, index: int) -> None:
        """The peer cannot serve ``index`` after all (it refused it); a later HAVE
        restores it.  Ignored for a peer not (or no longer) known."""
        self._check(index)
        bits = self._peers.get(peer)
        if bits is None or not bits >> index & 1:
            return
        self._peers[peer] = bits & ~(1 << index)
        self._bump(index, -1)

    def remove_peer(self, peer: str) -> list[int]:
        """Forget a peer; returns the pieces that were in flight to it (ascending).

        Those pieces are requestable again (unless still in flight to another
        peer in endgame).
        """
        bits = self._peers.pop(peer, None)
        if bits is None:
            return []
        for i in iter_set_bits(bits):
            self._bump(i, -1)
        pieces = list(iter_set_bits(self._peer_inflight.pop(peer, 0)))
        for i in pieces:
            self._unrequest(peer, i)
        # Failure records stay: a peer that comes back is still not preferred
        # for a piece it already sent bad.
        return pieces

    # -- picking -------------------------------------------------------------

    def _avoided(self, peer: str, candidates: int) -> int:
        """Candidates this peer sent bad while another untainted source is connected."""
        avoided = 0
        for i in iter_set_bits(self._peer_failed.get(peer, 0) & candidates):
            failed = self._failed.get(i, set())
            bit = 1 << i
            if any(q not in failed and bits & bit for q, bits in self._peers.items()):
                avoided |= bit
        return avoided

    def _random_bit(self, value: int) -> int:
        return _nth_set_bit(value, self._rng.randrange(value.bit_count()))

    def _random_low_bit(self, value: int) -> int:
        """A random one of the ``TIE_WINDOW`` lowest set bits of ``value``.

        Ties among the rarest pieces are broken at random (downloaders of one
        seeder still fetch different pieces), but near the front of the file, so
        pieces arrive almost in order and the whole-file SHA1 keeps pace.
        """
        return _nth_set_bit(value, self._rng.randrange(min(value.bit_count(), TIE_WINDOW)))

    def pick(self, peer: str) -> int | None:
        """Next piece to request from ``peer``, now marked in flight to it.

        None when the peer has nothing useful (or is unknown).
        """
        bits = self._peers.get(peer)
        if bits is None:
            return None
        pending = self._missing & ~self._inflight & ~self._arrived
        candidates = pending & bits
        if candidates:
            candidates &= ~self._avoided(peer, candidates)
        if candidates:
            # Counting pieces in flight too: a deep pipeline must not turn a few
            # random picks into dozens before the first piece arrives.
            started = self._have.count() + len(self._requesters) + self._arrived.bit_count()
            if started < self._random_first:
                index = self._random_bit(candidates)
            else:
                pool = candidates
                if pool.bit_count() > WINDOW:
                    pool &= (1 << _nth_set_bit(pool, WINDOW)) - 1
                index = -1
                for level in self._levels[1:]:
                    rarest = pool & level
                    if rarest:
                        index = self._random_low_bit(rarest)
                        break
            self._request(peer, index)
            return index
        # Endgame only once no available missing piece is left unrequested; before
        # that, duplicating would just waste bandwidth on pieces already coming.
        if pending & ~self._levels[0]:
            return None
        candidates = (
            self._missing
            & self._inflight
            & ~self._arrived
            & bits
            & ~self._saturated
            & ~self._peer_inflight.get(peer, 0)
        )
        if candidates:
            candidates &= ~self._avoided(peer, candidates)
        if not candidates:
            return None
        index = self._random_bit(candidates)
        self._request(peer, index)
        return index

    def _request(self, peer: str, index: int) -> None:
        bit = 1 << index
        requesters = self._requesters.setdefault(index, set())
        requesters.add(peer)
        self._inflight |= bit
        if len(requesters) >= self._endgame_dup:
            self._saturated |= bit
        self._peer_inflight[peer] = self._peer_inflight.get(peer, 0) | bit

    def _unrequest(self, peer: str, index: int) -> None:
        bit = 1 << index
        if peer in self._peer_inflight:
            self._peer_inflight[peer] &= ~bit
        requesters = self._requesters.get(index)
        if requesters is None:
            return
        requesters.discard(peer)
        if len(requesters) < self._endgame_dup:
            self._saturated &= ~bit
        if not requesters:
            del self._requesters[index]
            self._inflight &= ~bit

    # -- outcomes ------------------------------------------------------------

    def arrived(self, peer: str, index: int) -> None:
        """A copy of ``index`` came from ``peer`` and is being verified: no longer in
        flight to it, and asked of no other peer until ``received`` or ``failed``
        (even if ``peer`` is removed meanwhile)."""
        self._check(index)
        self._unrequest(peer, index)
        self._arrived |= 1 << index
        self._arrived_from[index] = peer

    def received(self, peer: str, index: int) -> list[str]:
        """Piece verified and stored; returns the other peers it is still in
        flight to (sorted), whose requests should be cancelled."""
        self._check(index)
        self._arrived &= ~(1 << index)
        self._arrived_from.pop(index, None)
        others = sorted(self._requesters.get(index, set()) - {peer})
        for q in [peer, *others]:
            self._unrequest(q, index)
        self._have.add(index)
        self._missing &= ~(1 << index)
        for q in self._failed.pop(index, set()):
            if q in self._peer_failed:
                self._peer_failed[q] &= ~(1 << index)
        return others

    def withdrawn(self, peer: str, index: int) -> None:
        """The request for ``index`` to ``peer`` ended without blame (its copy was
        not needed after all): no longer in flight to that peer."""
        self._check(index)
        self._unrequest(peer, index)

    def failed(self, peer: str, index: int) -> None:
        """The piece from ``peer`` was bad or did not come: requestable again,
        preferably from another peer."""
        self._check(index)
        self._unrequest(peer, index)
        if self._arrived_from.get(index) == peer:  # its copy was the one being verified
            del self._arrived_from[index]
            self._arrived &= ~(1 << index)
        if index in self._have:
            return
        self._failed.setdefault(index, set()).add(peer)
        self._peer_failed[peer] = self._peer_failed.get(peer, 0) | 1 << index

    # -- queries -------------------------------------------------------------

    def in_flight(self, peer: str) -> set[int]:
        """Pieces currently requested from ``peer``."""
        return set(iter_set_bits(self._peer_inflight.get(peer, 0)))

    def wanted_from(self, peer: str) -> bool:
        """Whether ``peer`` has a piece we still lack (False for an unknown peer)."""
        return bool(self._peers.get(peer, 0) & self._missing)

    def lacks_any(self, pieces: Bitfield) -> bool:
        """Whether ``pieces`` holds a piece we still lack."""
        return bool(pieces.to_int() & self._missing)

    def unavailable(self) -> list[int]:
        """Missing pieces that no connected peer has, ascending."""
        return list(iter_set_bits(self._missing & self._levels[0] & ~self._arrived))

    @property
    def done(self) -> bool:
        """True when every piece is present."""
        return self._missing == 0

    @property
    def have(self) -> Bitfield:
        """A copy of the pieces we have."""
        return self._have.copy()

    def _check(self, index: int) -> None:
        if not 0 <= index < self._n:
            raise IndexError(f"piece {index} out of range for {self._n} pieces")


class Trust:
    """Per-peer trust, libtorrent-like: +1 per good piece, -2 per bad one,
    banned at -7, or at once for a bad piece nobody else could have sent."""

    BAN_SCORE = -7

    def __init__(self) -> None:
        self._scores: dict[str, int] = {}
        self._banned: set[str] = set()

    def good(self, peer: str) -> None:
        """A piece from ``peer`` verified."""
        self._scores[peer] = self._scores.get(peer, 0) + 1

    def bad(self, peer: str, sole_source: bool = False) -> None:
        """A piece from ``peer`` failed verification."""
        self._scores[peer] = self._scores.get(peer, 0) - 2
        if sole_source:
            # With no other source, the bad data cannot be blamed on anyone else.
            self._banned.add(peer)

    def score(self, peer: str) -> int:
        """Current score (0 for an unknown peer)."""
        return self._scores.get(peer, 0)

    def banned(self, peer: str) -> bool:
        """True once the peer is no longer to be used."""
        return peer in self._banned or self._scores.get(peer, 0) <= self.BAN_SCORE
