"""The allocator settings for pieces: a piece comes from the heap, free pieces are kept
for the next ones, and given back when asked.  Checked in fresh processes, since
the settings are process-wide."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from peers import malloc_tuning

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's"),
]

# Helpers for the child: whether an object lies in the main heap (a malloc served by
# the arena, not by a mapping of its own), and the resident set size.
_PRELUDE = """
import ctypes, sys
sys.path.insert(0, {root!r})
from peers import malloc_tuning
PIECE = 512 * 1024

def in_heap(obj):
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            return start <= id(obj) < end
    return False

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
"""


def _run(body: str) -> str:
    code = _PRELUDE.format(root=str(ROOT)) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=50, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_piece_comes_from_the_heap_once_tuned() -> None:
    out = _run("""
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 128 * 1024)  # glibc's starting threshold, whatever ran before
        piece = bytes(PIECE)
        untuned = in_heap(piece)
        del piece
        assert malloc_tuning.tune_for_pieces()
        piece = bytes(PIECE)
        print(untuned, in_heap(piece))
    """)
    assert out == "False True"  # a mapping of its own before, the heap after


def test_free_pieces_are_kept_then_given_back() -> None:
    out = _run("""
        assert malloc_tuning.tune_for_pieces()
        base = rss_kib()
        pieces = [b"\x01" * PIECE for _ in range(40)]  # 20 MiB, every page touched
        del pieces
        kept = rss_kib() - base
        malloc_tuning.release_free_memory()
        print(kept // 1024, (rss_kib() - base) // 1024)
    """)
    kept_mib, after_mib = map(int, out.split())
    assert kept_mib >= 18, out  # under KEEP_FREE_BYTES: no trim, no refault next time
    assert after_mib <= 4, out


def test_other_libcs_keep_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc_tuning.platform, "libc_ver", lambda: ("musl", "1.2"))
    malloc_tuning._glibc.cache_clear()  # what this process found before does not count
    try:
        assert malloc_tuning.tune_for_pieces() is False
        malloc_tuning.release_free_memory()  # nothing to call, and no error
    finally:
        malloc_tuning._glibc.cache_clear()  # later tests see the real libc again
