"""Tracker <-> tracker messages: round trips, and every malformed frame refused."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as hst

from p2p import codec
from p2p.errors import LocalError
from p2p.messages.sync import (
    Ack,
    Batch,
    CatchUp,
    Event,
    Heartbeat,
    SyncMessage,
    Verdict,
    decode_sync,
    encode_sync,
    vector_from_wire,
    vector_to_wire,
)

pytestmark = pytest.mark.timeout(30)

EVENT = Event(1, 7, 123 << 16, "cid", 3, "create_group", {"group": "g", "user": "u"})

MESSAGES: list[SyncMessage] = [
    EVENT,
    Heartbeat(2, {1: 7, 2: 0, 3: 12}, ("a" * 64, "b" * 64)),
    Heartbeat(1, {}),
    CatchUp(3, {1: 5}),
    Batch(1, (EVENT, Event(2, 1, 5, "", 0, "logout", {"sid": "x"})), more=True),
    Batch(1, (), more=False),
    Ack(2, 1, 7, (Verdict(6, True), Verdict(7, False, "user_exists", "user u exists"))),
    Ack(3, 1, 0),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: SyncMessage) -> None:
    assert decode_sync(encode_sync(message)) == message


@given(hst.dictionaries(hst.integers(1, 1000), hst.integers(0, 2**62), max_size=20))
def test_vector_round_trip(vector: dict[int, int]) -> None:
    assert vector_from_wire(vector_to_wire(vector)) == vector


BAD: list[Any] = [
    [],
    ["zz", 1],
    [1, 2, 3],
    ["hb", 0, [], []],  # tracker 0 does not exist
    ["hb", 1, {"1": 2}, []],  # vectors are pair lists
    ["hb", 1, [[1, 2], [1, 3]], []],  # an origin twice
    ["hb", 1, [[1, -2]], []],
    ["hb", 1, [], "sids"],
    ["hb", 1, [], [7]],
    ["hb", True, [], []],
    ["cu", 1],
    ["cu", 1, [[2000, 1]]],
    ["ba", 1, [], "yes"],
    ["ba", 1, [[1, 2]], False],
    ["ak", 1, 2, 3, [[1, "ok", "", ""]]],
    ["ak", 1, 2, -3, []],
    ["ak", 1, 2, 3, [[1, False, 5, ""]]],
    ["ev", 1, 2, 3, "c", 0, "t"],
    ["ev", 1, 2, 3, "c", 0, "t", []],
]


@pytest.mark.parametrize("obj", BAD, ids=repr)
def test_malformed_frames_are_refused(obj: Any) -> None:
    with pytest.raises(LocalError) as caught:
        decode_sync(codec.encode(obj))
    assert caught.value.code == "bad_request"


def test_garbage_bytes_and_oversized_frames_are_refused() -> None:
    for data in (b"", b"\xc1", b"\x92\xa2hb"):
        with pytest.raises(LocalError):
            decode_sync(data)
    with pytest.raises(LocalError):
        decode_sync(encode_sync(MESSAGES[1]), max_size=4)


def test_event_id_and_key() -> None:
    assert EVENT.id == (1, 7)
    assert EVENT.key == (123 << 16, 1, 7)
