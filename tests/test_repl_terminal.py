"""The interactive REPL as a person sees it: a real client on a pseudo-terminal."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from tests.procs import ROOT, Cluster, cluster, free_port, wait_for

pytestmark = pytest.mark.timeout(60)

PROMPT = "p2p> "
_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_]|\][^\x07]*\x07)")


# Runs in the child before the client: make the terminal (fd 0) the controlling tty of
# this new session, so Ctrl-C typed there is a SIGINT, then become the client.
_TAKE_TTY = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
             "os.execv(sys.argv[1], sys.argv[1:])")


class Terminal:
    """A child process whose stdin, stdout and stderr (unless given a file for it) are a
    pseudo-terminal.

    Started with subprocess (no fork in Python code: the test process has threads).
    """

    def __init__(self, argv: list[str], cwd: Path, stderr: Path | None = None) -> None:
        env = dict(os.environ, TERM="xterm-256color", PYTHONUNBUFFERED="1",
                   PYTHONFAULTHANDLER="1",  # a hung client shows its threads on SIGABRT
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        master, slave = pty.openpty()
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
        err = open(stderr, "ab") if stderr else None  # noqa: SIM115 (handed to the child)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _TAKE_TTY, *argv], stdin=slave, stdout=slave,
                stderr=err or slave, cwd=cwd, env=env, start_new_session=True)
        finally:
            os.close(slave)
            if err:
                err.close()
        self.fd = master
        self.raw = b""
        self.seen = 0

    @property
    def text(self) -> str:
        return _ESCAPES.sub("", self.raw.decode(errors="replace")).replace("\r", "")

    def _read(self, timeout: float) -> bool:
        """Read what is there within ``timeout``; False once the terminal is closed."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed its end
            return False
        self.raw += chunk
        return bool(chunk)

    def _drain(self) -> None:
        """Read whatever is there now, without waiting."""
        while select.select([self.fd], [], [], 0)[0] and self._read(0):
            pass

    def expect(self, marker: str, timeout: float = 15) -> str:
        """Everything printed after the last expect up to ``marker``; consumes both."""
        deadline = time.monotonic() + timeout
        while True:
            at = self.text.find(marker, self.seen)
            if at >= 0:
                before = self.text[self.seen:at]
                self.seen = at + len(marker)
                return before
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.2)):
                raise AssertionError(f"no {marker!r} within {timeout} s; screen so far:\n"
                                     f"{self.text[self.seen:]!r}\n{self._proc_state()}")

    def _proc_state(self) -> str:
        """The child's state, for a failure message (stopped? waiting on what?)."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text().split()
            wchan = Path(f"/proc/{self.proc.pid}/wchan").read_text()
        except OSError:
            return f"child exit status {self.proc.poll()}"
        os.kill(self.proc.pid, signal.SIGABRT)  # PYTHONFAULTHANDLER: dump every thread
        with contextlib.suppress(AssertionError):
            wait_for(self._exited, 5, "the dump")
        self._drain()
        return (f"child state {stat[2]} pgrp {stat[4]} tpgid {stat[7]} wchan {wchan}\n"
                + self.text[-6000:])

    def interrupt(self) -> None:
        """Type Ctrl-C once the client waits for a key.

        CPython's readline notices a signal only while it blocks in select(); one that
        lands just before (the moment the prompt is drawn) waits for the next key.
        """
        wchan = Path(f"/proc/{self.proc.pid}/wchan")
        if wchan.exists():
            wait_for(lambda: any(w in wchan.read_text() for w in ("poll", "select")), 10,
                     "the client to wait for input")
        self.type("\x03")

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode())

    def command(self, line: str) -> list[str]:
        """Type a line at the prompt; the lines printed before the next prompt."""
        self.type(line + "\n")
        out = self.expect(PROMPT).splitlines()
        assert out and out[0].strip() == line.strip(), f"echo of {line!r} missing: {out}"
        return out[1:]

    def settled_screen(self, shows: Callable[[list[str]], bool], timeout: float = 10
                       ) -> list[str]:
        """The screen's rows once ``shows`` holds for them (the terminal's output can
        arrive in pieces); on a timeout, fail showing the rows."""
        def rows() -> list[str]:
            self._drain()
            return Screen(132).feed(self.raw.decode(errors="replace")).lines()

        try:
            return wait_for(lambda: shows(rows()) and rows(), timeout, "the screen")
        except AssertionError:
            raise AssertionError("\n".join(["screen:", *rows()])) from None

    def _exited(self) -> bool:
        self._drain()  # so the child never blocks on output
        return self.proc.poll() is not None

    def wait(self, timeout: float = 15) -> int:
        wait_for(self._exited, timeout, "the client to exit")
        return int(self.proc.returncode)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.fd)


_CONTROL = re.compile(r"\x1b\[([0-?]*)[ -/]*([@-~])|\x1b\][^\x07]*\x07|\x1b.|[\x00-\x1f]")


class Screen:
    """Just enough of a terminal to see what a person sees: text that wraps at the right
    margin, CR, LF, BS, and the CSI sequences readline and the REPL use (cursor moves,
    erasing, inserting and deleting characters); other sequences change nothing."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows: list[list[str]] = [[]]
        self.row = self.col = 0
        self.pending_wrap = False  # at the margin: the next character goes on a new row

    def feed(self, text: str) -> Screen:
        at = 0
        for m in _CONTROL.finditer(text):
            for ch in text[at:m.start()]:
                self._put(ch)
            at = m.end()
            if m.group(2) is not None:
                self._csi(m.group(1), m.group(2))
            elif m.group() == "\r":
                self.col, self.pending_wrap = 0, False
            elif m.group() == "\n":
                self._to_row(self.row + 1)
            elif m.group() == "\b":
                self.col, self.pending_wrap = max(0, self.col - 1), False
        for ch in text[at:]:
            self._put(ch)
        return self

    def lines(self) -> list[str]:
        return ["".join(r).rstrip() for r in self.rows]

    def _to_row(self, row: int) -> None:
        self.row, self.pending_wrap = max(0, row), False
        while len(self.rows) <= self.row:
            self.rows.append([])

    def _cells(self) -> list[str]:
        cells = self.rows[self.row]
        cells.extend(" " * (self.width - len(cells)))
        return cells

    def _put(self, ch: str) -> None:
        if self.pending_wrap:
            self._to_row(self.row + 1)
            self.col = 0
        self._cells()[self.col] = ch
        if self.col == self.width - 1:
            self.pending_wrap = True
        else:
            self.col += 1

    def _csi(self, params: str, final: str) -> None:
        n = int(params) if params.isdigit() else 0
        count = max(n, 1)
        if final in "ABCD":
            self.pending_wrap = False
        if final == "A":
            self._to_row(self.row - count)
        elif final == "B":
            self._to_row(self.row + count)
        elif final == "C":
            self.col = min(self.width - 1, self.col + count)
        elif final == "D":
            self.col = max(0, self.col - count)
        elif final == "K" and n == 0:
            self.rows[self.row] = self._cells()[:self.col]
        elif final == "J" and n == 0:
            self.rows[self.row] = self._cells()[:self.col]
            del self.rows[self.row + 1:]
        elif final == "@":
            cells = self._cells()
            cells[self.col:self.col] = " " * count
            del cells[self.width:]
        elif final == "P":
            cells = self._cells()
            del cells[self.col:self.col + count]


