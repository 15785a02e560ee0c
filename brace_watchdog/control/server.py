"""The ``control`` component: a unix stream socket speaking :mod:`~brace_watchdog.control.protocol`.

* The socket is created at ``[control] socket`` with mode 0660 and the configured group *before*
  it listens, so there is no moment where it is more open. A stale socket file (nobody answers) is
  replaced; a live one (another daemon answers) or a non-socket file there is a
  :class:`~brace_watchdog.errors.FatalError` at start-up.
* Each client is served by its own task; identity comes from ``SO_PEERCRED`` only, and its user
  and groups are looked up again for every request (a removed operator loses its rights on an
  open connection). Connections are capped (:mod:`~brace_watchdog.control.limits`: in total and
  per uid, root never refused; a deadline for each request that blank lines do not reset); one
  over the cap is answered ``busy`` and closed at once. Accept errors and refusals are logged at
  most once a minute per kind, with a count of what was held back.
* Every request, allowed or refused, valid or garbage, is audited (uid, user, command, outcome)
  and counted in ``brace_control_requests{command,outcome}``; an operator command is audited
  also on arrival (outcome ``received``), so an action killed midway still has its row. A bad
  line costs the client one error response — never the connection, other clients or the daemon.
* Approved gated actions run in their own task under the hub's action lock (one action at a
  time, app rollbacks included); the client's connection only watches it, so a client that
  disconnects mid-restore does not cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
import sqlite3
import stat
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from brace_watchdog.actions.config_rollback import DockerDaemonRollback, PgHbaRollback
from brace_watchdog.actions.db_rollback import DbRollback
from brace_watchdog.actions.gated import GatedAction, GatedFailure, resolve_interrupted
from brace_watchdog.component import Component
from brace_watchdog.config import Config
from brace_watchdog.control.approvals import ApprovalBook, hash_token
from brace_watchdog.control.auth import (
    Credentials,
    Peer,
    UidLookup,
    allowed,
    identify,
    read_credentials,
    refresh,
    role_of,
    system_uid_lookup,
)
from brace_watchdog.control.commands import REGISTRY, Command, Context
from brace_watchdog.control.limits import ConnectionLimits, RateLimiter, RequestClock, admit
from brace_watchdog.control.protocol import (
    LineSplitter,
    ProtocolError,
    Request,
    RequestId,
    TooLong,
    encode,
    error_response,
    ok_response,
    parse_request,
    progress_event,
    validate_args,
)
from brace_watchdog.errors import FatalError, RefusedError, WatchdogError
from brace_watchdog.runtime import Hub

__all__ = ["ControlServer"]

log = logging.getLogger("brace_watchdog.control")

LINGER_SECONDS = 1.0
READ_CHUNK = 64 * 1024
ACCEPT_BACKOFF_SECONDS = 0.1
COMPLAINT_INTERVAL_SECONDS = 60.0
SUN_PATH_MAX = 107
SOCKET_MODE = 0o660


class _Client:
    """One connection: its peer and a writer that never raises into the request loop."""

    def __init__(self, writer: asyncio.StreamWriter, peer: Peer, timeout: float) -> None:
        self.writer = writer
        self.peer = peer
        self.timeout = timeout
        self.gone = False

    async def send(self, message: Mapping[str, Any]) -> None:
        if self.gone:
            return
        try:
            self.writer.write(encode(message))
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except (OSError, TimeoutError, RuntimeError):
            self.gone = True


class ControlServer(Component):
    """Serves the control socket; see the module docstring."""

    name = "control"

    def __init__(self, hub: Hub, *, socket_path: Path | str | None = None,
                 uid_lookup: UidLookup = system_uid_lookup,
                 gated: Mapping[str, GatedAction] | None = None,
                 commands: Mapping[str, Command] | None = None) -> None:
        self.hub = hub
        cfg = hub.config.control
        self.socket_path = Path(socket_path) if socket_path is not None else cfg.socket
        self.uid_lookup = uid_lookup
        self.approvals = ApprovalBook(hub.store, ttl_seconds=cfg.token_ttl_seconds,
                                      two_person_rule=cfg.two_person_rule, clock=hub.clock)
        self.gated: Mapping[str, GatedAction] = gated if gated is not None else _default_gated(hub)
        self.commands = commands if commands is not None else REGISTRY
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._open_by_uid: Counter[int] = Counter()
        self._complaints = RateLimiter(COMPLAINT_INTERVAL_SECONDS)
        self._running_action: asyncio.Task[Any] | None = None
        self._generation = -1  # the leadership generation whose open actions were resolved
        self._leftovers_due = False  # look for what interrupted actions left running
        self._served = 0
        self._owns_socket = False

    # -- component contract ----------------------------------------------------------------
    def interval(self) -> float:
        leadership = self.hub.config.leadership
        return leadership.check_interval_seconds if self.hub.leadership.view.enabled else 30.0

    async def start(self) -> None:
        self._listener = _bind(self.socket_path, self.hub.config.control.group)
        self._owns_socket = True
        self._accepting = asyncio.create_task(self._accept_loop(self._listener))
        self.hub.record("control.listening", self.name, f"control socket at {self.socket_path}")
        self.hub.leadership.on_lost.append(self._leadership_lost)
        await self._reconcile()

    async def _reconcile(self) -> None:
        """Once per leadership (at start, or on becoming the leader): gated actions left open
        by a crash or by a lost leader are marked interrupted and escalated."""
        gate = self.hub.leadership
        if self._generation != gate.generation and gate.decision().acts:
            self._generation = gate.generation
            await resolve_interrupted(self.hub)
            self._leftovers_due = True
        if self._leftovers_due and self.hub.action_lock.holder is None:
            self._leftovers_due = self._end_leftovers()

    def _end_leftovers(self) -> bool:
        """Start ending what an interrupted action left running (a restore in the server), in
        the background under the action lock: no other action starts until it has ended.
        Called only while the lock is free; True when it started one (the others are looked
        for once it has ended, on a later cycle)."""
        for kind, action in self.gated.items():
            work = action.leftover()
            if work is not None:
                self._start_exclusive(kind, "recovery", work)
                return True
        return False

    def _leadership_lost(self, reason: str) -> None:
        if self._running_action is not None and not self._running_action.done():
            self._running_action.cancel(f"leadership lost: {reason}")

    async def cycle(self) -> str:
        await self._reconcile()
        busy = " (gated action running)" if self._running_action else ""
        return f"{len(self._clients)} clients, {self._served} requests served{busy}"

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if self._running_action is not None:
            self._running_action.cancel()
            await asyncio.gather(self._running_action, return_exceptions=True)
        if self._owns_socket:  # never remove a socket another daemon is serving
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            self._owns_socket = False

    def reconfigure(self, config: Config) -> None:
        self.approvals.ttl_seconds = config.control.token_ttl_seconds
        self.approvals.two_person_rule = config.control.two_person_rule
        if config.control.socket != self.socket_path:
            log.warning("[control] socket changed to %s; restart the daemon to move the socket",
                        config.control.socket)

    # -- connections -----------------------------------------------------------------------
    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and friends: say so now and then, never spin
                self._complain("accept", f"cannot accept control connections: {exc}")
                await asyncio.sleep(ACCEPT_BACKOFF_SECONDS)
                continue
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        """Serve ``conn`` in its own task, or answer ``busy`` and close it at once."""
        try:
            creds = read_credentials(conn)
        except OSError:
            conn.close()
            return
        cfg = self.hub.config.control
        refusal = admit(creds.uid, self._open_by_uid,
                        ConnectionLimits(cfg.max_clients, cfg.max_clients_per_uid))
        if refusal is not None:
            self._refuse(conn, creds, refusal)
            return
        self._open_by_uid[creds.uid] += 1
        task = asyncio.create_task(self._on_connect(conn, creds))
        self._clients.add(task)
        task.add_done_callback(lambda done: self._closed(done, creds.uid))

    def _closed(self, task: asyncio.Task[None], uid: int) -> None:
        self._clients.discard(task)
        self._open_by_uid[uid] -= 1
        if self._open_by_uid[uid] <= 0:
            del self._open_by_uid[uid]

    def _refuse(self, conn: socket.socket, creds: Credentials, reason: str) -> None:
        with contextlib.suppress(OSError):
            conn.send(encode(error_response(None, "busy", reason)))
        conn.close()
        self.hub.metrics.control_requests.labels(command="-", outcome="busy").inc()
        held = self._complaints.allow(f"busy:{creds.uid}", self.hub.clock())
        if held is not None:
            more = f" ({held} more refused since the last report)" if held else ""
            log.warning("control connection of uid %d refused: %s%s", creds.uid, reason, more)
            self._audit(Peer(creds.uid, creds.gid, creds.pid, f"uid:{creds.uid}"), "-", "busy",
                        f"{reason}{more}")

    def _complain(self, key: str, message: str) -> None:
        held = self._complaints.allow(key, self.hub.clock())
        if held is not None:
            log.error("%s%s", message, f" ({held} more since the last report)" if held else "")

    async def _on_connect(self, conn: socket.socket, creds: Credentials) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=READ_CHUNK)
            peer = await asyncio.to_thread(identify, creds, self.uid_lookup)
            await self._serve(reader, _Client(writer, peer, self._idle_timeout()))
            await _linger(reader, writer)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("control client dropped: %s", exc)
        except Exception:  # one client's bug must never reach the others or the daemon
            log.exception("control connection of uid %d failed unexpectedly", creds.uid)
        finally:
            if writer is None:
                conn.close()
            else:
                writer.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await writer.wait_closed()

    def _idle_timeout(self) -> float:
        return self.hub.config.control.idle_timeout_seconds

    async def _serve(self, reader: asyncio.StreamReader, client: _Client) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.hub.config.control
        splitter = LineSplitter()
        clock = RequestClock(loop.time(), idle_seconds=cfg.idle_timeout_seconds,
                             request_seconds=cfg.request_timeout_seconds)
        while not client.gone:
            try:
                data = await asyncio.wait_for(reader.read(READ_CHUNK),
                                              max(0.0, clock.deadline() - loop.time()))
            except TimeoutError:
                await self._reject(client, None, "-", ProtocolError(*clock.expired_reason()))
                return
            if not data:
                tail = splitter.pending()
                if tail.strip():
                    await self._serve_line(client, tail)
                return
            clock.received(loop.time())
            for line in splitter.feed(data):
                if client.gone:  # it hung up: what it sent after the last answer is dropped
                    return
                if await self._serve_line(client, line):
                    clock.answered(loop.time(), pending=splitter.buffered())

    async def _serve_line(self, client: _Client, line: bytes | TooLong) -> bool:
        """Answer one line; False for a blank line (nothing to answer)."""
        self._served += 1
        if isinstance(line, TooLong):
            await self._reject(client, None, "-", ProtocolError(
                "too_long", "request line exceeds 64 KiB; it was discarded"))
            return True
        if not line.strip():
            return False
        try:
            request = parse_request(line)
        except ProtocolError as exc:
            await self._reject(client, exc.request_id, "-", exc)
            return True
        await self._dispatch(client, request)
        return True

    async def _reject(self, client: _Client, request_id: RequestId, command: str,
                      error: ProtocolError) -> None:
        self._account(client.peer, command, "invalid", error.code, error.message)
        await client.send(error_response(request_id, error.code, error.message))

    # -- dispatch --------------------------------------------------------------------------
    async def _dispatch(self, client: _Client, request: Request) -> None:
        command = self.commands.get(request.cmd)
        label = request.cmd if command is not None else "unknown"
        outcome, detail = "internal", ""
        if command is not None and command.role == "operator":  # a kill mid-action keeps it
            self._audit(client.peer, request.cmd, "received", _detail(request.args, ""))
        try:
            data = await self._run(client, request, command)
            outcome = "ok"
            await client.send(ok_response(request.id, data))
        except ProtocolError as exc:
            outcome, detail = exc.code, exc.message
            await client.send(error_response(request.id, exc.code, exc.message))
        except GatedFailure as exc:
            outcome, detail = "failed", str(exc)
            await client.send(error_response(request.id, "failed", str(exc), exc.details()))
        except RefusedError as exc:
            outcome, detail = "refused", str(exc)
            await client.send(error_response(request.id, "refused", str(exc)))
        except WatchdogError as exc:
            outcome, detail = "failed", str(exc)
            await client.send(error_response(request.id, "failed", str(exc)))
        except Exception as exc:
            log.exception("control command %s failed unexpectedly", request.cmd)
            detail = f"{type(exc).__name__}: {exc}"
            await client.send(error_response(request.id, "internal", "internal error: "
                                             f"{detail}; see the daemon log"))
        finally:
            self._account(client.peer, request.cmd, label, outcome,
                          _detail(request.args, detail))

    async def _run(self, client: _Client, request: Request, command: Command | None) -> Any:
        if command is None:
            raise ProtocolError("unknown_command", f"unknown command {request.cmd[:100]!r}; "
                                f"known: {', '.join(sorted(self.commands))}")
        cfg = self.hub.config.control
        client.peer = await asyncio.to_thread(refresh, client.peer, self.uid_lookup)
        role = role_of(client.peer, readers=cfg.readers, operators=cfg.operators)
        if not allowed(role, command.role):
            raise ProtocolError("denied", f"{client.peer.user} (uid {client.peer.uid}) may not "
                                f"run {command.name}: it needs the {command.role} role "
                                "([control] readers/operators)")
        args = validate_args(command.name, request.args, command.args)
        return await command.handler(self._context(client, request.id), args)

    def _context(self, client: _Client, request_id: RequestId) -> Context:
        async def progress(stage: str, message: str) -> None:
            await client.send(progress_event(request_id, stage, message, self.hub.clock()))
        return Context(hub=self.hub, peer=client.peer, approvals=self.approvals,
                       gated=self.gated, progress=progress, run_exclusive=self._run_exclusive)

    async def _run_exclusive(self, kind: str, work: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``work`` in its own task under the action lock (RefusedError while another action
        holds it); the caller's cancellation does not cancel it (a client hanging up
        mid-restore must not leave a half-done restore)."""
        return await asyncio.shield(self._start_exclusive(kind, "approved", work))

    def _start_exclusive(self, kind: str, origin: str,
                         work: Callable[[], Awaitable[Any]]) -> asyncio.Task[Any]:
        """Take the action lock (no ``await`` between check and set) and run ``work`` in its own
        task, which releases it."""
        lease = self.hub.action_lock.acquire(kind, origin)
        task = self._running_action = asyncio.create_task(_call(work))

        def done(_: asyncio.Task[Any]) -> None:
            self.hub.action_lock.release(lease)
            if self._running_action is task:
                self._running_action = None
            failure = None if task.cancelled() else task.exception()
            if failure is not None and origin == "recovery":  # no caller awaits it
                log.error("ending what %s left running failed: %s", kind, failure)
        task.add_done_callback(done)
        return task

    def _account(self, peer: Peer, command: str, label: str, outcome: str, detail: str) -> None:
        self.hub.metrics.control_requests.labels(command=label, outcome=outcome).inc()
        self._audit(peer, command, outcome, detail)

    def _audit(self, peer: Peer, command: str, outcome: str, detail: str) -> None:
        try:
            self.hub.store.audit(uid=peer.uid, user=peer.user, command=command[:100],
                                 outcome=outcome, detail=detail[:1000])
        except (WatchdogError, sqlite3.Error) as exc:
            self._complain("audit", f"cannot write the control audit log: {exc}")


