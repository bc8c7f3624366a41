"""Parsing of ``tracker_info.txt``: one tracker per line, errors name the line."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

# Each tracker uses PORT..PORT+PORT_SPAN-1 (clients, replication, catch-up...).
PORT_SPAN = 5
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


class ConfigError(Exception):
    """The tracker info file cannot be used; the message names file and line."""


@dataclass(frozen=True)
class TrackerAddress:
    """Where one tracker listens; ``number`` is 1 for the first tracker line."""

    number: int
    host: str
    port: int

    def endpoint(self, offset: int = 0) -> str:
        """The ZeroMQ endpoint of the socket ``offset`` ports above the client port."""
        return f"tcp://{self.host}:{self.port + offset}"

    @property
    def client_endpoint(self) -> str:
        return self.endpoint(0)

    def __str__(self) -> str:
        return f"tracker {self.number} ({self.host}:{self.port})"


def parse_host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``HOST PORT``; raises ValueError with the reason."""
    parts = text.split()
    if len(parts) == 1 and parts[0].count(":") == 1:
        parts = parts[0].split(":")
    if len(parts) != 2:
        raise ValueError(f"expected 'HOST PORT' or 'HOST:PORT', got {text.strip()!r}")
    host, port_text = parts
    if not _HOST_RE.match(host):
        raise ValueError(f"invalid host {host!r}")
    if host[0].isdigit() and host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv4 address {host!r}") from None
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port {port_text!r} (1-65535)")
    return host, int(port_text)


def parse_tracker_info(text: str, source: str = "tracker_info") -> list[TrackerAddress]:
    """Parse the content of a tracker info file; raises ConfigError naming the line."""
    trackers: list[TrackerAddress] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            host, port = parse_host_port(line)
        except ValueError as exc:
            raise ConfigError(f"{source}:{lineno}: {exc}") from None
        if port + PORT_SPAN - 1 > 65535:
            raise ConfigError(f"{source}:{lineno}: port {port} leaves no room for PORT+1..+4")
        for other in trackers:
            if other.host == host and abs(other.port - port) < PORT_SPAN:
                raise ConfigError(
                    f"{source}:{lineno}: port {port} is within {PORT_SPAN} of {other} "
                    f"(each tracker uses PORT..PORT+{PORT_SPAN - 1})"
                )
        trackers.append(TrackerAddress(len(trackers) + 1, host, port))
    if not trackers:
        raise ConfigError(f"{source}: no tracker lines (expected 'HOST PORT' per line)")
    return trackers


def load_tracker_info(path: str | Path) -> list[TrackerAddress]:
    """Read and parse a tracker info file; raises ConfigError on any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_tracker_info(text, str(path))
