"""End-to-end tests: the daemon as a process against real compose stacks."""
