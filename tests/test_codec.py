"""The codec and the message classes against valid structures and garbage."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from p2p import codec
from p2p.errors import SHOWN_CHARS, LocalError, ProtocolError, RemoteError
from p2p.messages.sync import Event
from p2p.messages.tracker import Reply, Request, check_file_name, check_id

pytestmark = pytest.mark.timeout(30)

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = hst.one_of(
    hst.none(),
    hst.booleans(),
    hst.integers(-(2**63), 2**64 - 1),
    hst.floats(allow_nan=False),
    hst.text(max_size=20),
    hst.binary(max_size=20),
)
# What a decoded frame can hold: lists (never tuples) and maps with str keys.
values = hst.recursive(
    scalars,
    lambda inner: hst.one_of(
        hst.lists(inner, max_size=5),
        hst.dictionaries(hst.text(max_size=8), inner, max_size=5),
    ),
    max_leaves=12,
)
small_ints = hst.one_of(hst.integers(-3, 3), hst.integers(-(2**64), 2**64), hst.booleans())
# Objects shaped roughly like messages, so the validators see near misses too.
message_like = hst.one_of(
    values,
    hst.fixed_dictionaries(
        {},
        optional={
            "op": hst.one_of(hst.text(max_size=70), values),
            "cid": hst.one_of(hst.text(max_size=70), values),
            "rid": small_ints,
            "args": hst.one_of(hst.dictionaries(hst.text(max_size=5), values), values),
            "token": hst.one_of(hst.none(), hst.text(max_size=130), values),
            "ok": hst.one_of(hst.booleans(), values),
            "result": values,
            "code": hst.one_of(hst.text(max_size=10), values),
            "error": hst.one_of(hst.text(max_size=10), values),
        },
    ),
    hst.lists(hst.one_of(small_ints, hst.text(max_size=5), hst.dictionaries(
        hst.text(max_size=5), values, max_size=3)), min_size=6, max_size=8),
)


def expect_bad_request(fn: Any, *args: Any, **kwargs: Any) -> LocalError:
    with pytest.raises(LocalError) as info:
        fn(*args, **kwargs)
    assert info.value.code == "bad_request"
    assert str(info.value)
    return info.value


# --- codec ---------------------------------------------------------------------------

@FAST
@given(values)
def test_round_trip_of_valid_structures(obj: Any) -> None:
    assert codec.decode(codec.encode(obj)) == obj


@FAST
@given(values)
def test_decode_accepts_a_memoryview(obj: Any) -> None:
    assert codec.decode(memoryview(codec.encode(obj))) == obj


@FAST
@given(hst.binary(max_size=200))
def test_decode_of_random_bytes_returns_a_value_or_refuses(data: bytes) -> None:
    try:
        codec.decode(data)
    except LocalError as exc:
        assert exc.code == "bad_request"


@FAST
@given(values, hst.data())
def test_decode_of_damaged_frames_returns_a_value_or_refuses(obj: Any,
                                                            data: hst.DataObject) -> None:
    frame = bytearray(codec.encode(obj))
    cut = data.draw(hst.integers(0, len(frame)))
    flips = data.draw(hst.lists(hst.tuples(hst.integers(0, max(len(frame) - 1, 0)),
                                           hst.integers(0, 255)), max_size=4))
    for at, byte in flips:
        if frame:
            frame[at] = byte
    try:
        codec.decode(bytes(frame[:cut]))
    except LocalError as exc:
        assert exc.code == "bad_request"


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",  # never used
        b"\x92\x01",  # truncated array
        b"\xa3ab",  # truncated str
        b"\xa1\xff",  # invalid UTF-8
        b"\x01\x02",  # extra data after the value
        b"\xd4\x01\x00",  # ext type
        b"\xd6\xff\x00\x00\x00\x00",  # timestamp ext
        b"\x81\x01\x02",  # int map key
        b"\x81\xc0\x02",  # nil map key
        b"\x81\x90\x02",  # list map key
        b"\x91" * 100_000,  # nesting bomb
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
        b"\xdb\xff\xff\xff\xff",  # str claiming 4 GiB
        b"\xc6\x7f\xff\xff\xff",  # bin claiming 2 GiB
    ],
)
def test_decode_refuses_malformed_frames(frame: bytes) -> None:
    err = expect_bad_request(codec.decode, frame)
    assert err.message.startswith("malformed frame")


def test_oversized_frames_are_refused_before_parsing() -> None:
    err = expect_bad_request(codec.decode, b"\xc0" * (codec.MAX_FRAME + 1))
    assert "exceeds" in str(err)
    frame = codec.encode("x" * 100)
    assert codec.decode(frame, max_size=len(frame)) == "x" * 100
    expect_bad_request(codec.decode, frame, max_size=len(frame) - 1)


def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    frame = codec.encode(b"\x00" * (codec.MAX_FRAME - 5))
    assert len(frame) == codec.MAX_FRAME
    assert codec.decode(frame) == b"\x00" * (codec.MAX_FRAME - 5)


def test_too_many_items_are_refused() -> None:
    expect_bad_request(codec.decode, codec.encode([0] * (codec._MAX_ITEMS + 1)))
    assert len(codec.decode(codec.encode([0] * codec._MAX_ITEMS))) == codec._MAX_ITEMS


def test_bytes_and_str_stay_distinct() -> None:
    assert codec.decode(codec.encode([b"ab", "ab"])) == [b"ab", "ab"]


def test_tuples_come_back_as_lists() -> None:
    assert codec.decode(codec.encode((1, (2, 3)))) == [1, [2, 3]]


def test_error_hierarchy_carries_codes() -> None:
    assert issubclass(LocalError, ProtocolError) and issubclass(RemoteError, ProtocolError)
    assert ProtocolError("x").code == "bad_request"
    err = RemoteError("group g does not exist", "no_such_group")
    assert (err.code, err.message) == ("no_such_group", "group g does not exist")


# --- messages ----------------------------------------------------------------------------

requests = hst.builds(
    Request,
    op=hst.text(min_size=1, max_size=64),
    cid=hst.text(min_size=1, max_size=64),
    rid=hst.integers(0, 2**63 - 1),
    args=hst.dictionaries(hst.text(max_size=8), values, max_size=5),
    token=hst.one_of(hst.none(), hst.text(min_size=1, max_size=128)),
)
replies = hst.one_of(
    hst.builds(Reply, rid=hst.integers(-1, 2**63 - 1), ok=hst.just(True), result=values),
    hst.builds(Reply, rid=hst.integers(-1, 2**63 - 1), ok=hst.just(False),
               code=hst.text(max_size=20), error=hst.text(max_size=50)),
)
events = hst.builds(
    Event,
    origin=hst.integers(0, 2**63 - 1), seq=hst.integers(0, 2**63 - 1),
    ts=hst.integers(0, 2**63 - 1), cid=hst.text(max_size=64), rid=hst.integers(0, 2**63 - 1),
    type=hst.text(max_size=20),
    data=hst.dictionaries(hst.text(max_size=8), values, max_size=5),
)


@FAST
@given(requests)
def test_request_round_trip(req: Request) -> None:
    assert Request.from_wire(codec.decode(codec.encode(req.to_wire()))) == req


@FAST
@given(replies)
def test_reply_round_trip(reply: Reply) -> None:
    assert Reply.from_wire(codec.decode(codec.encode(reply.to_wire()))) == reply


@FAST
@given(events)
def test_event_round_trip(event: Event) -> None:
    assert Event.from_wire(codec.decode(codec.encode(event.to_wire()))) == event


@pytest.mark.parametrize("parse", [Request.from_wire, Reply.from_wire, Event.from_wire])
@FAST
@given(obj=message_like)
def test_from_wire_on_arbitrary_objects_succeeds_or_refuses(parse: Any, obj: Any) -> None:
    try:
        parse(obj)
    except LocalError as exc:
        assert exc.code == "bad_request"


@pytest.mark.parametrize("parse", [Request.from_wire, Reply.from_wire, Event.from_wire])
@FAST
@given(frame=hst.binary(max_size=100))
def test_decode_then_from_wire_on_garbage_only_refuses(parse: Any, frame: bytes) -> None:
    try:
        parse(codec.decode(frame))
    except LocalError as exc:
        assert exc.code == "bad_request"


GOOD_REQUEST = {"op": "ping", "cid": "c", "rid": 1, "args": {}, "token": "t"}


@pytest.mark.parametrize(
    "change",
    [
        {"op": None}, {"op": ""}, {"op": "x" * 65}, {"op": 3},
        {"cid": None}, {"cid": ""}, {"cid": "c" * 65}, {"cid": b"c"},
        {"rid": None}, {"rid": -1}, {"rid": True}, {"rid": 2**63}, {"rid": 1.0}, {"rid": "1"},
        {"args": None}, {"args": []}, {"args": "x"},
        {"token": ""}, {"token": 5}, {"token": "t" * 129}, {"token": b"t"},
    ],
)
def test_bad_requests_are_refused(change: dict[str, Any]) -> None:
    expect_bad_request(Request.from_wire, {**GOOD_REQUEST, **change})


@pytest.mark.parametrize("missing", ["op", "cid", "rid"])
def test_requests_missing_a_field_are_refused(missing: str) -> None:
    expect_bad_request(Request.from_wire,
                       {k: v for k, v in GOOD_REQUEST.items() if k != missing})


def test_request_defaults() -> None:
    req = Request.from_wire({"op": "ping", "cid": "c", "rid": 0})
    assert (req.args, req.token) == ({}, None)


@pytest.mark.parametrize(
    "obj",
    [None, [], "ok", {"ok": 1}, {"rid": 1}, {"ok": True, "rid": "1"},
     {"ok": False, "rid": 1, "code": "x"}, {"ok": False, "rid": 1, "error": "x"},
     {"ok": False, "rid": 1, "code": 1, "error": "x"}],
)
def test_bad_replies_are_refused(obj: Any) -> None:
    expect_bad_request(Reply.from_wire, obj)


def test_reply_failure_and_to_wire() -> None:
    reply = Reply.failure(4, "no_such_group", "group g does not exist")
    assert reply.to_wire() == {"rid": 4, "ok": False, "code": "no_such_group",
                               "error": "group g does not exist"}
    assert Reply(4, True, [1]).to_wire() == {"rid": 4, "ok": True, "result": [1]}


GOOD_EVENT = [1, 1, 1, "c", 1, "create_user", {"user": "u"}]


@pytest.mark.parametrize(
    ("at", "value"),
    [(0, -1), (0, True), (0, "1"), (1, None), (2, 1.5), (4, -1), (4, False),
     (3, 1), (5, None), (6, []), (6, None),
     # beyond sqlite's signed 64-bit integers, where the log keeps them
     (0, 2**63), (1, 2**63), (2, 2**63), (2, 2**64 - 1), (4, 2**64 - 1)],
)
def test_bad_events_are_refused(at: int, value: Any) -> None:
    wire = list(GOOD_EVENT)
    wire[at] = value
    expect_bad_request(Event.from_wire, wire)


@pytest.mark.parametrize("obj", [None, {}, GOOD_EVENT[:6], [*GOOD_EVENT, 1], "abcdefg"])
def test_events_of_the_wrong_shape_are_refused(obj: Any) -> None:
    expect_bad_request(Event.from_wire, obj)


def test_event_from_a_tuple_and_its_key() -> None:
    event = Event.from_wire(tuple(GOOD_EVENT))
    assert event.key == (1, 1, 1)


# --- ids and file names ------------------------------------------------------------------

@pytest.mark.parametrize("good", ["a", "alice", "A_b.c@d-e", "9" * 64])
def test_good_ids(good: str) -> None:
    assert check_id(good, "user id") == good


@pytest.mark.parametrize("bad", ["", "a b", "a/b", "é", "x" * 65, None, 5, b"ab", ["a"],
                                 "a\n", "\nа"])
def test_bad_ids(bad: Any) -> None:
    err = expect_bad_request(check_id, bad, "group id")
    assert "group id" in str(err)


@pytest.mark.parametrize("good", ["f.txt", ".hidden", "...", "a b", "ünïcode.bin", "x" * 255,
                                  "a:b"])
def test_good_file_names(good: str) -> None:
    assert check_file_name(good) == good


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b",
                                 "..\\x", "a\0b", "a\nb", "\x1f", "é" * 128, None, 3, b"f"])
def test_bad_file_names(bad: Any) -> None:
    expect_bad_request(check_file_name, bad)


@FAST
@given(hst.one_of(values, hst.text(min_size=100, max_size=5000),
                  hst.binary(min_size=100, max_size=5000)))
def test_errors_about_a_bad_value_quote_little_of_it(value: Any) -> None:
    """The sender decides a value's size; an error reply or log line must not echo it."""
    for check in (lambda v: check_id(v, "user id"), check_file_name):
        try:
            check(value)
        except LocalError as exc:
            assert len(str(exc)) < SHOWN_CHARS + 100, str(exc)
