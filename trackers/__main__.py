"""``p2p-tracker TRACKER_INFO_FILE TRACKER_NO [--data-dir DIR] [--cluster-key FILE] [-v]``."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
from pathlib import Path

import zmq

from p2p.config import ConfigError, load_tracker_info

log = logging.getLogger("trackers")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2p-tracker", description="Run one tracker.")
    parser.add_argument("tracker_info", help="file listing the trackers, one 'HOST PORT' a line")
    parser.add_argument("number", nargs="?", type=int,
                        help="which line of the file this tracker is (1 = first)")
    parser.add_argument("--data-dir", type=Path,
                        help="where the event log is kept (default: ./p2p-data/tracker-N)")
    parser.add_argument("--cluster-key", type=Path, metavar="FILE",
                        help="the secret every tracker of the cluster shares, which "
                             "authenticates and encrypts replication (default: "
                             "tracker_cluster.key beside TRACKER_INFO_FILE, created if "
                             "missing)")
    parser.add_argument("--status", action="store_true",
                        help="print each tracker's health, progress and state digest, then exit")
    parser.add_argument("--session-timeout", type=float, default=None,
                        help="seconds of client silence before its session ends (default 10)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``p2p-tracker`` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        trackers = load_tracker_info(args.tracker_info)
    except ConfigError as exc:
        print(f"p2p-tracker: {exc}", file=sys.stderr)
        return 2
    if args.status:
        from trackers.status import print_status

        return print_status(trackers)
    if args.number is None or not 1 <= args.number <= len(trackers):
        print(f"p2p-tracker: TRACKER_NO must be 1..{len(trackers)}", file=sys.stderr)
        return 2
    from trackers import cluster_key
    from trackers.server import SESSION_TIMEOUT, TrackerServer

    key_path = args.cluster_key or cluster_key.default_path(args.tracker_info)
    try:
        keys, created = cluster_key.load_or_create(key_path)
    except cluster_key.ClusterKeyError as exc:
        print(f"p2p-tracker: {exc}", file=sys.stderr)
        return 2
    if created:
        log.info("created the cluster key %s: every tracker of this cluster needs a copy "
                 "of this same file", key_path)
    data_dir = args.data_dir or Path("p2p-data") / f"tracker-{args.number}"
    try:
        server = TrackerServer(
            trackers, args.number, data_dir,
            session_timeout=args.session_timeout or SESSION_TIMEOUT, cluster_keys=keys,
        )
    except zmq.ZMQError as exc:
        print(f"p2p-tracker: cannot listen on {trackers[args.number - 1]}: {exc}",
              file=sys.stderr)
        return 1
    # The state is many small long-lived objects; the default thresholds make the
    # collector walk all of them every few hundred writes, which dominated write p99.
    gc.set_threshold(50_000, 20, 20)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.run(stop)
    log.info("tracker %d stopped", args.number)
    return 0


if __name__ == "__main__":
    sys.exit(main())