def test_screen_model() -> None:
    """The model itself: wrapping at the margin, moves, erasing, insertion."""
    screen = Screen(10).feed("p2p> abcdefghij\rX\x1b[1AY\x1b[2CZ\x1b[1@_\n\rnext\x1b[2D\x1b[K!")
    assert screen.lines() == ["pYp>Z_abcd", "ne!"]
    assert Screen(4).feed("abcd \r").lines() == ["abcd", ""]
    assert Screen(4).feed("ab\ncd\x1b[1A\r\x1b[J").lines() == [""]


@contextlib.contextmanager
def client_terminal(info: Path, tmp_path: Path, port: int | None = None,
                    stderr: Path | None = None) -> Iterator[Terminal]:
    """A client REPL on a pseudo-terminal, closed at the end; on a failure, the end of
    what it printed goes to stderr."""
    term = Terminal([sys.executable, "-m", "peers", f"127.0.0.1:{port or free_port()}",
                     str(info), "--data-dir", str(tmp_path / "tty-client")],
                    cwd=tmp_path, stderr=stderr)
    try:
        yield term
    except BaseException:
        sys.stderr.write(f"--- terminal\n{term.text[-4000:]}\n")
        raise
    finally:
        term.close()


@pytest.fixture
def terminal(one_tracker: Cluster, tmp_path: Path) -> Iterator[Terminal]:
    with client_terminal(one_tracker.info, tmp_path) as term:
        yield term


