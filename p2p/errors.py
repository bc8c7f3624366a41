"""One error hierarchy for every process; each error carries a snake_case code."""

from __future__ import annotations

import reprlib
from typing import Any

# What an error message shows of a bad value.  The value comes from the wire, so its
# size is the sender's choice: shown whole, a 4 MB id made a 4 MB error reply, and a
# stranger who never read them had a tracker hold gigabytes of its own echoes.
SHOWN_CHARS = 60


class ProtocolError(Exception):
    """A failure a user or a peer can be told about in one line.

    ``code`` is the stable snake_case code of the spec (``no_such_group``...);
    ``str(err)`` is the human sentence.
    """

    default_code = "bad_request"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code

    @property
    def message(self) -> str:
        return str(self)


class LocalError(ProtocolError):
    """Detected on this side: bad input, bad frame, no tracker reachable."""


class RemoteError(ProtocolError):
    """Reported by the other side in an error reply."""


class _Short(reprlib.Repr):
    """Abbreviates long strings, bytes, ints and containers as it goes, so a huge value
    is never rendered whole on the way to being cut."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = SHOWN_CHARS
        self.maxlevel = 2

    def repr_bytes(self, value: bytes, level: int) -> str:
        if len(value) <= self.maxstring:
            return repr(value)
        return repr(value[:self.maxstring]) + "..."


_REPR = _Short()


def shown(value: Any) -> str:
    """``repr(value)`` for an error message, cut to at most ``SHOWN_CHARS`` characters."""
    text = _REPR.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."
