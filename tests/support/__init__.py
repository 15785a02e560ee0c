"""Shared test helpers (real services, no mocks): pg, images, net, skips, timeouts."""
