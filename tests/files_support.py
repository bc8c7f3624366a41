"""Helpers for the file-transfer integration tests (tests/test_files_*.py)."""

from __future__ import annotations

import random
import secrets
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import zmq

from p2p import codec
from p2p.config import load_tracker_info
from p2p.errors import LocalError
from p2p.messages import piece as msg
from p2p.pieces import PIECE_SIZE
from peers import client as client_module
from peers.client import Client
from peers.download import Download
from peers.shares import Key, Source
from peers.tracker_client import TrackerClient
from peers.transfers import Notify
from tests.procs import ClientProc, Cluster, free_port
from trackers.commands import session_id, ticket_for

PASSWORD = "pw-secret"


def client_without_trackers(tmp_path: Path, monkeypatch: Any,
                            notify: Notify | None = None) -> Client:
    """A real Client in this process, pinging every 0.05 s, whose tracker_info names a
    port nobody answers on: the test puts a stand-in for its ``tracker``."""
    monkeypatch.setattr(client_module, "PING_INTERVAL", 0.05)
    info = tmp_path / "tracker_info.txt"
    info.write_text(f"127.0.0.1 {free_port()}\n")
    return Client(load_tracker_info(info), "127.0.0.1", free_port(), tmp_path / "data",
                  notify=notify)


class OfflineHost:
    """The client side a Download needs, for tests that run one without a client: user
    bob, whose pieces go nowhere; subclasses say what the tracker answers."""

    user = "bob"

    def tracker_call(self, op: str, args: dict[str, Any]) -> Any:
        raise NotImplementedError

    def share_partial(self, download: Download, source: Source) -> None:
        pass

    def announce_progress(self, download: Download, have: bytes) -> Future[Any]:
        told: Future[Any] = Future()
        told.set_result(None)
        return told

    def announce_piece(self, key: Key, index: int) -> None:
        pass

    def ended(self, download: Download) -> None:
        pass


def make_file(path: Path, size: int, seed: int = 1) -> bytes:
    """Write ``size`` pseudo-random bytes to ``path`` and return them."""
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def pieces(n: int) -> int:
    """A size of ``n`` pieces, the last one a little short (so sizes are not aligned)."""
    return n * PIECE_SIZE - 1000


def addr(client: ClientProc) -> str:
    return f"127.0.0.1:{client.port}"


def login(client: ClientProc, user: str, create: bool = True) -> dict[str, Any]:
    if create:
        client.ok(f"create_user {user} {PASSWORD}")
    result: dict[str, Any] = client.ok(f"login {user} {PASSWORD}")
    return result


def group_of(c: Cluster, users: list[str], group: str = "g",
             limits: dict[str, float] | None = None) -> dict[str, ClientProc]:
    """Start a logged-in client per user, all members of ``group`` (the first owns it).

    ``limits`` gives some users an upload limit in KiB/s.
    """
    limits = limits or {}
    clients = {u: c.client(u, extra_args=["--upload-limit", str(limits[u])] if u in limits
                           else None) for u in users}
    for user, client in clients.items():
        login(client, user)
    owner = clients[users[0]]
    owner.ok(f"create_group {group}")
    for user in users[1:]:
        clients[user].ok(f"join_group {group}")
        owner.ok(f"accept_request {group} {user}")
    return clients


def sharing(c: Cluster, tmp_path: Path, users: list[str], count: int, limit_kib: float
            ) -> tuple[dict[str, ClientProc], bytes, Path]:
    """``users`` in group g, the first sharing f.bin (``count`` pieces) at ``limit_kib``
    KiB/s; returns the clients, the file's bytes and an empty ``dl`` directory."""
    cl = group_of(c, users, limits={users[0]: limit_kib})
    data = make_file(tmp_path / "a" / "f.bin", pieces(count))
    cl[users[0]].ok(f"upload_file {tmp_path / 'a' / 'f.bin'} g")
    dest = tmp_path / "dl"
    dest.mkdir()
    return cl, data, dest


def restart(c: Cluster, user: str, limit: float | None = None) -> ClientProc:
    """A new client process for ``user`` on the same data dir, logged in."""
    client = c.client(user, extra_args=["--upload-limit", str(limit)] if limit else None)
    login(client, user, create=False)
    return client


def entry(client: ClientProc, group: str, name: str) -> dict[str, Any]:
    """This client's show_downloads entry for (group, name)."""
    found = [d for d in client.ok("show_downloads") if (d["group"], d["file"]) == (group, name)]
    assert found, f"show_downloads has nothing for {group}/{name}"
    return found[-1]


def have_at_least(client: ClientProc, group: str, name: str, count: int, share: float
                  ) -> dict[str, Any] | None:
    """The entry once at least ``share`` of the ``count`` pieces are verified (and not done)."""
    d = entry(client, group, name)
    assert d["state"] != "failed", d
    return d if d["progress"] * count >= share * count - 1e-6 else None


