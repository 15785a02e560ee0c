"""Thin adapters, one per external system: subprocesses, docker, postgres, compose."""
