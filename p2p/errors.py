"""One error hierarchy for every process; each error carries a snake_case code."""

from __future__ import annotations


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
