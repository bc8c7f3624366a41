"""``p2p-client IP:PORT TRACKER_INFO_FILE [--data-dir DIR] [--json]``."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from p2p.config import ConfigError, load_tracker_info, parse_host_port
from peers.tracker_client import GIVE_UP_AFTER

USAGE = "p2p-client IP:PORT TRACKER_INFO_FILE [--data-dir DIR] [--json]"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2p-client", usage=USAGE + "\n       p2p-client IP PORT TRACKER_INFO_FILE ...",
        description="A file-sharing client: a command line, and a peer serving your pieces.",
    )
    parser.add_argument("where", nargs="+", help="IP:PORT TRACKER_INFO_FILE (or IP PORT FILE)")
    parser.add_argument("--data-dir", type=Path,
                        help="shared files and partial downloads "
                             "(default ./p2p-data/client-IP-PORT)")
    parser.add_argument("--json", action="store_true", help="one JSON line per command")
    parser.add_argument("--upload-limit", type=float, metavar="KIB_PER_S",
                        help="cap what this client uploads to other peers (KiB/s)")
    parser.add_argument("--request-timeout", type=float, metavar="SECONDS",
                        default=GIVE_UP_AFTER,
                        help="how long a command keeps trying the trackers before it fails "
                             f"with no_tracker, or busy (default {GIVE_UP_AFTER:g})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log detail to stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``p2p-client`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not (math.isfinite(args.request_timeout) and args.request_timeout > 0):
        parser.error("--request-timeout must be a positive number of seconds")
    if len(args.where) == 3:
        where, info = f"{args.where[0]}:{args.where[1]}", args.where[2]
    elif len(args.where) == 2:
        where, info = args.where
    else:
        parser.error("expected IP:PORT TRACKER_INFO_FILE")
    try:
        host, port = parse_host_port(where)
        trackers = load_tracker_info(info)
    except ValueError as exc:
        parser.error(str(exc))
    except ConfigError as exc:
        print(f"p2p-client: {exc}", file=sys.stderr)
        return 2
    from p2p.errors import LocalError
    from peers.client import Client
    from peers.malloc_tuning import tune_for_pieces
    from peers.repl import Repl

    tune_for_pieces()  # before any thread that moves pieces starts

    data_dir = args.data_dir or Path("p2p-data") / f"client-{host}-{port}"
    repl_box: list[Repl] = []
    limit = args.upload_limit * 1024 if args.upload_limit else None
    try:
        client = Client(trackers, host, port, data_dir, upload_limit=limit,
                        give_up_after=args.request_timeout,
                        notify=lambda name, data: repl_box[0].event(name, data)
                        if repl_box else None)
    except LocalError as exc:
        print(f"p2p-client: {exc}", file=sys.stderr)
        return 1
    repl = Repl(client, sys.stdout, sys.stderr, args.json)
    repl_box.append(repl)
    try:
        repl.loop(sys.stdin)
    except KeyboardInterrupt:  # between commands, outside the REPL's own handling
        repl.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
