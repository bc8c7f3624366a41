"""The command line: parsing, help, and human or ``--json`` output."""

from __future__ import annotations

import ctypes
import functools
import io
import json
import locale
import logging
import os
import shutil
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from p2p.errors import LocalError, ProtocolError
from peers.client import Client

log = logging.getLogger(__name__)
PROMPT = "p2p> "


@dataclass(frozen=True)
class Command:
    name: str
    params: tuple[str, ...]
    summary: str
    run: Callable[[Client, list[str]], Any]
    optional: tuple[str, ...] = ()  # given all together or not at all

    @property
    def usage(self) -> str:
        words = [self.name, *(f"<{p}>" for p in self.params)]
        if self.optional:
            words.append("[" + " ".join(f"<{p}>" for p in self.optional) + "]")
        return " ".join(words)

    def arity(self) -> tuple[int, ...]:
        """The argument counts this command accepts."""
        if self.optional:
            return (len(self.params), len(self.params) + len(self.optional))
        return (len(self.params),)


def _group(op: str) -> Callable[[Client, list[str]], Any]:
    return lambda c, a: c.group_call(op, a[0])


def _request(op: str) -> Callable[[Client, list[str]], Any]:
    return lambda c, a: c.group_call(op, a[0], user=a[1])


COMMANDS: dict[str, Command] = {c.name: c for c in [
    Command("create_user", ("user_id", "password"), "register an account",
            lambda c, a: c.create_user(a[0], a[1])),
    Command("login", ("user_id", "password"), "log this client in",
            lambda c, a: c.login(a[0], a[1])),
    Command("logout", (), "log out; your files stop being shared until the next login",
            lambda c, a: c.logout()),
    Command("create_group", ("group_id",), "create a group; you become its owner",
            _group("create_group")),
    Command("join_group", ("group_id",), "ask the owner of a group to let you in",
            _group("join_group")),
    Command("leave_group", ("group_id",), "leave a group (an owner hands it on)",
            lambda c, a: c.leave_group(a[0])),
    Command("list_requests", ("group_id",), "pending join requests (owner only)",
            _group("list_requests")),
    Command("accept_request", ("group_id", "user_id"), "let a requester into your group",
            _request("accept_request")),
    Command("reject_request", ("group_id", "user_id"), "drop a join request",
            _request("reject_request")),
    Command("list_groups", (), "every group in the network, with its owner",
            lambda c, a: c.list_groups()),
    Command("list_files", ("group_id",), "files shared in a group by online members",
            lambda c, a: c.list_files(a[0])),
    Command("upload_file", ("file_path", "group_id"), "share a file in a group",
            lambda c, a: c.upload_file(a[0], a[1])),
    Command("download_file", ("group_id", "file_name", "destination_path"),
            "fetch a file in the background (destination: a directory or a file path)",
            lambda c, a: c.download_file(a[0], a[1], a[2])),
    Command("show_downloads", (), "progress of this client's downloads",
            lambda c, a: c.show_downloads()),
    Command("cancel_download", ("group_id", "file_name"),
            "stop a running download for good and delete its partial file",
            lambda c, a: c.cancel_download(a[0], a[1])),
    Command("stop_share", ("group_id", "file_name"), "stop sharing a file",
            lambda c, a: c.stop_share(a[0], a[1])),
    Command("list_shares", (), "what this client shares and how many pieces it has sent",
            lambda c, a: c.list_shares()),
    Command("wait", (), "block until that download (or every running one) ends",
            lambda c, a: c.wait(*a) if a else c.wait(), optional=("group_id", "file_name")),
]}
_LOCAL = ("help", "exit")


