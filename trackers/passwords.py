"""Salted scrypt password records, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

SALT_BYTES = 16
_N, _R, _P, _LEN = 2**14, 8, 1, 32


def hash_password(password: str, salt: bytes) -> bytes:
    """The stored record for ``password``: salt followed by its scrypt hash."""
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_LEN)
    return salt + digest


def verify_password(password: str, record: bytes) -> bool:
    """Whether ``password`` matches a record made by ``hash_password``."""
    salt = record[:SALT_BYTES]
    return hmac.compare_digest(hash_password(password, salt), record)
