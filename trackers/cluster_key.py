"""The cluster secret that authenticates and encrypts tracker-to-tracker links (CURVE).

Every tracker of a cluster reads the same key file (``tracker_cluster.key`` beside
``tracker_info.txt`` unless ``--cluster-key`` says otherwise) and derives one CURVE keypair
from it.  Each tracker is a CURVE server on its PUB and peer ROUTER and a CURVE client of
the others, and admits only clients holding that keypair (the guide's "Ironhouse" pattern
with one shared certificate): whoever lacks the file can neither read the replicated events
(password hashes, session ids) nor inject any.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger(__name__)

DEFAULT_NAME = "tracker_cluster.key"
SECRET_BYTES = 32
# Domain label of the derivation, so the secret is not used as a key as it is.
_LABEL = b"p2p-groups tracker cluster CURVE key v1\x00"
_HEADER = "# p2p-groups tracker cluster key: copy this same file to every tracker host\n"


class ClusterKeyError(Exception):
    """The key file cannot be used; the message names the file and says why."""


@dataclass(frozen=True)
class ClusterKeys:
    """The cluster's CURVE keypair (Z85), and the file it came from (for messages)."""

    public: bytes
    secret: bytes = field(repr=False)  # never in a log line or a traceback's repr
    source: str = "a random key"

    @classmethod
    def from_secret(cls, secret: bytes, source: str = "a random key") -> ClusterKeys:
        """Derive the keypair: CURVE secret key = SHA-256(label + cluster secret)."""
        curve_secret = z85.encode(hashlib.sha256(_LABEL + secret).digest())
        return cls(zmq.curve_public(curve_secret), curve_secret, source)

    @classmethod
    def random(cls) -> ClusterKeys:
        """Keys nobody else has: a lone tracker (in-process tests) replicates with no one."""
        return cls.from_secret(secrets.token_bytes(SECRET_BYTES))

    def serve(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE server (set before bind)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def connect_as_client(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client of a cluster server (set before connect)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.public

    def authenticator(self, context: zmq.Context[Any]) -> ThreadAuthenticator:
        """Start the context's ZAP handler, admitting only the cluster's key (start it
        before binding: without a handler, a CURVE server admits any client key)."""
        # Its debug lines name client keys: public, but nothing an operator needs.
        quiet = logging.getLogger("trackers.zap")
        quiet.setLevel(logging.INFO)
        auth = ThreadAuthenticator(context, log=quiet)
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=self)
        return auth

    def callback(self, _domain: str, client_key: bytes) -> bool:
        """ZAP verdict, as pyzmq's authenticator asks for it (Z85 client key): only a
        client holding the cluster keypair."""
        return client_key == self.public


def default_path(tracker_info: str | Path) -> Path:
    """``tracker_cluster.key`` in the directory of the tracker info file."""
    return Path(tracker_info).parent / DEFAULT_NAME


def parse(text: str, source: str) -> ClusterKeys:
    """Keys from the file's text: ``#`` comments, then one line of 64 hex digits."""
    lines = [line.strip() for line in text.splitlines()]
    body = [line for line in lines if line and not line.startswith("#")]
    if len(body) != 1:
        raise ClusterKeyError(f"{source}: malformed cluster key file: expected one line of "
                              f"{SECRET_BYTES * 2} hex digits, found {len(body)} lines")
    try:
        secret = bytes.fromhex(body[0])
    except ValueError:
        secret = b""
    if len(secret) != SECRET_BYTES:
        raise ClusterKeyError(f"{source}: malformed cluster key file: expected "
                              f"{SECRET_BYTES * 2} hex digits")
    return ClusterKeys.from_secret(secret, source)


def load(path: str | Path) -> ClusterKeys:
    """Read an existing key file; raises ClusterKeyError naming it.  Logs a warning
    when group or others may read or write it (see ``warn_if_exposed``)."""
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode  # of what was read, symlink or not
            text = file.read().decode("ascii")
    except FileNotFoundError:
        raise ClusterKeyError(f"{path}: cluster key file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterKeyError(f"{path}: cannot read the cluster key file: {exc}") from None
    keys = parse(text, str(path))
    warn_if_exposed(path, mode)
    return keys


def warn_if_exposed(path: str | Path, mode: int) -> None:
    """One warning line if the key file's ``mode`` lets group or others read or write it.

    Like ssh with a private key, but the tracker still starts: the usual way to get
    such a file is to copy the key to another tracker's host (cp and scp without -p
    make it 0644 under the common umask), and refusing would turn that routine step
    into a tracker that is down until someone reads its log; the exposure has already
    happened by the time we look, and chmod fixes it without a restart."""
    if os.name == "posix" and stat.S_IMODE(mode) & 0o066:
        log.warning("cluster key file %s can be read or written by group or others "
                    "(mode %04o): anyone who can read it can read and forge replication "
                    "between trackers; fix it with: chmod 600 %s",
                    path, stat.S_IMODE(mode), path)


def load_or_create(path: str | Path) -> tuple[ClusterKeys, bool]:
    """Read the key file, or create it with a fresh secret if there is none; True when
    this call created it.  Created atomically (a full temp file hard-linked into place),
    so of two trackers starting at once on one host the loser reads the winner's key."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return load(path), False
    text = _HEADER + secrets.token_bytes(SECRET_BYTES).hex() + "\n"
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    except OSError as exc:
        raise ClusterKeyError(f"{path}: cannot create the cluster key file: {exc}") from None
    try:
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.link(tmp, path)
        except FileExistsError:  # another tracker won the race: use its key
            return load(path), False
        except OSError as exc:
            raise ClusterKeyError(f"{path}: cannot create the cluster key file: {exc}"
                                  ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return parse(text, str(path)), True
