"""The harness itself: a tracker and a client come up and talk."""

import pytest

from tests.procs import Cluster

pytestmark = pytest.mark.timeout(60)


def test_client_creates_user_and_lists_groups(one_tracker: Cluster) -> None:
    alice = one_tracker.client()
    assert alice.ok("create_user alice secret") is None
    alice.ok("login alice secret")
    alice.ok("create_group g1")
    assert alice.ok("list_groups") == [{"group": "g1", "owner": "alice", "members": 1}]
    assert alice.close() == 0