def _human(name: str, args: list[str], result: Any) -> str:
    """The line(s) a person sees for a successful command."""
    if name == "list_groups":
        if not result:
            return "no groups yet"
        rows = [("GROUP", "OWNER", "MEMBERS")] + [
            (g["group"], g["owner"], str(g["members"])) for g in result
        ]
        return _table(rows)
    if name == "list_requests":
        return "\n".join(result) if result else f"no pending requests for {args[0]}"
    if name == "help":
        return str(result["text"])
    if name == "login":
        lines = [f"logged in as {args[0]}"]
        if result["reshared"]:
            lines.append(f"sharing again: {', '.join(result['reshared'])}")
        if result["dropped"]:
            # Why differs (the file changed, the user left the group...): the
            # share_dropped notice printed for each says it.
            lines.append(f"not shared again: {', '.join(result['dropped'])} "
                         "(the notices above say why)")
        if result["resumed"]:
            lines.append(f"resuming downloads: {', '.join(result['resumed'])}")
        return "\n".join(lines)
    if name == "list_files":
        if not result:
            return f"no files shared in {args[0]} by online members"
        return _table([("NAME", "SIZE", "SEEDERS", "SHA1")] + [
            (f["name"], _size(f["size"]), str(f["seeders"]), f["sha1"]) for f in result])
    if name == "upload_file":
        return (f"sharing {result['name']} in {args[1]}: {_size(result['size'])}, "
                f"{result['pieces']} pieces, sha1 {result['sha1']}")
    if name == "download_file":
        return f"downloading {args[1]} to {result['path']} (show_downloads for progress)"
    if name in ("show_downloads", "wait", "cancel_download"):
        if result:
            return "\n".join(_download_line(d) for d in result)
        return "no downloads" if name == "show_downloads" else "no downloads running"
    if name == "list_shares":
        if not result:
            return "not sharing anything"
        return _table([("GROUP", "NAME", "SIZE", "STATE", "SERVED")] + [
            (s["group"], s["name"], _size(s["size"]),
             "complete" if s["complete"] else "partial", f"{s['served']} pieces")
            for s in result])
    messages = {
        "create_user": "user {0} created",
        "login": "logged in as {0}",
        "logout": "logged out",
        "create_group": "group {0} created; you are its owner",
        "join_group": "join request sent to the owner of {0}",
        "leave_group": "you left group {0}",
        "accept_request": "{1} is now a member of {0}",
        "reject_request": "request from {1} to join {0} rejected",
        "exit": "bye",
        "stop_share": "stopped sharing {1} in {0}",
    }
    return messages.get(name, "ok").format(*args)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _download_line(d: dict[str, Any]) -> str:
    where = f"{d['group']} {d['file']} -> {d['path']}"
    if d["state"] == "complete":
        return f"[C] {where}"
    if d["state"] == "failed":
        return f"[F] {where}: {d['error']}"
    detail = d["waiting"] or f"{d['rate'] / 1e6:.1f} MB/s from {d['peers']} peer(s)"
    return f"[D] {d['progress'] * 100:5.1f}%  {where}  {detail}"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def help_text(topic: str | None = None) -> dict[str, Any]:
    """``help`` and ``help <command>``: usage lines, as text and as data."""
    if topic is not None:
        if topic in _LOCAL:
            usage = {"help": "help [command]", "exit": "exit"}[topic]
            summary = {"help": "show usage", "exit": "log out and quit"}[topic]
        elif topic in COMMANDS:
            usage, summary = COMMANDS[topic].usage, COMMANDS[topic].summary
        else:
            raise LocalError(f"unknown command {topic!r}; try help", "unknown_command")
        return {"usage": usage, "summary": summary, "text": f"usage: {usage}\n  {summary}"}
    lines = [f"  {c.usage:<48} {c.summary}" for c in COMMANDS.values()]
    lines += [f"  {'help [command]':<48} show usage", f"  {'exit':<48} log out and quit"]
    return {"commands": [*COMMANDS, *_LOCAL], "text": "commands:\n" + "\n".join(lines)}


def _columns(text: str) -> int:
    """How many terminal columns readline gives ``text`` (a wide character takes two, a
    control character shows as ^X)."""
    width = 0
    for ch in text:
        if ord(ch) < 32 or ord(ch) == 127 or unicodedata.east_asian_width(ch) in ("W", "F"):
            width += 2
        elif not unicodedata.combining(ch):
            width += 1
    return width


