"""Across hosts: each tracker and the client in its own network namespace, joined by veth
pairs to a bridge in a hub namespace, on addresses of their own.  A tracker is cut off
by taking its link down: the client fails over; the link comes back: the trackers
converge.

Needs root and ``ip netns``; skipped elsewhere.  Everything lives in namespaces this
test creates (the host's own network is not touched) and is deleted at the end.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import ROOT, ClientProc, _env, wait_for

pytestmark = pytest.mark.timeout(90)

SUBNET = "10.231.{}.{}"  # private, and only ever configured inside our namespaces
PORT = 7100  # each namespace has its own port space, so fixed ports cannot clash


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=10)


def _netns_problem() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    probe = f"p2pprobe{os.getpid()}"
    try:
        made = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"ip netns unusable: {exc}"
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Net:
    """A hub namespace with a bridge, and one namespace per node linked to it."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.hub = f"p2p{tag}hub"
        self.subnet = os.getpid() % 200 + 20
        self.nodes: dict[str, str] = {}  # node -> namespace
        self.links: dict[str, str] = {}  # node -> its veth end in the hub
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")

    def address(self, host: int) -> str:
        return SUBNET.format(self.subnet, host)

    def add(self, node: str, host: int) -> str:
        ns = f"{self.hub[:-3]}{node}"
        self.nodes[node] = ns
        self.links[node] = f"v{node}"
        _ip("netns", "add", ns)
        _ip("-n", self.hub, "link", "add", f"v{node}", "type", "veth",
            "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.hub, "link", "set", f"v{node}", "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def link(self, node: str, up: bool) -> None:
        _ip("-n", self.hub, "link", "set", self.links[node], "up" if up else "down")

    def run(self, node: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.nodes[node], sys.executable, *argv],
                              capture_output=True, text=True, env=_env(), cwd=ROOT,
                              timeout=30)

    def delete(self) -> None:
        for ns in [*self.nodes.values(), self.hub]:
            _ip("netns", "del", ns, check=False)


class NsClient(ClientProc):
    """A ``--json`` client process inside a namespace."""

    def __init__(self, net: Net, node: str, addr: str, info: Path, root: Path) -> None:
        self.port = PORT
        self.data_dir = root / node
        self.log_path = root / f"{node}.log"
        self.events = []
        self._lines = queue.Queue()
        err = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", net.nodes[node], sys.executable, "-m", "peers",
             f"{addr}:{PORT}", str(info), "--data-dir", str(self.data_dir), "--json"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=_env(), cwd=ROOT,
        )
        err.close()
        threading.Thread(target=self._read, daemon=True).start()


@pytest.fixture
def net() -> Iterator[Net]:
    problem = _netns_problem()
    if problem:
        pytest.skip(f"network namespace test: {problem}")
    n = Net()
    try:
        yield n
    finally:
        n.delete()


def test_tracker_cut_off_by_its_link_fails_over_and_converges_after(net: Net, tmp_path: Path
                                                                     ) -> None:
    for node, host in (("t1", 1), ("t2", 2), ("cl", 9)):
        net.add(node, host)
    info = tmp_path / "tracker_info.txt"
    info.write_text(f"{net.address(1)} {PORT}\n{net.address(2)} {PORT}\n")
    trackers: list[subprocess.Popen[bytes]] = []
    client: NsClient | None = None

    def status_ok() -> bool:  # the operator's status command, run from the client's host
        return net.run("cl", "-m", "trackers", str(info), "--status").returncode == 0

    try:
        for n in (1, 2):
            log = open(tmp_path / f"tracker-{n}.log", "ab")  # noqa: SIM115
            trackers.append(subprocess.Popen(
                ["ip", "netns", "exec", net.nodes[f"t{n}"], sys.executable, "-m", "trackers",
                 str(info), str(n), "--data-dir", str(tmp_path / f"data-{n}")],
                stdout=log, stderr=log, env=_env(), cwd=ROOT))
            log.close()
        wait_for(status_ok, 30, "both trackers up and agreeing", interval=0.3)
        client = NsClient(net, "cl", net.address(9), info, tmp_path)
        client.ok("create_user alice pw")
        client.ok("login alice pw")
        client.ok("create_group before")

        net.link("t1", up=False)  # tracker 1 is cut off, still running
        start = time.monotonic()
        client.ok("create_group during")
        elapsed = time.monotonic() - start
        print(f"command answered {elapsed:.2f} s after tracker 1's link went down")
        assert elapsed < 1.0
        groups = [g["group"] for g in client.ok("list_groups")]
        assert groups == ["before", "during"]
        assert len([e for e in client.events if e.get("event") == "failover"]) <= 1

        seen = net.run("cl", "-m", "trackers", str(info), "--status").stdout.splitlines()
        assert "DOWN" in seen[0] and " up " in seen[1], seen

        net.link("t1", up=True)
        start = time.monotonic()
        wait_for(status_ok, 30, "the trackers to converge after the link is back",
                 interval=0.3)
        print(f"converged {time.monotonic() - start:.2f} s after the link came back")
        shown = net.run("cl", "-m", "trackers", str(info), "--status").stdout
        assert "trackers agree" in shown, shown
    except BaseException:
        for n in (1, 2):
            path = tmp_path / f"tracker-{n}.log"
            if path.exists():
                sys.stderr.write(f"--- tracker {n}\n{path.read_text()[-3000:]}\n")
        raise
    finally:
        if client is not None:
            client.kill()
        for proc in trackers:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)
