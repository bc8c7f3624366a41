"""Shared fixtures: a fresh cluster of real processes per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.procs import Cluster, cluster


@pytest.fixture
def one_tracker(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, trackers=1) as c:
        yield c


@pytest.fixture
def two_trackers(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, trackers=2) as c:
        yield c


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    """A zmq context of the test's own, destroyed with whatever sockets it still has."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


@pytest.fixture
def peers() -> Iterator[list[Any]]:
    """Peer threads (each with a ``stop`` event) that the test appends as it starts them;
    each is stopped and joined after the test."""
    started: list[Any] = []
    yield started
    for peer in started:
        peer.stop.set()
        peer.join(5)