async def _call(work: Callable[[], Awaitable[Any]]) -> Any:
    return await work()


def _detail(args: Mapping[str, Any], message: str) -> str:
    """Arguments as audited: tokens appear only as a short hash prefix."""
    shown = {k: (f"sha256:{hash_token(str(v))[:12]}" if k == "token" else v)
             for k, v in args.items()}
    text = json.dumps(shown, default=str, sort_keys=True)
    return f"{text} {message}".strip()


def _bind(path: Path, group: str) -> socket.socket:
    """Create the listening socket with its final mode and group before it accepts anyone."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise FatalError(f"control socket path {path} is longer than {SUN_PATH_MAX} bytes; "
                         "choose a shorter [control] socket")
    gid = _group_id(group)
    _claim(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FatalError(f"cannot create the control socket's folder {path.parent}: "
                         f"{exc.strerror}; fix [control] socket") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)
        if gid is not None:
            os.chown(path, -1, gid)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise FatalError(f"cannot create control socket {path}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _group_id(group: str) -> int | None:
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise FatalError(f"[control] group {group!r} does not exist; create it or fix the "
                         "config") from None


def _claim(path: Path) -> None:
    """Remove a stale socket; refuse a live one or anything that is not a socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise FatalError(f"cannot use control socket path {path}: {exc.strerror}; fix "
                         "[control] socket") from None
    if not stat.S_ISSOCK(mode):
        raise FatalError(f"{path} exists and is not a socket; move it away or fix "
                         "[control] socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("replacing stale control socket %s", path)
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise FatalError(f"cannot check existing control socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise FatalError(f"another process is serving the control socket {path} (is another "
                     "brace-watchdog running?); stop it or choose another [control] socket")


def _default_gated(hub: Hub) -> dict[str, GatedAction]:
    actions: list[GatedAction] = [DbRollback(hub), PgHbaRollback(hub), DockerDaemonRollback(hub)]
    return {action.name: action for action in actions}


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then discard what the client still sends for at most ``LINGER_SECONDS``.

    Closing a socket with unread input makes the kernel reset the connection, and a client still
    writing (blank lines past its deadline, say) would lose the answer it was just sent.
    """
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_SECONDS):
            while await reader.read(READ_CHUNK):
                pass
