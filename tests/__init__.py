"""brace-watchdog tests: unit (pure), integration (real services), e2e (daemon as a process)."""
