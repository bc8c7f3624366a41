"""Shared fixtures: a fresh cluster of real processes per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Cluster, cluster


@pytest.fixture
def one_tracker(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, trackers=1) as c:
        yield c


@pytest.fixture
def two_trackers(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, trackers=2) as c:
        yield c
