"""Download throughput: real tracker and clients on 127.0.0.1, against a raw baseline.

    python -m bench.download [--size-mb 1024] [--downloaders 4] [--rounds 3]

Prints, for one seeder -> one downloader and one seeder -> N downloaders at once:
MB/s, the ratio to the baseline measured in the same round (the same bytes sent raw
over pyzmq DEALER -> ROUTER with SHA1 computed on the receiving side), and each
downloader's peak RSS.  Each round measures all three back to back; the last lines
give the median ratio over the rounds, since one round on a shared machine can be
off by 15% either way.  Beside each measurement it prints how much of the two cores
sat idle (and how much of that waiting on the disk) and how much time the hypervisor
stole for other machines (a round with much stolen ran on a busy host).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peers.shares import MTIME_MARGIN_NS  # noqa: E402
from tests.procs import ClientProc, cluster, free_port  # noqa: E402

CHUNK = 512 * 1024

_SENDER = """
import sys, zmq
path, endpoint, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.connect(endpoint)
buf = bytearray(chunk)
with open(path, "rb", buffering=0) as f:
    while (n := f.readinto(buf)):
        sock.send(memoryview(buf)[:n], copy=True)
sock.send(b"")
sock.close(linger=-1)
ctx.term()  # waits until every queued frame has gone out
"""


def make_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes; returns their SHA1."""
    digest = hashlib.sha1()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 8 * 1024 * 1024))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return digest.hexdigest()


def baseline(path: Path, size: int) -> float:
    """MB/s of the raw transfer: DEALER sender process -> ROUTER here, SHA1 on receipt."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sender = subprocess.Popen([sys.executable, "-c", _SENDER, str(path),
                               f"tcp://127.0.0.1:{port}", str(CHUNK)])
    digest = hashlib.sha1()
    received = 0
    start = 0.0
    ticks: list[int] = []
    while True:
        _ident, frame = sock.recv_multipart(copy=False)
        if not start:
            start = time.perf_counter()
            ticks = machine_times()
        if not len(frame):
            break
        digest.update(frame.buffer)
        received += len(frame)
    elapsed = time.perf_counter() - start
    spent = idle_and_stolen(ticks, machine_times())
    sender.wait()
    sock.close(0)
    assert received == size
    print(f"  (baseline: {spent})")
    return size / elapsed / 1e6


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_times() -> list[int]:
    """The machine's CPU time so far, in clock ticks, as /proc/stat's first line counts it
    (user, nice, system, idle, iowait, irq, softirq, steal)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def idle_and_stolen(before: list[int], after: list[int]) -> str:
    """How much of the cores sat idle (or waited on the disk), and how much the
    hypervisor gave to other machines, between two ``machine_times``: a round with
    much stolen ran on a busy host and says little."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(spent) or 1
    return (f"machine idle {(spent[3] + spent[4]) / total:.0%} (waiting on the disk "
            f"{spent[4] / total:.0%}), stolen {spent[7] / total:.0%}")


def member(c: object, client: ClientProc, name: str, owner: ClientProc | None) -> None:
    client.ok(f"create_user {name} pw")
    client.ok(f"login {name} pw")
    if owner is None:
        client.ok("create_group bench")
    else:
        client.ok("join_group bench")
        owner.ok(f"accept_request bench {name}")


def run_swarm(root: Path, source: Path, size: int, downloaders: int) -> tuple[float, list[float]]:
    """Seconds until every downloader has the whole verified file, and their peak RSS."""
    work = Path(tempfile.mkdtemp(prefix=f"swarm-{downloaders}-", dir=root))
    with cluster(work, trackers=1) as c:
        seeder = c.client("seeder")
        member(c, seeder, "seeder", None)
        seeder.ok(f"upload_file {source} bench", timeout=120)
        clients = []
        for i in range(downloaders):
            d = c.client(f"d{i}", extra_args=["-v"])  # its log says where the time went
            member(c, d, f"d{i}", seeder)
            (work / f"out{i}").mkdir()
            clients.append(d)
        cpu_before = [cpu_seconds(p.proc.pid) for p in [seeder, *clients]]
        ticks = machine_times()
        start = time.perf_counter()
        for i, d in enumerate(clients):
            d.ok(f"download_file bench {source.name} {work / f'out{i}'}")
        for d in clients:
            result = d.ok("wait", timeout=600)
            assert all(r["state"] == "complete" for r in result), result
        elapsed = time.perf_counter() - start
        spent = idle_and_stolen(ticks, machine_times())
        cpu = [cpu_seconds(p.proc.pid) - b
               for p, b in zip([seeder, *clients], cpu_before, strict=True)]
        print(f"  ({downloaders} downloader(s): CPU seconds seeder {cpu[0]:.2f}, downloaders "
              + ", ".join(f"{x:.2f}" for x in cpu[1:]) + f", wall {elapsed:.2f}; {spent})")
        rss = [peak_rss_mb(d.proc.pid) for d in clients]
        for i in range(downloaders):
            for line in (work / f"d{i}.log").read_text().splitlines():
                if "fetched in" in line:
                    print(f"  (d{i}: {line.split(': ', 2)[-1]})")
        for i in range(downloaders):
            out = work / f"out{i}" / source.name
            assert out.stat().st_size == size
            out.unlink()
    return elapsed, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MiB")
    parser.add_argument("--downloaders", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mb * 1024 * 1024
    n = args.downloaders
    free_port()  # the harness's port allocator is ready
    one_ratios: list[float] = []
    many_ratios: list[float] = []
    peaks: list[float] = []
    with tempfile.TemporaryDirectory(prefix="p2p-bench-") as tmp:
        root = Path(tmp)
        source = root / "payload.bin"
        make_file(source, size)
        # Like a file people share, the payload must be older than the filesystem's
        # timestamp granularity, or the seeder (rightly) checks every piece it sends.
        time.sleep(MTIME_MARGIN_NS / 1e9 + 0.1)
        for r in range(1, args.rounds + 1):
            base = baseline(source, size)
            print(f"round {r}: baseline raw DEALER->ROUTER + sha1: {base:8.1f} MB/s")
            t1, rss1 = run_swarm(root, source, size, 1)
            mbps1 = size / t1 / 1e6
            one_ratios.append(mbps1 / base)
            print(f"round {r}: 1 seeder -> 1 downloader:        {mbps1:8.1f} MB/s  "
                  f"ratio {mbps1 / base:.2f} of baseline  peak RSS {rss1[0]:.0f} MB  "
                  f"({args.size_mb} MiB in {t1:.2f} s)")
            tn, rssn = run_swarm(root, source, size, n)
            mbpsn = n * size / tn / 1e6
            many_ratios.append(mbpsn / mbps1)
            peaks += [*rss1, *rssn]
            print(f"round {r}: 1 seeder -> {n} downloaders:       {mbpsn:8.1f} MB/s aggregate  "
                  f"ratio {mbpsn / mbps1:.2f} of one-to-one  peak RSS max {max(rssn):.0f} MB  "
                  f"(all done in {tn:.2f} s)")
    print(f"median of {args.rounds} rounds: 1 -> 1 {statistics.median(one_ratios):.2f} of baseline "
          f"({' / '.join(f'{x:.2f}' for x in one_ratios)}); 1 -> {n} "
          f"{statistics.median(many_ratios):.2f} of one-to-one "
          f"({' / '.join(f'{x:.2f}' for x in many_ratios)}); "
          f"downloader peak RSS max {max(peaks):.0f} MB")


if __name__ == "__main__":
    main()
