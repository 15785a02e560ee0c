"""Integration tests: real PostgreSQL, HTTP servers, unix sockets and docker engine."""
