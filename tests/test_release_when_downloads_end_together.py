"""Two downloads that end within one tracker round trip of each other: the last to end
must still give the allocator's free memory back (Client.ended)."""

from __future__ import annotations

import threading
import time
import types
from typing import Any

import pytest

from peers import client as client_mod
from peers.client import Client


class _Download:
    """What Client.ended reads of a download, ended the way Download._main does it:
    state set, then host.ended(self), then _done.set()."""

    def __init__(self, name: str) -> None:
        self.name, self.group, self.key = name, "g", ("g", name)
        self.state, self.error = "downloading", ""
        self.done = threading.Event()

    @property
    def running(self) -> bool:
        return not self.done.is_set()

    def end(self, host: Any) -> None:
        self.state, self.error = "failed", "gone"
        host.ended(self)
        self.done.set()


def test_the_last_of_two_downloads_ending_together_releases(
        monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[float] = []
    monkeypatch.setattr(client_mod, "release_free_memory",
                        lambda: released.append(time.monotonic()))
    a, b = _Download("a"), _Download("b")

    def slow_call(_op: str, _args: dict[str, Any]) -> None:
        time.sleep(0.5)  # a tracker round trip (unshare, have) inside ended()

    host = types.SimpleNamespace(
        downloads=types.SimpleNamespace(finished=lambda d: None, all=lambda: [a, b]),
        registry=types.SimpleNamespace(remove=lambda key: None),
        tracker=types.SimpleNamespace(call=slow_call),
        notify=lambda kind, data: None)
    host.ended = lambda d: Client.ended(host, d)  # type: ignore[arg-type]
    ta = threading.Thread(target=a.end, args=(host,))
    ta.start()
    time.sleep(0.1)  # b ends while a's ended() waits for the tracker
    b.end(host)
    ta.join()
    assert not a.running and not b.running
    assert released, "no download runs any more, and nothing was given back"
