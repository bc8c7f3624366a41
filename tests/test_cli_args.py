"""The two commands' arguments, tracker_info.txt checking, and clean stops on signals."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import (
    Cluster,
    TrackerProc,
    free_port,
    free_port_block,
    run_module,
    tracker_events,
)

pytestmark = pytest.mark.timeout(60)

SCRIPTS = Path(sys.executable).parent


def script(name: str) -> str | None:
    """The installed console script next to this interpreter, if any."""
    path = SCRIPTS / name
    return str(path) if path.exists() else shutil.which(name)


# --- p2p-client ------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["IP:PORT", "IP PORT"])
def test_client_accepts_both_address_spellings(one_tracker: Cluster, tmp_path: Path,
                                               spelling: str) -> None:
    port = free_port()
    where = [f"127.0.0.1:{port}"] if spelling == "IP:PORT" else ["127.0.0.1", str(port)]
    user = f"u{port}"
    done = run_module("peers", *where, str(one_tracker.info), "--data-dir",
                      str(tmp_path / "c"), "--json",
                      input=f"create_user {user} pw\nlogin {user} pw\nlist_groups\n")
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["ok"] for a in answers] == [True, True, True], answers
    # The tracker was told where this client's peer server listens.
    logins = [e.data for e in tracker_events(one_tracker.tracker(1).data_dir)
              if e.type == "login" and e.data["user"] == user]
    assert [d["addr"] for d in logins] == [f"127.0.0.1:{port}"]


def test_console_scripts_work(one_tracker: Cluster, tmp_path: Path) -> None:
    client, tracker = script("p2p-client"), script("p2p-tracker")
    if client is None or tracker is None:
        pytest.skip("console scripts not installed next to this interpreter")
    for exe in (client, tracker):
        done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=20)
        assert done.returncode == 0 and "usage" in done.stdout.lower(), done
    done = subprocess.run(
        [client, "127.0.0.1", str(free_port()), str(one_tracker.info), "--data-dir",
         str(tmp_path / "c"), "--json"],
        input="create_user viascript pw\n", capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    done = subprocess.run([tracker, str(one_tracker.info), "--status"], capture_output=True,
                          text=True, timeout=20)
    assert done.returncode == 0 and "up" in done.stdout, done


def test_python_dash_m_help() -> None:
    for module in ("peers", "trackers"):
        done = run_module(module, "--help")
        assert done.returncode == 0, done.stderr
        assert "usage" in done.stdout.lower()
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize("where, says", [
    (["127.0.0.1"], "expected"),
    (["127.0.0.1", "1", "2", "3"], "expected"),
    (["127.0.0.1", "INFO"], "HOST:PORT"),
    (["127.0.0.1:0", "INFO"], "invalid port"),
    (["127.0.0.1:99999", "INFO"], "invalid port"),
    (["127.0.0.1", "port", "INFO"], "invalid port"),
    (["300.1.1.1:4000", "INFO"], "invalid IPv4"),
    (["127.0.0.1:4000", "MISSING"], "file not found"),
    (["127.0.0.1:4000", "BAD"], ":2:"),
    (["127.0.0.1:4000", "INFO", "--request-timeout", "0"], "positive number of seconds"),
    (["127.0.0.1:4000", "INFO", "--request-timeout", "inf"], "positive number of seconds"),
])
def test_client_refuses_bad_arguments(tmp_path: Path, where: list[str], says: str) -> None:
    info = tmp_path / "info.txt"
    info.write_text("127.0.0.1 4000\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("127.0.0.1 4000\nnot a tracker line\n")
    paths = {"INFO": str(info), "MISSING": str(tmp_path / "missing.txt"), "BAD": str(bad)}
    done = run_module("peers", *(paths.get(w, w) for w in where), "--json", input="",
                      timeout=20)
    assert done.returncode != 0
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_client_without_json_on_a_pipe(one_tracker: Cluster, tmp_path: Path) -> None:
    """No prompt when stdin is not a terminal; readable lines; errors start with error:."""
    done = run_module("peers", f"127.0.0.1:{free_port()}", str(one_tracker.info),
                      "--data-dir", str(tmp_path / "c"),
                      input="create_user ann pw\nlist_groups\nlogin ann pw\ncreate_group g\n"
                            "list_groups\nbogus\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "p2p>" not in done.stdout
    assert lines[0] == "user ann created"
    assert lines[1].startswith("error: not logged in")
    assert lines[2] == "logged in as ann"
    assert lines[4].split() == ["GROUP", "OWNER", "MEMBERS"]
    assert lines[5].split() == ["g", "ann", "1"]
    assert lines[6].startswith("error: unknown command")
    assert len(lines) == 7


# --- p2p-tracker -----------------------------------------------------------------------

@pytest.mark.parametrize("content, says", [
    (None, "file not found"),
    ("", "no tracker lines"),
    ("# only a comment\n\n   \n", "no tracker lines"),
    ("127.0.0.1 {p}\n# fine\nlocalhost\n", ":3:"),
    ("127.0.0.1 {p}\n\n127.0.0.1 notaport\n", ":3:"),
    ("127.0.0.1:{p}:7\n", ":1:"),
    ("127.0.0.1 {p} extra\n", ":1:"),
    ("127.0.0.1 {p}\n127.0.0.1 {q}\n", ":2:"),  # ports closer than 5
    ("127.0.0.1 65534\n", ":1:"),  # no room for PORT+1..+4
    ("bad_host! {p}\n", ":1:"),
])
def test_tracker_refuses_bad_tracker_info(tmp_path: Path, content: str | None,
                                          says: str) -> None:
    info = tmp_path / "tracker_info.txt"
    port = free_port_block()
    if content is not None:
        info.write_text(content.format(p=port, q=port + 2))
    done = run_module("trackers", str(info), "1", "--data-dir", str(tmp_path / "d"),
                      timeout=20)
    assert done.returncode != 0
    assert says in done.stderr, done.stderr
    if says.startswith(":"):
        assert f"{info}{says}" in done.stderr  # names the file and the line
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


@pytest.mark.parametrize("number", ["0", "3", "-1"])
def test_tracker_refuses_a_number_not_in_the_file(tmp_path: Path, number: str) -> None:
    info = tmp_path / "tracker_info.txt"
    info.write_text(f"127.0.0.1 {free_port_block()}\n127.0.0.1 {free_port_block()}\n")
    done = run_module("trackers", str(info), number, "--data-dir", str(tmp_path / "d"),
                      timeout=20)
    assert done.returncode != 0
    assert "1..2" in done.stderr, done.stderr


def test_tracker_reads_both_line_spellings_comments_and_blanks(tmp_path: Path) -> None:
    first, second = free_port_block(), free_port_block()
    info = tmp_path / "tracker_info.txt"
    info.write_text(f"# trackers\n\n127.0.0.1:{first}\n   \n  # the second\n"
                    f"127.0.0.1   {second}\n")
    tracker = TrackerProc(info, 2, tmp_path / "t2", tmp_path / "t2.log")
    try:
        start(tracker)
        assert tracker.answered_status()["tracker"] == 2
    finally:
        tracker.stop()


def test_tracker_port_taken_exits_with_a_message(tmp_path: Path) -> None:
    port = free_port_block()
    info = tmp_path / "tracker_info.txt"
    info.write_text(f"127.0.0.1 {port}\n")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        done = run_module("trackers", str(info), "1", "--data-dir", str(tmp_path / "d"),
                          timeout=20)
    assert done.returncode != 0
    assert "cannot listen" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def start(tracker: TrackerProc) -> None:
    """Start a tracker and wait until it answers; on failure show its log."""
    try:
        tracker.start()
    except AssertionError as exc:
        code = tracker.proc.poll() if tracker.proc else None
        raise AssertionError(f"{exc}; exit status {code}; log:\n{tracker.log_text()}") from None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_tracker_stops_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port_block()
    info = tmp_path / "tracker_info.txt"
    info.write_text(f"127.0.0.1 {port}\n")
    tracker = TrackerProc(info, 1, tmp_path / "t1", tmp_path / "t1.log")
    try:
        start(tracker)
        tracker.signal(sig)
        assert tracker.proc is not None
        assert tracker.proc.wait(10) == 0
        log = tracker.log_text()
        assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
        assert "stopped" in log
        # The port is free again and the data dir is usable by the next start.
        start(tracker)
        tracker.answered_status()
    finally:
        tracker.stop()