@functools.cache
def _readline_point() -> ctypes.c_int | None:
    """readline's ``rl_point`` (the cursor's byte offset in the line being typed), which
    the readline module does not expose; None where the library cannot be reached."""
    try:
        import readline

        return ctypes.c_int.in_dll(ctypes.CDLL(readline.__file__), "rl_point")
    except (ImportError, AttributeError, OSError, ValueError):
        return None


def _typed() -> tuple[str, str]:
    """The line being typed at the prompt, split at readline's cursor (all of it before
    the cursor where the cursor cannot be known)."""
    import readline

    line = readline.get_line_buffer()
    point = _readline_point()
    if point is None:
        return line, ""
    # The readline module decodes the line the same way, from the same bytes.
    encoding = locale.getpreferredencoding(False)
    raw = line.encode(encoding, "surrogateescape")
    before = raw[:max(0, point.value)].decode(encoding, "surrogateescape")
    return before, line[len(before):]


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):  # closed, or not a real stream
        return False


def _terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return shutil.get_terminal_size().columns


def _up(rows: int) -> str:
    return f"\x1b[{rows}A" if rows > 0 else ""


def _right(columns: int) -> str:
    return f"\x1b[{columns}C" if columns > 0 else ""


class _NoticeStream:
    """Where log handlers write while the REPL reads from a terminal: each record is
    printed as a notice, above the line being typed."""

    def __init__(self, repl: Repl) -> None:
        self._repl = repl

    def write(self, text: str) -> int:
        if text.strip():
            self._repl.notice(text.rstrip("\n"))
        return len(text)

    def flush(self) -> None:
        """Each record is flushed as it is written."""


