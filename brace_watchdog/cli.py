"""``brace-watchdog``: run the daemon, check a config, or run one restore test.

Exit codes: 0 ok; 1 failure (daemon fatal error, restore test failed); 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from brace_watchdog import __version__, failpoints
from brace_watchdog.actions.restore_test import cli_restore_test
from brace_watchdog.config import load_config
from brace_watchdog.daemon import Supervisor
from brace_watchdog.errors import ConfigError
from brace_watchdog.leader_election import leadership_unused
from brace_watchdog.logs import configure_logging

__all__ = ["main"]

DEFAULT_CONFIG = Path("/etc/brace-watchdog/brace-watchdog.toml")
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brace-watchdog",
        description="Keeps the brace stack alive: health, backups, restore tests, rollbacks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (("run", "run the daemon in the foreground (systemd Type=notify)"),
                       ("check-config", "validate a config file; print every problem"),
                       ("restore-test", "restore one dump into a throwaway PostgreSQL now")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                         help=f"config file (default {DEFAULT_CONFIG})")
        if name == "restore-test":
            sub.add_argument("--dump", help="dump file name inside [backups] directory "
                             "(default: the newest valid backup)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        config = load_config(args.config)
        failpoints.armed()
    except ConfigError as exc:
        print(f"brace-watchdog: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check-config":
        print(f"{args.config}: ok")
        if unused := leadership_unused(config):
            print(f"{args.config}: note: {unused}")
        return 0
    configure_logging(config.daemon.log_format, config.daemon.log_level)
    if args.command == "restore-test":
        return cli_restore_test(config, args.dump)
    return asyncio.run(Supervisor(config).run())
