"""Benchmarks of brace-watchdog (run them all with ``python -m bench`` / ``make bench``)."""
