"""Real tracker and client processes for integration tests.

Ports come from the kernel (bind to port 0), blocks of five for trackers; every
wait has a deadline; processes are SIGKILLed where a test asks for failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_taken: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_range() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def _this_workers_share(pool: range) -> range:
    """The slice of ``pool`` this pytest-xdist worker draws from (all of it when the
    tests run in one process).  ``_taken`` is per process: disjoint slices keep one
    worker from handing out a port another has handed out but not bound yet, or that a
    tracker it restarts is about to bind again."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if count <= 1 or not worker.startswith("gw") or not worker[2:].isdigit():
        return pool
    size = len(pool) // count
    start = pool.start + int(worker[2:]) % count * size
    return range(start, start + size)


# Ports are drawn below the kernel's ephemeral range, so an outgoing connection's
# source port can never take a port a test is about to (re)bind.
_EPHEMERAL = _ephemeral_range()
_POOL = _this_workers_share(
    range(20000, min(_EPHEMERAL.start, 32768)) if _EPHEMERAL.start > 21000
    else range(_EPHEMERAL.stop, 65000))


def free_port() -> int:
    """A port nothing listens on now and that this test run has not handed out."""
    rng = random.Random()
    for _ in range(10000):
        port = rng.choice(_POOL)
        if port not in _taken and _bindable(port):
            _taken.add(port)
            return port
    raise RuntimeError("no free port")


