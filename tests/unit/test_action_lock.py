"""The hub's action lock (pure): one holder, refusals name it, stale releases are ignored."""

from __future__ import annotations

import pytest

from brace_watchdog.errors import RefusedError
from brace_watchdog.runtime import ActionLock


def test_one_holder_at_a_time_and_the_refusal_names_it() -> None:
    now = [100.0]
    lock = ActionLock(lambda: now[0])
    lease = lock.acquire("db_rollback", "approved")
    assert lock.holder == lease and lease.since == 100.0
    for kind in ("rollback", "db_rollback", "pg_hba_rollback"):
        with pytest.raises(RefusedError, match=r"approved db_rollback .* is running; one action"):
            lock.acquire(kind, "manual")
        with pytest.raises(RefusedError, match="one action at a time"):
            lock.check(kind)
    assert lock.holder == lease
    now[0] = 130.0
    lock.release(lease)
    assert lock.holder is None and lock.released_at == 130.0
    lock.check("rollback")
    second = lock.acquire("rollback", "automatic")
    lock.release(lease)  # a stale lease does not free the lock of the next holder
    assert lock.holder == second
