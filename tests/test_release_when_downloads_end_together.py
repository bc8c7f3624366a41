"""Two downloads that end together (one still in Client.ended when the other ends): the
last to end must still give the allocator's free memory back (Client.ended)."""

from __future__ import annotations

import threading
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
    released: list[str] = []
    monkeypatch.setattr(client_mod, "release_free_memory", lambda: released.append("now"))
    a, b = _Download("a"), _Download("b")
    a_in_call, b_ended = threading.Event(), threading.Event()

    def submit(key: tuple[str, str], *_args: Any) -> None:
        if key[1] == "a":  # a's ended() is held up until b has ended
            a_in_call.set()
            assert b_ended.wait(10)

    host = types.SimpleNamespace(
        downloads=types.SimpleNamespace(finished=lambda d: None, all=lambda: [a, b]),
        registry=types.SimpleNamespace(remove=lambda key: None),
        announcements=types.SimpleNamespace(submit=submit),
        tracker=types.SimpleNamespace(token="t"),
        notify=lambda kind, data: None)
    host.ended = lambda d: Client.ended(host, d)  # type: ignore[arg-type]
    ta = threading.Thread(target=a.end, args=(host,))
    ta.start()
    assert a_in_call.wait(10)
    b.end(host)
    b_ended.set()
    ta.join(10)
    assert not a.running and not b.running
    assert released, "no download runs any more, and nothing was given back"
