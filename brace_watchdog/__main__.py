"""Allows ``python -m brace_watchdog``."""

from brace_watchdog.cli import main

raise SystemExit(main())