def done(client: ClientProc, group: str, name: str, timeout: float = 30) -> dict[str, Any]:
    """Block (in the client) until the download ends; it must have completed.

    With several downloads of the same file, the latest one is returned.
    """
    result = client.ok(f"wait {group} {name}", timeout=timeout)
    assert result and result[-1]["state"] == "complete", result
    return dict(result[-1])


def served(client: ClientProc, group: str, name: str) -> int:
    """Pieces of (group, name) this client has sent, 0 if it does not serve it."""
    return sum(s["served"] for s in client.ok("list_shares")
               if (s["group"], s["name"]) == (group, name))


def seeders(client: ClientProc, group: str, name: str) -> int:
    """list_files' seeder count for ``name`` (0 when it is not listed)."""
    return sum(f["seeders"] for f in client.ok(f"list_files {group}") if f["name"] == name)


def leftovers(directory: Path) -> list[str]:
    """Partial files (and anything else hidden) a download left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".")
                  or p.name.endswith(".part"))


# --- talking to trackers and peers from the test process ----------------------------------

class Session:
    """A tracker session opened by the test itself (to get real tickets)."""

    def __init__(self, c: Cluster, user: str, port: int | None = None) -> None:
        self.tracker = TrackerClient(load_tracker_info(c.info))
        self.tracker.token = secrets.token_hex(32)
        self.tracker.call("login", {"user": user, "password": PASSWORD,
                                    "addr": f"127.0.0.1:{port or free_port()}"})
        self.user = user

    def call(self, op: str, args: dict[str, Any]) -> Any:
        return self.tracker.call(op, args)

    def ticket(self, group: str, name: str, peer: ClientProc | str) -> str:
        """The ticket file_info gives this session for fetching ``name`` from ``peer``
        (a client, or its address), which must be sharing it."""
        where = peer if isinstance(peer, str) else addr(peer)
        info = self.tracker.call("file_info", {"group": group, "name": name})
        found = [p["ticket"] for p in info["peers"] if p["addr"] == where]
        assert found, f"{where} does not share {group}/{name}: {info['peers']}"
        return str(found[0])

    def ticket_at(self, group: str, peer: ClientProc) -> str:
        """The ticket the tracker would give this session for ``peer`` in ``group``, for
        a peer that shares nothing there (file_info lists only the peers that do)."""
        assert self.tracker.token is not None
        return ticket_for(session_id(self.tracker.token), group, addr(peer))

    def close(self) -> None:
        try:
            self.tracker.call("logout")
        finally:
            self.tracker.close()


class Probe:
    """A bare DEALER to a peer's piece server, speaking the wire protocol by hand."""

    def __init__(self, peer: ClientProc) -> None:
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://{addr(peer)}")

    def send(self, wire: dict[str, Any]) -> None:
        self.sock.send(codec.encode(wire))

    def reply(self, timeout: float = 10) -> msg.Reply:
        """The next reply, parsed; its raw header map is kept in ``last``."""
        assert self.sock.poll(int(timeout * 1000)), f"no reply within {timeout} s"
        frames = self.sock.recv_multipart()
        self.last: dict[str, Any] = codec.decode(frames[0])
        return msg.parse_reply(frames)

    def hello(self, group: str, name: str, sha1: str, user: str, ticket: str) -> msg.Reply:
        self.send(msg.Hello(group, name, sha1, user, ticket).to_wire())
        return self.reply()

    def get(self, group: str, name: str, index: int) -> msg.Reply:
        self.send(msg.Get(group, name, index).to_wire())
        return self.reply()

    def silent(self, timeout: float) -> bool:
        """True if nothing more arrives within ``timeout`` seconds."""
        return not self.sock.poll(int(timeout * 1000))

    def close(self) -> None:
        self.sock.close(0)


class StandIn:
    """Stands in for the TrackerClient of an in-process ``Client``: holds the real one
    (closed with it) and records the requests and settles it is asked for; ``call`` is
    the subclass's script."""

    token: str | None = None

    def __init__(self, real: TrackerClient) -> None:
        self.real = real
        self.calls: list[str] = []
        self.give_up_after = real.give_up_after

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError

    def call_as(self, token: str, op: str, args: dict[str, Any] | None = None) -> Any:
        """``call`` in the session with ``token`` only, as TrackerClient.call_as."""
        if token != self.token:
            raise LocalError("not logged in: the session of this request has ended",
                             "not_logged_in")
        return self.call(op, args)

    def settle(self) -> None:
        self.calls.append("settle")

    def close(self, wait: bool = True) -> None:
        self.real.close(wait)