def free_port_block(span: int = 5) -> int:
    """A base port with base..base+span-1 all free (a tracker uses five ports)."""
    for _ in range(200):
        base = free_port()
        block = range(base, base + span)
        if base + span <= _POOL.stop and all(p == base or (p not in _taken and _bindable(p))
                                             for p in block):
            _taken.update(block)
            return base
    raise RuntimeError("no block of free ports")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class TrackerProc:
    """One ``python -m trackers`` process."""

    def __init__(self, info: Path, number: int, data_dir: Path, log_path: Path,
                 extra: list[str] | None = None) -> None:
        self.info, self.number, self.data_dir, self.log_path = info, number, data_dir, log_path
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> TrackerProc:
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trackers", str(self.info), str(self.number),
             "--data-dir", str(self.data_dir), *self.extra],
            stdout=log, stderr=log, env=_env(), cwd=ROOT,
        )
        log.close()
        if wait:
            wait_for(self.status, 20, f"tracker {self.number} to answer")
        return self

    def status(self) -> dict[str, Any] | None:
        from p2p.config import load_tracker_info
        from trackers.status import query_status

        return query_status(load_tracker_info(self.info)[self.number - 1], timeout=0.5)

    def answered_status(self, timeout: float = 10) -> dict[str, Any]:
        """The status of a tracker that must be answering, asked again until it does: one
        0.5 s query can go unanswered on a loaded machine with nothing wrong."""
        status: dict[str, Any] = wait_for(self.status, timeout,
                                          f"tracker {self.number} to answer status")
        return status

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ClientProc:
    """A ``python -m peers --json`` process driven line by line through stdin."""

    def __init__(self, info: Path, data_dir: Path, log_path: Path, port: int | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.log_path = log_path
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        err = open(log_path, "ab")  # noqa: SIM115 (handed to the child)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "peers", f"127.0.0.1:{self.port}", str(info),
             "--data-dir", str(data_dir), "--json", *(extra_args or [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=_env(), cwd=ROOT,
        )
        err.close()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"garbled": raw.decode(errors="replace")}
            if isinstance(line, dict) and "event" in line:
                self.events.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def cmd(self, line: str, timeout: float = 20) -> dict[str, Any]:
        """Run one command and return its JSON answer (events are kept in ``events``)."""
        self.send(line)
        return self.answer(line, timeout)

    def answer(self, line: str, timeout: float = 20) -> dict[str, Any]:
        """The JSON answer to ``line``, already sent (events are kept in ``events``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer to {line!r} within {timeout} s")
            try:
                answer = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if answer is None:
                raise AssertionError(f"client exited before answering {line!r}")
            if "event" in answer:
                continue
            assert "garbled" not in answer, f"non-JSON output: {answer}"
            assert answer.get("command") == line.split()[0], f"{line!r} answered {answer}"
            return answer

    def ok(self, line: str, timeout: float = 20) -> Any:
        """Run a command that must succeed; return its result."""
        answer = self.cmd(line, timeout)
        assert answer["ok"], f"{line!r} failed: {answer}"
        return answer["result"]

    def fails(self, line: str, code: str, timeout: float = 20) -> str:
        """Run a command that must fail with ``code``; return the error sentence."""
        answer = self.cmd(line, timeout)
        assert not answer["ok"] and answer["code"] == code, f"{line!r}: {answer}, wanted {code}"
        return str(answer["error"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self, timeout: float = 15) -> int:
        """End input (the client logs out and quits) and wait for it to exit."""
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


class Cluster:
    """Trackers of one tracker_info.txt plus clients, all torn down at the end."""

    def __init__(self, root: Path, trackers: int = 1, tracker_args: list[str] | None = None
                 ) -> None:
        self.root = root
        self.info = root / "tracker_info.txt"
        self.ports = [free_port_block() for _ in range(trackers)]
        self.info.write_text("".join(f"127.0.0.1 {p}\n" for p in self.ports))
        self.trackers = [
            TrackerProc(self.info, n, root / f"tracker-{n}", root / f"tracker-{n}.log",
                        tracker_args)
            for n in range(1, trackers + 1)
        ]
        self.clients: list[ClientProc] = []

    def start(self) -> Cluster:
        for tracker in self.trackers:
            tracker.start(wait=False)
        for tracker in self.trackers:
            wait_for(tracker.status, 20, f"tracker {tracker.number} to answer")
        return self

    def tracker(self, number: int) -> TrackerProc:
        return self.trackers[number - 1]

    @property
    def key_path(self) -> Path:
        """The cluster key file the trackers use by default (beside tracker_info.txt)."""
        return self.root / "tracker_cluster.key"

    def keyed_socket(self, ctx: Any, kind: int) -> Any:
        """A socket holding this cluster's key, as a tracker's own would (a CURVE server
        for PUB and ROUTER, a client of the cluster otherwise): what a test uses to speak
        to replication ports past the authentication.  Creates the key file if no tracker
        has yet, as a tracker would."""
        import zmq

        from trackers.cluster_key import load_or_create

        keys, _created = load_or_create(self.key_path)
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if kind in (zmq.PUB, zmq.ROUTER):
            keys.serve(sock)
        else:
            keys.connect_as_client(sock)
        return sock

    def sessions(self, tracker: int = 1) -> int:
        """How many sessions a tracker holds, by its status."""
        return int(self.tracker(tracker).answered_status()["sessions"])

    def end_session_by_freezing(self, client: ClientProc) -> None:
        """Freeze ``client`` until tracker 1 has timed its session out (start the trackers
        with a short ``--session-timeout``), then wake it and wait for its ping to hear so."""
        client.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: self.sessions() == 0, 15, "the tracker to time the session out")
        finally:
            client.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: any(e["event"] == "session_ended" for e in client.events), 10,
                 "the ping thread to report the ended session")

    def client(self, name: str | None = None, extra_args: list[str] | None = None
               ) -> ClientProc:
        """A client whose data dir is ``root/name``: the same name again reuses it."""
        name = name or f"client-{len(self.clients) + 1}"
        client = ClientProc(self.info, self.root / name, self.root / f"{name}.log",
                            extra_args=extra_args)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.kill()
        for tracker in self.trackers:
            tracker.stop()

    def logs(self) -> str:
        parts = [f"--- tracker {t.number}\n{t.log_text()[-4000:]}" for t in self.trackers]
        for c in self.clients:
            if c.log_path.exists():
                parts.append(f"--- {c.log_path.name}\n{c.log_path.read_text()[-4000:]}")
        return "\n".join(parts)


@contextlib.contextmanager
def cluster(root: Path, trackers: int = 1, **kwargs: Any) -> Iterator[Cluster]:
    """Start a cluster; on failure print every process's log tail."""
    c = Cluster(root, trackers, **kwargs)
    try:
        yield c.start()
    except BaseException:
        sys.stderr.write(c.logs())
        raise
    finally:
        c.close()


def run_module(module: str, *args: str, input: str | bytes | None = None,
               timeout: float = 30, cwd: Path | None = None
               ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args...`` to its end, feeding ``input`` (text or raw bytes)
    on stdin; stdout and stderr come back as text."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        input=input.encode() if isinstance(input, str) else input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True, timeout=timeout, env=_env(), cwd=cwd or ROOT,
    )
    return subprocess.CompletedProcess(done.args, done.returncode,
                                       done.stdout.decode(errors="replace"),
                                       done.stderr.decode(errors="replace"))


def tracker_events(data_dir: Path) -> list[Any]:
    """The events in a tracker's sqlite log, read-only (safe while the tracker runs)."""
    import sqlite3

    from p2p import codec
    from p2p.messages.sync import Event

    db = sqlite3.connect(f"file:{data_dir / 'events.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT body FROM events ORDER BY ts, origin, seq").fetchall()
    finally:
        db.close()
    return [Event.from_wire(codec.decode(body)) for (body,) in rows]