class Repl:
    """Reads commands, runs them on a Client, prints one answer per command."""

    def __init__(self, client: Client, out: TextIO, err: TextIO, json_mode: bool) -> None:
        self.client = client
        self.out, self.err = out, err
        self.json_mode = json_mode
        # Reentrant: a record logged while a line is being printed must not deadlock.
        self._print_lock = threading.RLock()
        self._at_prompt = False  # a terminal user is typing after "p2p> "

    def event(self, name: str, data: dict[str, Any]) -> None:
        """Something the client wants to say outside a command's answer."""
        if self.json_mode:
            self._emit(json.dumps({"event": name, **data}))
        else:
            self.notice(f"[{name}] {data.get('message', '')}")

    def notice(self, text: str) -> None:
        """Print ``text`` on stderr, outside any command's answer: above the line being
        typed when the user is at the prompt."""
        with self._print_lock:
            if self._at_prompt:
                self._print_above_prompt(text)
            else:
                print(text, file=self.err, flush=True)

    def _print_above_prompt(self, text: str) -> None:
        """Print ``text`` where the line being typed was, then draw that line again below
        it with the cursor where readline has it: the screen shows what Enter will run,
        and readline, which moves the cursor relative to where it left it, edits the
        right characters (callers hold the print lock)."""
        before, after = _typed()
        width = _terminal_width(self.out)
        cursor = _columns(PROMPT + before)  # columns from the start of the prompt
        end = cursor + _columns(after)
        # From the cursor up to the prompt's first row; clear every row the line took.
        self.err.write("\r" + _up(cursor // width) + "\x1b[J" + text + "\n")
        self.err.flush()
        # A line that ends at the right margin leaves the terminal's cursor there: a
        # space takes it to the next row, where readline counts it.
        wrap = " \r" if end % width == 0 else ""
        self.out.write(PROMPT + before + after + wrap + "\r"
                       + _up(end // width - cursor // width) + _right(cursor % width))
        self.out.flush()

    def execute(self, line: str) -> bool:
        """Run one line; returns False when the REPL should stop."""
        words = line.split()
        if not words:
            return True
        name, args = words[0], words[1:]
        try:
            line.encode()
        except UnicodeEncodeError:  # undecodable input bytes, kept by surrogateescape
            self._answer_error(name, LocalError("the line is not valid UTF-8", "bad_request"))
            return True
        try:
            result = self._run(name, args)
        except ProtocolError as exc:
            self._answer_error(name, exc)
            return True  # a failed command (even "exit now") changes nothing
        except KeyboardInterrupt:
            if not self.json_mode and _isatty(self.out):
                # The terminal echoed ^C where the cursor was: answer on a row of its own.
                self._emit("")
            self._answer_error(name, LocalError("interrupted", "interrupted"))
            return True
        except Exception as exc:  # nothing a user types may crash the client
            log.exception("%s failed", name)
            self._answer_error(name, LocalError(f"internal error: {exc!r}", "internal_error"))
            return True
        self._answer(name, args, result)
        return name != "exit"

    def _run(self, name: str, args: list[str]) -> Any:
        if name == "help":
            if len(args) > 1:
                raise LocalError("usage: help [command]", "usage")
            return help_text(args[0] if args else None)
        if name == "exit":
            if args:
                raise LocalError("usage: exit", "usage")
            self.quit()
            return None
        command = COMMANDS.get(name)
        if command is None:
            raise LocalError(f"unknown command {name!r}; type help for the list",
                             "unknown_command")
        if len(args) not in command.arity():
            raise LocalError(f"usage: {command.usage}", "usage")
        return command.run(self.client, args)

    def _answer(self, name: str, args: list[str], result: Any) -> None:
        if self.json_mode:
            if name == "help":
                result = {k: v for k, v in result.items() if k != "text"}
            self._emit(json.dumps({"command": name, "ok": True, "result": result}))
        else:
            self._emit(_human(name, args, result))

    def _answer_error(self, name: str, exc: ProtocolError) -> None:
        if self.json_mode:
            self._emit(json.dumps({"command": name, "ok": False, "code": exc.code,
                                   "error": exc.message}))
        else:
            self._emit(f"error: {exc.message}")

    def _emit(self, text: str) -> None:
        with self._print_lock:
            print(text, file=self.out, flush=True)

    def loop(self, stdin: TextIO) -> None:
        """Read until ``exit`` or end of input (which also logs out)."""
        interactive = stdin.isatty() and not self.json_mode
        # Notices are drawn above the line being typed only where stdout and stderr are
        # the terminal too: elsewhere the redraw would garble the one and litter the other.
        terminal = interactive and _isatty(self.out) and _isatty(self.err)
        if isinstance(stdin, io.TextIOWrapper):  # bad bytes must not crash the reader
            stdin.reconfigure(errors="surrogateescape")
        if interactive:
            import readline  # noqa: F401  (line editing and history for input())
        # A warning logged by a background thread would land in the middle of the line
        # being typed: at a terminal, log records are printed as notices.
        routed = [h for h in logging.getLogger().handlers
                  if terminal and isinstance(h, logging.StreamHandler)
                  and h.stream is self.err]
        for handler in routed:
            handler.setStream(_NoticeStream(self))
        try:
            self._read_commands(stdin, interactive, terminal)
        finally:
            for handler in routed:
                handler.setStream(self.err)

    def _read_commands(self, stdin: TextIO, interactive: bool, terminal: bool) -> None:
        """Run each line read, then quit: at a prompt when ``interactive``, with notices
        drawn above the line being typed when ``terminal``."""
        while True:
            try:
                self._at_prompt = terminal
                line = input(PROMPT) if interactive else stdin.readline()
            except EOFError:
                if interactive:
                    print(file=self.out)  # leave the shell prompt on a line of its own
                break
            except KeyboardInterrupt:
                # Off the line where ^C was echoed; in --json, stdout carries JSON only.
                print(file=self.err if self.json_mode else self.out)
                continue
            finally:
                self._at_prompt = False
            if not interactive and line == "":
                break
            if not self.execute(line):
                return
        self.quit()

    def quit(self) -> None:
        """Log out and stop; a Ctrl-C while a tracker is slow to take the logout quits
        at once (the user asked to leave twice), rather than back to the prompt."""
        try:
            self.client.close()
        except KeyboardInterrupt:
            log.warning("interrupted: quitting without logging out "
                        "(the tracker ends the session when the client's pings stop)")
            try:
                self.client.close(logout=False)
            except KeyboardInterrupt:
                log.warning("interrupted again: quitting now")