def test_prompt_table_errors_and_ctrl_d(one_tracker: Cluster, terminal: Terminal) -> None:
    c = one_tracker
    assert terminal.expect(PROMPT).strip() == ""  # nothing before the first prompt

    assert terminal.command("create_user alice pw") == ["user alice created"]
    assert terminal.command("list_groups") == ["error: not logged in: use login "
                                               "<user_id> <password>"]
    assert terminal.command("login alice pw") == ["logged in as alice"]
    assert terminal.command("list_groups") == ["no groups yet"]
    assert terminal.command("create_group g1") == ["group g1 created; you are its owner"]
    assert terminal.command("") == []  # an empty line just prompts again
    assert terminal.command("show_downloads") == ["no downloads"]
    assert terminal.command("wait") == ["no downloads running"]

    other = c.client("bob")
    other.ok("create_user bob_the_long_named pw")
    other.ok("login bob_the_long_named pw")
    other.ok("create_group a_much_longer_group_name")
    other.ok("join_group g1")

    # list_groups: a table with a header and aligned columns.
    table = terminal.command("list_groups")
    assert [row.split() for row in table] == [
        ["GROUP", "OWNER", "MEMBERS"],
        ["a_much_longer_group_name", "bob_the_long_named", "1"],
        ["g1", "alice", "1"],
    ]
    header = table[0]
    for row in table[1:]:
        assert row.index(row.split()[1]) == header.index("OWNER"), table
        assert row.rindex(row.split()[2]) == header.index("MEMBERS"), table

    assert terminal.command("list_requests g1") == ["bob_the_long_named"]
    assert terminal.command("accept_request g1 bob_the_long_named") == [
        "bob_the_long_named is now a member of g1"]

    # Every failure is exactly one line starting with "error:".
    for line in ("join_group nope", "accept_request g1 nobody", "frobnicate",
                 "create_group", "login alice pw", "create_group g1",
                 "list_requests a_much_longer_group_name", "help nope"):
        out = terminal.command(line)
        assert len(out) == 1 and out[0].startswith("error: "), f"{line!r} -> {out}"
    assert terminal.command("create_group") == ["error: usage: create_group <group_id>"]

    helped = terminal.command("help")
    assert any("accept_request <group_id> <user_id>" in line for line in helped)
    assert terminal.command("help login")[0] == "usage: login <user_id> <password>"

    # Ctrl-D at the prompt: log out and exit 0.
    assert c.sessions() == 2
    terminal.type("\x04")
    assert terminal.wait() == 0
    assert "Traceback" not in terminal.text
    assert c.sessions() == 1


def test_ctrl_c_at_the_prompt_and_exit(one_tracker: Cluster, terminal: Terminal) -> None:
    terminal.expect(PROMPT)
    terminal.type("create_user ca pw\n")
    terminal.expect("user ca created")
    terminal.expect(PROMPT)
    terminal.type("half a line")
    terminal.expect("half a line")
    terminal.interrupt()  # Ctrl-C drops the line and gives a new prompt
    terminal.expect(PROMPT)
    assert terminal.command("login ca pw") == ["logged in as ca"]
    terminal.interrupt()
    terminal.expect(PROMPT)
    assert terminal.command("list_groups") == ["no groups yet"]
    assert one_tracker.sessions() == 1
    terminal.type("exit\n")
    terminal.expect("bye")
    assert terminal.wait() == 0
    assert "Traceback" not in terminal.text
    assert one_tracker.sessions() == 0


def tracker_in_use(term: Terminal) -> int:
    """The tracker the client talks to: the last one a failover notice moved it to, else
    the first listed."""
    used = re.findall(r"now using tracker (\d+)", term.text)
    return int(used[-1]) if used else 1


