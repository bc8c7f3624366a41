"""msgpack encoding with limits: the only module that touches msgpack."""

from __future__ import annotations

from typing import Any

import msgpack

from p2p.errors import LocalError

# A frame bigger than this is refused before it is parsed.  Piece frames carry
# their payload outside msgpack, so control messages stay small.
MAX_FRAME = 4 * 1024 * 1024
_MAX_ITEMS = 100_000


def encode(obj: Any) -> bytes:
    """Serialise ``obj`` (dicts, lists, str, bytes, ints, floats, bools, None)."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def decode(data: bytes | memoryview, *, max_size: int = MAX_FRAME) -> Any:
    """Parse one msgpack frame, refusing anything oversized or malformed.

    Raises ``LocalError`` (code ``bad_request``) instead of any parser error, so a
    loop can turn garbage into an error reply and carry on.
    """
    if len(data) > max_size:
        raise LocalError(f"frame of {len(data)} bytes exceeds {max_size}", "bad_request")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=_MAX_ITEMS,
            max_map_len=_MAX_ITEMS,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise LocalError(f"malformed frame: {type(exc).__name__}", "bad_request") from exc
