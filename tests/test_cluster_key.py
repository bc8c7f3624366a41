"""Tracker-to-tracker links are CURVE-authenticated with the cluster key: a stranger on a
replication port reads nothing and is answered nothing, trackers with different keys do
not replicate and say so, and the key file is made once and checked at start."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

from p2p.messages.sync import CatchUp, Event, encode_sync
from tests.procs import Cluster, cluster, free_port_block, run_module, wait_for
from tests.test_replication_kit import Direct, wait_converged
from trackers.cluster_key import ClusterKeys, load_or_create

pytestmark = pytest.mark.timeout(90)

_HANDSHAKE = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
MISMATCH = "does not share our cluster key"


def _strangers(c: Cluster, zctx: zmq.Context[Any]) -> dict[str, zmq.Socket[Any]]:
    """A SUB on tracker 1's PUB and a DEALER on its peer port, with no key at all, and
    the same with a valid CURVE keypair of their own that name the cluster's public key
    as the server's (so only the tracker's check of the client key stops them)."""
    cluster_public = load_or_create(c.key_path)[0].public
    own = ClusterKeys.random()
    socks: dict[str, zmq.Socket[Any]] = {}
    for name, keyed in (("plain", False), ("wrong client key", True)):
        for kind, offset in ((zmq.SUB, 1), (zmq.DEALER, 2)):
            sock: zmq.Socket[Any] = zctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            if keyed:
                sock.curve_secretkey, sock.curve_publickey = own.secret, own.public
                sock.curve_serverkey = cluster_public
            label = f"{name} {'SUB' if kind == zmq.SUB else 'DEALER'}"
            monitor = sock.get_monitor_socket(_HANDSHAKE)
            sock.connect(f"tcp://127.0.0.1:{c.ports[0] + offset}")
            assert monitor.poll(15_000), f"{label}: no handshake outcome within 15 s"
            outcome = int(parse_monitor_message(monitor.recv_multipart())["event"])
            sock.disable_monitor()
            monitor.close(0)
            assert outcome != zmq.EVENT_HANDSHAKE_SUCCEEDED, f"{label} was let in"
            socks[label] = sock
    return socks


def test_a_stranger_reads_nothing_and_is_answered_nothing(
        two_trackers: Cluster, zctx: zmq.Context[Any]) -> None:
    """What used to leak: every replicated event (password hashes, session ids, from which
    download tickets can be forged) to any SUB, and the whole log to any CatchUp."""
    c = two_trackers
    socks = _strangers(c, zctx)
    insider = c.keyed_socket(zctx, zmq.SUB)  # proof there was traffic to be read
    insider.setsockopt(zmq.SUBSCRIBE, b"")
    insider.connect(f"tcp://127.0.0.1:{c.ports[0] + 1}")
    ask = encode_sync(CatchUp(2, {}))
    for label, sock in socks.items():
        if "DEALER" in label:
            # Refused at the handshake, zmq may not even queue it (Again): no batch either way.
            with contextlib.suppress(zmq.Again):
                sock.send(ask, zmq.NOBLOCK)
    alice = Direct(c)
    alice.login(1, "alice")  # create_user and login: replicated, with hash and session
    wait_for(lambda: (c.tracker(2).status() or {}).get("users") == 1, 10,
             "tracker 2 to hold the replicated user")
    heard = 0

    def insider_heard_plenty() -> bool:  # events and a few heartbeats, 0.25 s apart
        nonlocal heard
        while insider.poll(0):
            insider.recv()
            heard += 1
        return heard >= 6

    wait_for(insider_heard_plenty, 10, "the cluster's own subscriber to hear the traffic")
    for label, sock in socks.items():
        assert not sock.poll(0), f"the {label} got something"
    assert alice.ok(1, "list_groups") == []  # still serving its clients
    insider.close(0)


def _wait_logged(c: Cluster, number: int, line: str) -> None:
    wait_for(lambda: line in c.tracker(number).log_text(), 15,
             f"tracker {number} to log {line!r}")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_trackers_with_different_keys_do_not_replicate_and_say_so(tmp_path: Path, host: str
                                                                 ) -> None:
    """Tracker 2 has a key file of its own: neither takes the other's events, both log the
    line that says why; given tracker 1's file, tracker 2 catches up.  (With a host name in
    tracker_info.txt too: zmq names the endpoint by its address in what it reports.)"""
    c = Cluster(tmp_path, trackers=2)
    c.info.write_text("".join(f"{host} {p}\n" for p in c.ports))
    other = tmp_path / "other.key"
    c.tracker(2).extra = ["--cluster-key", str(other)]
    try:
        c.start()
        assert other.exists() and c.key_path.exists()
        alice = Direct(c)
        alice.login(1, "alice")
        for n, key in ((1, c.key_path), (2, other)):
            _wait_logged(c, n, f"tracker {3 - n} ({host}:{c.ports[2 - n]}) {MISMATCH} "
                               f"({key}): replication with it is refused")
        two = c.tracker(2).answered_status()
        assert two["users"] == 0 and two["applied"].get("1", 0) == 0, two
        for n in (1, 2):
            assert c.tracker(n).log_text().count(MISMATCH) == 1, c.tracker(n).log_text()
        # The operator copies the key: tracker 1 dials tracker 2 again by itself.
        c.tracker(2).stop()
        shutil.copyfile(c.key_path, other)
        c.tracker(2).start()
        wait_converged(c, timeout=20)
        assert c.tracker(2).answered_status()["users"] == 1
        _wait_logged(c, 1, f"tracker 2 ({host}:{c.ports[1]}) shares our cluster key now")
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.close()


def test_two_trackers_started_at_once_make_one_key_file_and_replicate(
        tmp_path: Path) -> None:
    with cluster(tmp_path, trackers=2) as c:  # both started before either is waited for
        assert sorted(p.name for p in tmp_path.iterdir() if "key" in p.name) == [
            "tracker_cluster.key"]
        assert stat.S_IMODE(c.key_path.stat().st_mode) == 0o600
        made = [t.number for t in c.trackers if "created the cluster key" in t.log_text()]
        assert len(made) == 1, made
        secret = c.key_path.read_text().split()[-1]
        assert all(secret not in t.log_text() for t in c.trackers)  # named, never shown
        alice = Direct(c)
        alice.login(1, "alice")
        alice.ok(1, "create_group", group="g")
        wait_for(lambda: [g["group"] for g in alice.ok(2, "list_groups")] == ["g"], 10,
                 "tracker 2 to hold the group")


def test_the_key_file_is_created_once_and_then_read(tmp_path: Path) -> None:
    path = tmp_path / "k"
    keys, created = load_or_create(path)
    assert created and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, created = load_or_create(path)
    assert not created and again.public == keys.public and again.secret == keys.secret
    assert keys.secret.decode() not in repr(keys)
    assert [p.name for p in tmp_path.iterdir()] == ["k"]  # no temp file left behind


EXPOSED = "can be read or written by group or others"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "trackers.cluster_key" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o622], ids=oct)
def test_a_key_file_group_or_others_can_read_or_write_is_used_with_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int) -> None:
    path = tmp_path / "k"
    keys, _created = load_or_create(path)
    os.chmod(path, mode)
    with caplog.at_level(logging.WARNING, logger="trackers.cluster_key"):
        again, created = load_or_create(path)
    assert not created and again.public == keys.public  # used all the same
    lines = _warnings(caplog)
    assert len(lines) == 1, lines
    assert EXPOSED in lines[0] and f"(mode {mode:04o})" in lines[0], lines[0]
    assert f"{path} " in lines[0] and lines[0].endswith(f"chmod 600 {path}"), lines[0]
    assert path.read_text().split()[-1] not in lines[0]  # the secret is never logged


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700, 0o611], ids=oct)
def test_a_key_file_only_its_owner_can_read_or_write_draws_no_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int) -> None:
    path = tmp_path / "k"
    with caplog.at_level(logging.WARNING, logger="trackers.cluster_key"):
        load_or_create(path)  # created 0600
        os.chmod(path, mode)
        load_or_create(path)
    assert _warnings(caplog) == []


def test_a_tracker_warns_once_at_start_of_a_key_file_others_can_read(tmp_path: Path
                                                                    ) -> None:
    """The warning reaches the tracker's log, and the tracker still serves; after the
    chmod it gives, a restart logs no warning."""
    c = Cluster(tmp_path, trackers=1)
    load_or_create(c.key_path)
    c.key_path.chmod(0o644)
    fix = f"chmod 600 {c.key_path}"
    try:
        c.start()
        assert c.tracker(1).answered_status()["users"] == 0
        assert c.tracker(1).log_text().count(fix) == 1, c.tracker(1).log_text()
        c.tracker(1).stop()
        c.key_path.chmod(0o600)
        c.tracker(1).start()
        assert c.tracker(1).log_text().count(fix) == 1, c.tracker(1).log_text()
        assert c.tracker(1).log_text().count(EXPOSED) == 1
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.close()


@pytest.mark.parametrize("content", [b"", b"not hex at all\n", b"abcd\n",
                                     b"00" * 32 + b"\n" + b"11" * 32 + b"\n", b"\xff\xfe\n",
                                     None])
def test_a_malformed_key_file_stops_the_tracker_with_one_line(
        tmp_path: Path, content: bytes | None) -> None:
    info = tmp_path / "tracker_info.txt"
    info.write_text(f"127.0.0.1 {free_port_block()}\n")
    key = tmp_path / "tracker_cluster.key"  # the default place: no option needed
    if content is None:
        key.mkdir()  # unreadable as a file
    else:
        key.write_bytes(content)
    done = run_module("trackers", str(info), "1", "--data-dir", str(tmp_path / "d"),
                      timeout=20)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(key) in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    other = tmp_path / "elsewhere.key"
    other.write_text("zz\n")
    done = run_module("trackers", str(info), "1", "--data-dir", str(tmp_path / "d"),
                      "--cluster-key", str(other), timeout=20)
    assert done.returncode != 0 and str(other) in done.stderr, done.stderr


def test_a_stranger_on_a_dead_trackers_ports_is_refused_and_the_tracker_returns(
        tmp_path: Path, zctx: zmq.Context[Any]) -> None:
    """Tracker 2 is down; a stranger without the key binds its PUB and peer ports and
    publishes an event as tracker 2.  Tracker 1 takes nothing from it, and once the real
    tracker 2 is back they replicate: zmq gives up an endpoint after such a handshake,
    and tracker 1 dials it again itself."""
    c = Cluster(tmp_path, trackers=2)
    pub: zmq.Socket[Any] = zctx.socket(zmq.PUB)
    router: zmq.Socket[Any] = zctx.socket(zmq.ROUTER)
    try:
        one = c.tracker(1).start()
        pub.bind(f"tcp://127.0.0.1:{c.ports[1] + 1}")
        router.bind(f"tcp://127.0.0.1:{c.ports[1] + 2}")
        frame = encode_sync(Event(2, 1, 1, "", 0, "create_group",
                                  {"group": "forged", "owner": "eve"}))

        def refused() -> bool:
            pub.send(frame)  # again and again: a SUB drops what comes before it connects
            return MISMATCH in one.log_text()

        wait_for(refused, 15, "tracker 1 to refuse the stranger", interval=0.1)
        assert not router.poll(0), "the stranger's ROUTER got a message"
        assert one.answered_status()["events"] == 0
        pub.close(0)
        router.close(0)
        c.tracker(2).start()
        alice = Direct(c)
        alice.login(2, "alice")
        alice.ok(2, "create_group", group="real")
        wait_for(lambda: [g["group"] for g in alice.ok(1, "list_groups")] == ["real"], 15,
                 "tracker 1 to hold tracker 2's group")
    except BaseException:
        print(c.logs())
        raise
    finally:
        pub.close(0)
        router.close(0)
        c.close()