def test_a_notice_leaves_the_line_being_typed_as_it_is(tmp_path: Path) -> None:
    """A notice that comes while the user types is printed above the line, and the line
    is drawn again as readline has it: with the cursor where it was (so typing goes in
    there, on the screen as in the line), and with no stale row of a long line left."""
    with cluster(tmp_path, trackers=3) as c, client_terminal(c.info, tmp_path) as term:
        term.expect(PROMPT)
        # On a loaded machine a first request can already fail over (its answer then
        # follows a notice): the tracker to kill is the one the client uses.
        assert term.command("create_user ann pw")[-1] == "user ann created"
        assert term.command("login ann pw")[-1] == "logged in as ann"

        # The cursor moved back six characters; a failover notice comes.
        term.type("list_groups" + "\x02" * 6)  # Ctrl-B: one character left
        term.expect("list_groups")
        first = tracker_in_use(term)
        c.tracker(first).kill()
        term.expect("[failover]")
        term.expect("p2p> list_groups")
        term.type("ZZ")
        screen = term.settled_screen(lambda rows: rows[-1] == "p2p> list_ZZgroups")
        assert screen[-2].startswith(f"[failover] tracker {first} "), screen
        term.type("\n")  # what runs is what the screen shows
        assert "error: unknown command 'list_ZZgroups'" in term.expect(PROMPT)

        # A line over two rows, the cursor back on its first row; another notice.
        long_line = "list_groups " + "x" * 180
        term.type(long_line + "\x01" + "\x06" * 2)  # Ctrl-A: to the start; Ctrl-F
        term.expect("x" * 50)
        second = tracker_in_use(term)
        c.tracker(second).kill()
        term.expect("[failover]")
        term.expect("p2p> list_groups")
        term.type("QQ")
        shown = "p2p> liQQst_groups " + "x" * 180
        screen = term.settled_screen(lambda rows: rows[-2:] == [shown[:132], shown[132:]])
        assert screen[-3].startswith(f"[failover] tracker {second} "), screen
        assert screen[-4].startswith("error: unknown command"), screen
        term.type("\x05\x15")  # Ctrl-E, Ctrl-U: the line is dropped
        term.type("exit\n")
        term.expect("bye")
        assert term.wait() == 0


def test_with_stderr_elsewhere_a_notice_leaves_the_terminal_alone(tmp_path: Path) -> None:
    """With stderr sent to a file, a notice goes there as a plain line: nothing is drawn
    again on the terminal, where the line being typed stays as it was."""
    log = tmp_path / "client.err"
    with cluster(tmp_path, trackers=2) as c, client_terminal(c.info, tmp_path,
                                                             stderr=log) as term:
        term.expect(PROMPT)
        assert term.command("create_user ann pw") == ["user ann created"]
        assert term.command("login ann pw") == ["logged in as ann"]
        term.type("list_gr")
        term.expect("list_gr")
        c.tracker(1).kill()
        wait_for(lambda: "[failover]" in log.read_text(), 10, "the failover notice")
        term.type("oups")
        screen = term.settled_screen(lambda rows: "oups" in rows[-1])
        assert screen[-1] == "p2p> list_groups", screen
        assert [line.split(" tracker")[0] for line in log.read_text().splitlines()] == [
            "[failover]"]
        term.type("\n")
        assert "no groups yet" in term.expect(PROMPT)


def test_a_log_line_from_a_background_thread_leaves_the_line_being_typed_as_it_is(
        one_tracker: Cluster, tmp_path: Path) -> None:
    """A warning logged while the user types (here: a stranger's garbled request to the
    peer server) is printed above the line being typed, which is drawn again."""
    port = free_port()
    stranger: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    stranger.setsockopt(zmq.LINGER, 0)
    with client_terminal(one_tracker.info, tmp_path, port=port) as term, stranger:
        term.expect(PROMPT)
        term.type("list_gr")
        term.expect("list_gr")
        stranger.connect(f"tcp://127.0.0.1:{port}")
        stranger.send(b"\xc1 not msgpack")
        term.expect("bad peer request")
        term.expect("p2p> list_gr")  # drawn again
        term.type("oups")
        screen = term.settled_screen(lambda rows: rows[-1] == "p2p> list_groups")
        assert "WARNING peers.piece_server: bad peer request" in screen[-2], screen
        assert not any(PROMPT in row for row in screen[:-1]), screen
        term.type("\n")
        assert "error: not logged in" in term.expect(PROMPT)
        term.type("exit\n")
        term.expect("bye")
        assert term.wait() == 0


def test_ctrl_c_during_a_command_answers_on_a_row_of_its_own(
        one_tracker: Cluster, terminal: Terminal) -> None:
    terminal.expect(PROMPT)
    assert terminal.command("create_user cb pw") == ["user cb created"]
    one_tracker.tracker(1).signal(signal.SIGSTOP)  # the next command waits for it
    try:
        terminal.type("login cb pw\n")
        terminal.expect("login cb pw")
        terminal.interrupt()
        screen = terminal.settled_screen(lambda rows: rows[-1] == PROMPT.rstrip())
    finally:
        one_tracker.tracker(1).signal(signal.SIGCONT)
    # The terminal echoes ^C where the cursor is; the answer starts a row of its own.
    assert screen[-2] == "error: interrupted", screen
    terminal.type("exit\n")
    terminal.expect("bye")
    assert terminal.wait() == 0
