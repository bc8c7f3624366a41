"""tracker_info.txt parsing: good files, and bad ones refused naming the line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from p2p.config import (
    PORT_SPAN,
    ConfigError,
    TrackerAddress,
    load_tracker_info,
    parse_host_port,
    parse_tracker_info,
)

pytestmark = pytest.mark.timeout(30)


def hosts_ports(trackers: list[TrackerAddress]) -> list[tuple[int, str, int]]:
    return [(t.number, t.host, t.port) for t in trackers]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1 6000\n", [(1, "127.0.0.1", 6000)]),
        ("127.0.0.1:6000", [(1, "127.0.0.1", 6000)]),
        ("localhost 6000\nlocalhost:6005\n", [(1, "localhost", 6000), (2, "localhost", 6005)]),
        ("# trackers\n\n  127.0.0.1   6000  \n\t\n   # indented comment\n10.0.0.2:6000\n",
         [(1, "127.0.0.1", 6000), (2, "10.0.0.2", 6000)]),
        ("a.example.org 1\r\nb-2.example.org 65531\r\n",
         [(1, "a.example.org", 1), (2, "b-2.example.org", 65531)]),
        ("h 6000\nh 5995\nh 6010\n", [(1, "h", 6000), (2, "h", 5995), (3, "h", 6010)]),
        ("h 6000\nother 6001\n", [(1, "h", 6000), (2, "other", 6001)]),  # different hosts
    ],
)
def test_good_files(text: str, expected: list[tuple[int, str, int]]) -> None:
    assert hosts_ports(parse_tracker_info(text)) == expected


def test_tracker_address_endpoints() -> None:
    t = parse_tracker_info("127.0.0.1 6000\n")[0]
    assert t.client_endpoint == "tcp://127.0.0.1:6000"
    assert t.endpoint(PORT_SPAN - 1) == "tcp://127.0.0.1:6004"
    assert "127.0.0.1:6000" in str(t) and "1" in str(t)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("127.0.0.1 notaport\n", 1, "port"),
        ("# c\n\n127.0.0.1 0\n", 3, "port"),
        ("127.0.0.1 6000\n127.0.0.1 70000\n", 2, "port"),
        ("127.0.0.1 -5\n", 1, "port"),
        ("127.0.0.1 6x\n", 1, "port"),
        ("127.0.0.1 ²\n", 1, "port"),
        ("127.0.0.1 ٦٠٠٠\n", 1, "port"),  # Arabic-Indic digits are not a port
        ("127.0.0.1 65533\n", 1, "65533"),  # no room for PORT+1..+4
        ("127.0.0.1\n", 1, "HOST PORT"),
        ("127.0.0.1:\n", 1, "port"),
        (":6000\n", 1, "host"),
        ("127.0.0.1 6000 extra\n", 1, "HOST PORT"),
        ("h:1:2\n", 1, "HOST PORT"),
        ("\n\nbad_host! 6000\n", 3, "host"),
        ("-leading 6000\n", 1, "host"),
        ("999.1.1.1 6000\n", 1, "IPv4"),
        ("1.2.3 6000\n", 1, "IPv4"),
        ("h\u00e9 6000\n", 1, "host"),
        ("127.0.0.1 6000\n# two\n127.0.0.1 6004\n", 3, "within"),
        ("127.0.0.1 6000\n127.0.0.1 5996\n", 2, "within"),
        ("h 6000\nh 6000\n", 2, "within"),
        ("127.0.0.1 6000\n10.0.0.1 7000\n10.0.0.1:7003\n", 3, "within"),
    ],
)
def test_bad_files_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_tracker_info(text, "conf.txt")
    message = str(info.value)
    assert message.startswith(f"conf.txt:{line}: "), message
    assert words in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only\n# comments\n", "   \n\t# x\n"])
def test_files_without_trackers_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="no tracker"):
        parse_tracker_info(text, "conf.txt")


def test_parse_host_port() -> None:
    assert parse_host_port("h:1") == ("h", 1)
    assert parse_host_port(" h   2 ") == ("h", 2)
    with pytest.raises(ValueError, match="HOST"):
        parse_host_port("")


def test_load_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "tracker_info.txt"
    path.write_text("# the cluster\n127.0.0.1 6000\n127.0.0.1:6010\n", encoding="utf-8")
    assert hosts_ports(load_tracker_info(path)) == [(1, "127.0.0.1", 6000),
                                                    (2, "127.0.0.1", 6010)]
    assert len(load_tracker_info(str(path))) == 2


def test_load_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "tracker_info.txt"
    path.write_text("127.0.0.1 6000\nnope\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}:2: "):
        load_tracker_info(path)


def test_load_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(ConfigError, match="not found") as info:
        load_tracker_info(missing)
    assert str(missing) in str(info.value)


def test_load_a_directory_or_a_binary_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_tracker_info(tmp_path)
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="cannot read"):
        load_tracker_info(binary)


@settings(max_examples=200, deadline=None)
@given(hst.text(max_size=80))
def test_any_text_parses_or_is_refused_with_a_config_error(text: str) -> None:
    try:
        trackers = parse_tracker_info(text)
    except ConfigError:
        return
    assert trackers and all(1 <= t.port <= 65535 - PORT_SPAN + 1 for t in trackers)
    assert [t.number for t in trackers] == list(range(1, len(trackers) + 1))


@settings(max_examples=100, deadline=None)
@given(hst.lists(hst.tuples(hst.sampled_from(["a", "b.example", "10.0.0.1"]),
                            hst.integers(1, 65531), hst.booleans()), min_size=1, max_size=6))
def test_generated_files_parse_iff_ports_are_spaced(
    lines: list[tuple[str, int, bool]],
) -> None:
    text = "\n".join(f"{h}:{p}" if colon else f"{h} {p}" for h, p, colon in lines)
    clash = any(
        h1 == h2 and abs(p1 - p2) < PORT_SPAN
        for i, (h1, p1, _) in enumerate(lines)
        for h2, p2, _ in lines[:i]
    )
    if clash:
        with pytest.raises(ConfigError, match="within"):
            parse_tracker_info(text)
    else:
        assert hosts_ports(parse_tracker_info(text)) == [
            (i + 1, h, p) for i, (h, p, _) in enumerate(lines)
        ]
