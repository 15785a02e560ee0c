"""Which adapter errors during a rollback step are the engine's outage (retried until the step's
deadline) and which are the engine's answer (a verdict at once) — pure classification."""

from __future__ import annotations

import pytest

from brace_watchdog.actions.rollback_steps import engine_lost, engine_refused
from brace_watchdog.errors import AdapterError, CommandError, DockerError

LOST_OUTPUT = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."


@pytest.mark.parametrize(("error", "refused", "lost"), [
    # the engine answered: it is up and said no
    (DockerError("404 Client Error: No such image", status=404), True, False),
    (DockerError("409 Client Error: Conflict", status=409), True, False),
    (DockerError("400 Client Error: invalid reference format", status=400), True, False),
    (DockerError("500 Server Error: write /var/lib/docker: no space left", status=500), True,
     False),
    # no answer came: connection refused, socket gone, timed out before a response
    (DockerError("docker engine unreachable: [Errno 111] Connection refused"), False, True),
    (DockerError("Error while fetching server API version"), False, True),
    # compose: only its own words tell that it lost the engine
    (CommandError("compose up failed", returncode=1, output=LOST_OUTPUT), False, True),
    (CommandError("compose up failed", returncode=1, output="no such service: web"), False,
     False),
    (CommandError("compose up timed out", timed_out=True), False, False),
    # anything else says neither: the step asks whether the engine answers now
    (AdapterError("archive loaded sha256:aa, not sha256:bb"), False, False),
])
def test_engine_errors_are_classified_as_refusal_or_outage(
        error: AdapterError, refused: bool, lost: bool) -> None:
    assert engine_refused(error) is refused
    assert engine_lost(error) is lost
    assert not (refused and lost)
