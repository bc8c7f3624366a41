"""Convergence under chaos: several clients send random commands to random trackers
while trackers are SIGKILLed, SIGSTOPped and brought back; once it is quiet, every
tracker holds the same state within 2 s, and no acknowledged write is missing.

Seeded: ``P2P_CHAOS_SEED=n`` replays the same choices (thread timing still varies).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Cluster, cluster, wait_for
from tests.test_replication_kit import Direct, converged, share_args, wait_live

pytestmark = pytest.mark.timeout(90)

SEED = int(os.environ.get("P2P_CHAOS_SEED", "20240611"))
WORKERS = 4
CHAOS_SECONDS = 8.0
TRACKERS = 3


class Worker(threading.Thread):
    def __init__(self, c: Cluster, number: int, stop: threading.Event) -> None:
        super().__init__(name=f"worker-{number}", daemon=True)
        self.c, self.number, self.stop = c, number, stop
        self.rng = random.Random(SEED * 100 + number)
        self.user = f"w{number}"
        self.direct = Direct(c, cid=f"chaos-{SEED}-{number}")
        self.acked_groups: list[str] = []  # private groups created with an ok answer
        self.commands = 0
        self.error: BaseException | None = None

    def order(self) -> list[int]:
        return self.rng.sample(range(1, TRACKERS + 1), TRACKERS)

    def send(self, op: str, **args: Any) -> bool:
        reply = self.direct.failover(self.order(), op, **args)
        self.commands += 1
        assert reply.code != "bad_request", (op, args, reply)
        # No tracker may have forgotten (or not yet learnt) this client's session.
        assert reply.code != "not_logged_in", (op, args, reply)
        return reply.ok

    def run(self) -> None:
        try:
            assert self.send("create_user", user=self.user, password="pw")
            self.direct.new_session()
            reply = self.direct.failover(self.order(), "login", user=self.user, password="pw",
                                         addr="127.0.0.1:9")
            assert reply.ok, reply
            private = 0
            while not self.stop.is_set():
                self.step(private)
                private += 1
        except BaseException as exc:  # reported by the test thread
            self.error = exc

    def step(self, private: int) -> None:
        rng = self.rng
        group = f"g{rng.randrange(6)}"
        other = f"w{rng.randrange(WORKERS)}"
        choice = rng.randrange(10)
        if choice == 0:
            name = f"p{self.number}-{private}"
            if self.send("create_group", group=name):
                self.acked_groups.append(name)
        elif choice == 1:
            self.send("create_group", group=group)
        elif choice == 2:
            self.send("join_group", group=group)
        elif choice == 3:
            self.send("accept_request", group=group, user=other)
        elif choice == 4:
            self.send("leave_group", group=group)
        elif choice == 5:
            self.send("create_user", user=f"u{rng.randrange(8)}", password=self.user)
        elif choice == 6:
            self.send("share", **share_args(group, f"f{rng.randrange(3)}"))
        elif choice == 7:
            self.send("unshare", group=group, name=f"f{rng.randrange(3)}")
        elif choice == 8:
            self.send("reject_request", group=group, user=other)
        else:
            self.send("list_groups")


def chaos(c: Cluster, rng: random.Random, stop: threading.Event, log: list[str]) -> None:
    """Every 0.4-0.9 s: break a healthy tracker (at most two at a time) or heal one."""
    killed: set[int] = set()
    stopped: set[int] = set()
    while not stop.wait(rng.uniform(0.4, 0.9)):
        down = killed | stopped
        healthy = [n for n in range(1, TRACKERS + 1) if n not in down]
        if down and (len(healthy) == 1 or rng.random() < 0.5):
            n = rng.choice(sorted(down))
            if n in killed:
                c.tracker(n).start()
                killed.discard(n)
                log.append(f"restart {n}")
            else:
                c.tracker(n).signal(signal.SIGCONT)
                stopped.discard(n)
                log.append(f"SIGCONT {n}")
            continue
        n = rng.choice(healthy)
        if rng.random() < 0.6:
            c.tracker(n).kill()
            killed.add(n)
            log.append(f"SIGKILL {n}")
        else:
            c.tracker(n).signal(signal.SIGSTOP)
            stopped.add(n)
            log.append(f"SIGSTOP {n}")
    for n in sorted(stopped):
        c.tracker(n).signal(signal.SIGCONT)
    for n in sorted(killed):
        c.tracker(n).start(wait=False)
    for n in range(1, TRACKERS + 1):
        wait_for(c.tracker(n).status, 20, f"tracker {n} to answer")


def test_random_commands_while_trackers_die_converge(tmp_path: Path) -> None:
    with cluster(tmp_path, trackers=TRACKERS) as c:
        for n in range(1, TRACKERS + 1):  # the cluster has formed: every tracker sees all
            wait_live(c, n, [p for p in range(1, TRACKERS + 1) if p != n])
        stop = threading.Event()
        workers = [Worker(c, i, stop) for i in range(WORKERS)]
        for worker in workers:
            worker.start()
        log: list[str] = []
        chaos_stop = threading.Event()
        chaos_thread = threading.Thread(target=chaos, args=(c, random.Random(SEED), chaos_stop,
                                                            log), daemon=True)
        chaos_thread.start()
        time.sleep(CHAOS_SECONDS)  # the length of the experiment, not a wait for a condition
        stop.set()
        for worker in workers:
            worker.join(30)
        chaos_stop.set()
        chaos_thread.join(60)
        print(f"seed {SEED}: {sum(w.commands for w in workers)} commands; chaos: {log}")
        for worker in workers:
            assert worker.error is None, f"{worker.name}: {worker.error!r}"
        assert not chaos_thread.is_alive()
        quiet = time.monotonic()
        wait_for(lambda: converged(c), 2.0, "every tracker to report the same digest")
        print(f"converged {time.monotonic() - quiet:.2f} s after the last tracker came back")
        probe = workers[0].direct
        for n in range(1, TRACKERS + 1):
            groups = {g["group"] for g in probe.ok(n, "list_groups")}
            for worker in workers:
                missing = set(worker.acked_groups) - groups
                assert not missing, f"tracker {n} lost acknowledged groups {missing}"
        assert sum(len(w.acked_groups) for w in workers) > 0
