"""Peer <-> peer messages: round trips, and garbage only ever becomes LocalError."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p import codec
from p2p.errors import LocalError
from p2p.messages import piece as msg

pytestmark = pytest.mark.timeout(60)

SHA1 = "ab" * 20

# Anything msgpack can carry: the shapes a hostile peer can send us.
_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=20))
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_kinds = st.sampled_from(["hello", "get", "cancel", "piece", "bitfield", "have", "refused",
                          "bogus"])
_keys = st.sampled_from(["t", "group", "name", "sha1", "user", "ticket", "index", "bits",
                         "code", "error"])
# Maps that look almost right: a known "t" and known keys holding arbitrary values.
_near_miss = st.builds(
    lambda kind, fields: {"t": kind, **fields},
    _kinds,
    st.dictionaries(_keys.filter(lambda k: k != "t"), _values, max_size=8),
)


def _only_local_error(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except LocalError as exc:
        assert exc.code == "bad_request", exc.code


# --- round trips --------------------------------------------------------------------------

def test_hello_round_trips() -> None:
    hello = msg.Hello("g1", "file.bin", SHA1, "alice", "t" * 64)
    assert msg.parse_request(codec.encode(hello.to_wire())) == hello


def test_get_round_trips() -> None:
    get = msg.Get("g1", "file.bin", 7)
    assert msg.parse_request(codec.encode(get.to_wire())) == get


def test_cancel_round_trips() -> None:
    cancel = msg.Cancel("g1", "file.bin", 7)
    assert msg.parse_request(codec.encode(cancel.to_wire())) == cancel
    assert cancel != msg.Get("g1", "file.bin", 7)


def test_replies_round_trip() -> None:
    assert msg.parse_reply(msg.bitfield_frame("f", b"\xff\x80")) == msg.Have("f", bits=b"\xff\x80")
    assert msg.parse_reply(msg.have_frame("f", [3, 5])) == msg.Have("f", indices=(3, 5))
    piece = msg.parse_reply([msg.piece_frames("f", 2), b"data"])
    assert isinstance(piece, msg.Piece) and (piece.name, piece.index) == ("f", 2)
    assert bytes(piece.data) == b"data"
    refused = msg.parse_reply(msg.refused_frame("f", "not_member", "go away"))
    assert refused == msg.Refused("f", "not_member", "go away", None)
    assert msg.parse_reply(msg.refused_frame("f", "bad_piece", "no", 4)) == msg.Refused(
        "f", "bad_piece", "no", 4)


# --- what must be refused -----------------------------------------------------------------

@pytest.mark.parametrize("wire", [
    {"t": "get", "group": "g1", "name": "f", "index": -1},
    {"t": "get", "group": "g1", "name": "f", "index": True},
    {"t": "get", "group": "g1", "name": "f", "index": 1.0},
    {"t": "get", "group": "g1", "name": "../f", "index": 0},
    {"t": "get", "group": "g1", "name": "..", "index": 0},
    {"t": "get", "group": "g/1", "name": "f", "index": 0},
    {"t": "cancel", "group": "g1", "name": "f", "index": -1},
    {"t": "cancel", "group": "g1", "name": "f", "index": None},
    {"t": "cancel", "group": "g1", "name": "../f", "index": 0},
    {"t": "cancel", "name": "f", "index": 0},
    {"t": "hello", "group": "g1", "name": "f", "sha1": SHA1, "user": "a b", "ticket": "x"},
    {"t": "hello", "group": "g1", "name": "f", "sha1": SHA1, "user": "alice", "ticket": 5},
    {"t": "hello", "group": "g1", "name": "f", "sha1": None, "user": "alice", "ticket": "x"},
    {"t": "nope", "group": "g1", "name": "f"},
    {"group": "g1", "name": "f", "index": 0},
    [1, 2, 3],
    "hello",
])
def test_bad_requests_are_refused(wire: Any) -> None:
    with pytest.raises(LocalError) as err:
        msg.parse_request(codec.encode(wire))
    assert err.value.code == "bad_request"


def test_oversized_request_is_refused() -> None:
    big = codec.encode({"t": "get", "group": "g1", "name": "f", "index": 0,
                        "pad": "x" * msg.MAX_REQUEST})
    with pytest.raises(LocalError):
        msg.parse_request(big)


@pytest.mark.parametrize("frames", [
    [],
    [codec.encode({"t": "piece", "name": "f", "index": 0})],  # no data frame
    [codec.encode({"t": "piece", "name": "f", "index": 0}), b"a", b"b"],
    [codec.encode({"t": "piece", "name": "f", "index": -3}), b"a"],
    [codec.encode({"t": "have", "name": "f", "index": 3})],  # the list is "indices"
    [codec.encode({"t": "have", "name": "f", "indices": 3})],
    [codec.encode({"t": "have", "name": "f", "indices": [1, False]})],
    [codec.encode({"t": "have", "name": "f", "indices": [1, -2]})],
    [codec.encode({"t": "have", "name": "f", "indices": ["1"]})],
    [codec.encode({"t": "bitfield", "name": "f", "bits": "not bytes"})],
    [codec.encode({"t": "refused", "name": "f", "code": 3, "error": "x"})],
    [codec.encode({"t": "hello", "name": "f"})],
    [codec.encode(["t", "piece"])],
    [b"\xc1"],
])
def test_bad_replies_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(LocalError) as err:
        msg.parse_reply(frames)
    assert err.value.code == "bad_request"


# --- garbage ------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_request_bytes_garbage(frame: bytes) -> None:
    _only_local_error(msg.parse_request, frame)


@settings(max_examples=300, deadline=None)
@given(_values | _near_miss)
def test_request_structured_garbage(obj: Any) -> None:
    _only_local_error(msg.parse_request, codec.encode(obj))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=100), max_size=4))
def test_reply_bytes_garbage(frames: list[bytes]) -> None:
    _only_local_error(msg.parse_reply, frames)


@settings(max_examples=300, deadline=None)
@given(_values | _near_miss, st.lists(st.binary(max_size=10), max_size=2))
def test_reply_structured_garbage(obj: Any, rest: list[bytes]) -> None:
    _only_local_error(msg.parse_reply, [codec.encode(obj), *rest])


@settings(max_examples=200, deadline=None)
@given(_near_miss)
def test_parsed_fields_are_valid(obj: dict[str, Any]) -> None:
    """Whatever parses has well-typed fields a loop can use without more checks."""
    try:
        request = msg.parse_request(codec.encode(obj))
    except LocalError:
        return
    assert isinstance(request.group, str) and isinstance(request.name, str)
    assert "/" not in request.name and request.name not in (".", "..")
    if isinstance(request, msg.Get | msg.Cancel):
        assert type(request.index) is int and request.index >= 0
    else:
        assert isinstance(request.ticket, str) and isinstance(request.user, str)


def test_the_largest_have_message_fits_a_reply() -> None:
    # However many pieces a peer announces at once, each message stays parseable.
    name = "n" * 255
    indices = [2**32 - 1] * msg.MAX_HAVE_INDICES
    assert msg.parse_reply(msg.have_frame(name, indices)) == msg.Have(name, indices=tuple(indices))
    with pytest.raises(ValueError):
        msg.have_frame(name, indices + [0])
