"""``brace-watchdogctl``: the operator's client for the daemon's control socket.

Readable tables by default, ``--json`` for machines (accepted before or after the command);
progress of long actions is printed live on stderr. Gated rollbacks show the plan and ask the
operator to type the target's name (``--yes`` skips that) before approving. ``approve`` and
``inspect`` read the plan token from the terminal without echo, or from stdin's first line —
never from argv, where ``ps`` would show it — and print the plan stored with it.

Exit codes::

    0  ok
    1  the action failed, was refused, or was not confirmed
    2  usage error (bad arguments, unknown command)
    3  denied: this user may not run the command ([control] readers/operators)
    4  the daemon is unreachable (no socket, not running, connection lost)
"""

from __future__ import annotations

import argparse
import getpass
import itertools
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from brace_watchdog.config import load_config
from brace_watchdog.control.protocol import PROTOCOL_VERSION, encode
from brace_watchdog.errors import ConfigError

__all__ = ["EXIT_DENIED", "EXIT_FAILED", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE",
           "ControlClient", "Unreachable", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DENIED, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
DEFAULT_CONFIG = "/etc/brace-watchdog/brace-watchdog.toml"
FALLBACK_SOCKET = "/run/brace-watchdog/control.sock"
USAGE_CODES = ("bad_args", "bad_request", "unknown_command", "invalid_json", "too_long")
GATED = {"db": "db_rollback", "pg-hba": "pg_hba_rollback", "docker-daemon":
         "docker_daemon_rollback"}

Printer = Callable[[dict[str, Any], TextIO], None]


class Unreachable(Exception):
    """The daemon could not be reached or hung up before answering."""


class ControlClient:
    """A blocking JSON-lines client: one request, any progress events, one result."""

    def __init__(self, path: str, *, connect_timeout: float = 5.0) -> None:
        self.path = path
        self.connect_timeout = connect_timeout
        self._ids = itertools.count(1)

    def call(self, cmd: str, args: dict[str, Any] | None = None, *,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        request_id = next(self._ids)
        message = {"v": PROTOCOL_VERSION, "id": request_id, "cmd": cmd, "args": args or {}}
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.connect_timeout)
                sock.connect(self.path)
                sock.settimeout(None)
                sock.sendall(encode(message))
                return self._read(sock, request_id, on_progress)
        except FileNotFoundError:
            raise Unreachable(f"no control socket at {self.path}; is brace-watchdog running? "
                              "(--socket PATH or [control] socket)") from None
        except PermissionError:
            raise Unreachable(f"permission denied on {self.path}: this user is not in the "
                              "socket's group") from None
        except OSError as exc:
            raise Unreachable(f"cannot talk to {self.path}: {exc.strerror or exc}") from None

    @staticmethod
    def _read(sock: socket.socket, request_id: int,
              on_progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        with sock.makefile("rb") as stream:
            for raw in stream:
                reply = json.loads(raw)
                if reply.get("event") == "progress" and on_progress is not None:
                    on_progress(reply)
                elif reply.get("event") == "result" and reply.get("id") in (request_id, None):
                    return dict(reply)
        raise Unreachable("the daemon closed the connection before answering")


# -- rendering ----------------------------------------------------------------------------------
def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts))) if ts else "-"


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str], out: TextIO) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _kv(data: dict[str, Any], out: TextIO) -> None:
    for key, value in data.items():
        shown = json.dumps(value, default=str) if isinstance(value, dict | list) else value
        out.write(f"{key}: {shown}\n")


def _events(data: dict[str, Any], out: TextIO) -> None:
    _table([(e["id"], _when(e["ts"]), e["severity"], e["kind"], e["message"][:90])
            for e in data["events"]], ("ID", "TIME (UTC)", "SEVERITY", "KIND", "MESSAGE"), out)


def _backups(data: dict[str, Any], out: TextIO) -> None:
    def test(row: dict[str, Any]) -> str:
        last = row["last_restore_test"]
        return "-" if not last else ("passed " if last["passed"] else "FAILED ") + _when(
            last["finished_at"])
    out.write(f"{data['directory']}: {data['total']} files, "
              f"{'fresh' if data['fresh'] else 'STALE'}\n")
    _table([(b["name"], b["size"], _when(b["timestamp"]), "yes" if b["valid"] else
             f"no: {b['reason']}", test(b)) for b in data["backups"]],
           ("NAME", "BYTES", "TIME (UTC)", "VALID", "LAST RESTORE TEST"), out)


def _status(data: dict[str, Any], out: TextIO) -> None:
    out.write(f"{data['status_line'] or 'no component status yet'}\n")
    out.write(f"automation: {'FROZEN: ' + data['frozen']['reason'] if data['frozen'] else 'on'}\n")
    escalation = data["escalation"]
    out.write(f"escalation: {escalation['message'] if escalation else 'none'}\n")
    _leader(data.get("leadership"), out)
    lock = data.get("action_lock")
    if lock:
        out.write(f"running: {lock['origin']} {lock['kind']} since {_when(lock['since'])} UTC\n")
    for action in data["open_actions"]:
        out.write(f"open action #{action['id']} {action['kind']}: {action['status']} "
                  f"at {action['step']}\n")


def _leader(data: dict[str, Any] | None, out: TextIO) -> None:
    if not data or not data["enabled"]:
        return
    leader = data["leader"]
    who = (f"{leader['host']} (pid {leader['pid']})" if leader else "none (lock free)")
    held = data["held_seconds"]
    since = f", holding the lock for {held:.0f}s" if held is not None else ""
    role = "this instance" if data["reason"] in ("leader", "settling", "stale") else "another"
    out.write(f"leader: {who}{since} — {role}; {data['message']}\n")


def _explain(data: dict[str, Any], out: TextIO) -> None:
    event = data["event"]
    out.write(f"#{event['id']} {_when(event['ts'])} {event['severity']} {event['kind']} "
              f"({event['source']})\n{event['message']}\nevidence:\n")
    out.write(json.dumps(event["evidence"], indent=2, default=str) + "\n")
    if data.get("journal"):
        out.write("action journal:\n")
        _events({"events": data["journal"]}, out)


def _approval(view: dict[str, Any], out: TextIO) -> None:
    login = view.get("requester_login_uid")
    who = f"{view['requester']} (uid {view['requester_uid']}" + (
        f", login uid {login})" if login is not None else ")")
    out.write(f"{view['action']} planned by {who}, valid until {_when(view['expires_at'])} "
              "UTC\n")
    if view.get("plan"):
        _plan(view["plan"], out)
    else:
        out.write(f"  arguments: {view['args']}\n")


def _plan(data: dict[str, Any], out: TextIO) -> None:
    out.write(f"Plan for {data['action']} ({data['target']}):\n")
    for number, step in enumerate(data["steps"], 1):
        out.write(f"  {number}. {step}\n")
    for line in data.get("checks", {}).get("diff", []):
        out.write(f"    {line}\n")
    tests = data.get("checks", {}).get("restore_tests")
    if tests is not None:
        out.write("  restore tests of this dump: " + (", ".join(
            f"{'passed' if t['passed'] else 'FAILED'} {_when(t['finished_at'])}"
            for t in tests) or "none") + "\n")
    for warning in data.get("warnings", []):
        out.write(f"  WARNING: {warning}\n")


def _app_plan(data: dict[str, Any], out: TextIO) -> None:
    """The plan of ``rollback app --plan``/``--to``: target, retags, the compose command or
    (driver ``swarm``) each service's step, refusals."""
    manual, plan = data["manual"], data.get("plan")
    out.write(f"Plan for the app rollback to {str(data.get('target') or '-')[:12]}:\n"
              f"  policy: {manual['message']}\n")
    if plan is not None:
        for retag in plan["retags"]:
            out.write(f"  retag {retag['tag']} -> {retag['image_id'][:19]}\n")
        if plan["use_snapshot"]:
            out.write("  write the known-good config back: "
                      f"{', '.join(plan['config_files'])}\n")
        for step in plan.get("swarm_steps") or []:
            out.write(f"  swarm: {step}\n")
        if plan["argv"]:
            out.write(f"  run: {' '.join(plan['argv'])}\n")
    if data.get("refused"):
        out.write(f"  REFUSED: {data['refused']}\n")


def _markdown(data: dict[str, Any], out: TextIO) -> None:
    out.write(data["markdown"])


def _releases(data: dict[str, Any], out: TextIO) -> None:
    def state(row: dict[str, Any]) -> str:
        by = "another leader" if row["rolled_back_by"] is None else f"#{row['rolled_back_by']}"
        marks = [("current", row["current"]), ("known-good", row["known_good_at"]),
                 ("newest-known-good", row["newest_known_good"]),
                 (f"FAILED {_when(row['failed_at'])}", row["failed_at"]),
                 ("pinned", row["pinned"]),
                 (f"rolled-back-from ({by} {_when(row['rolled_back_at'])})",
                  row["rolled_back_at"])]
        return ", ".join(name for name, on in marks if on) or "-"
    _table([(r["release"], _when(r["first_seen"]), state(r)) for r in data["releases"]],
           ("RELEASE", "FIRST SEEN (UTC)", "STATE"), out)


PRINTERS: dict[str, Printer] = {
    "status": _status, "events": _events, "backups": _backups, "explain": _explain,
    "timeline": _markdown, "releases": _releases,
}


# -- command line ---------------------------------------------------------------------------------
AddCommand = Callable[[str, str], argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the daemon's answer as JSON")
    parser = argparse.ArgumentParser(
        prog="brace-watchdogctl", parents=[common],
        description="Talk to the brace-watchdog daemon over its control socket.",
        epilog="exit codes: 0 ok, 1 action failed/refused/not confirmed, 2 usage, 3 denied, "
               "4 daemon unreachable", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", help="control socket (default: [control] socket of --config)")
    parser.add_argument("--config", default=os.environ.get("BRACE_WATCHDOG_CONFIG",
                                                           DEFAULT_CONFIG),
                        help=f"config file to read the socket path from (default {DEFAULT_CONFIG})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text)

    _add_reading_commands(add)
    _add_acting_commands(add)
    return parser


def _add_reading_commands(add: AddCommand) -> None:
    """The commands that only read: status, events, explain, timeline, backups."""
    add("status", "daemon and component status, freeze and escalation")
    events = add("events", "the event log")
    events.add_argument("--limit", type=int)
    events.add_argument("--since-id", type=int)
    events.add_argument("--kind")
    add("explain", "an event with its evidence").add_argument("id", type=int)
    timeline = add("timeline", "an incident as a Markdown post-mortem draft")
    timeline.add_argument("--action-id", type=int)
    timeline.add_argument("--hours", type=int)
    add("backups", "backups and their restore tests").add_argument("--limit", type=int)


def _add_acting_commands(add: AddCommand) -> None:
    """The commands that (may) change something: restore tests, releases' failed marks,
    rollbacks and their approval, freeze, escalations."""
    add("restore-test", "run a restore test now").add_argument("--dump")
    releases = add("releases", "releases (current, known-good, failed, pinned, rolled back "
                   "from); clear-failed RELEASE clears a failed mark")
    releases.add_argument("verb", nargs="?", choices=("clear-failed",))
    releases.add_argument("release", nargs="?", help="fingerprint or its first characters")
    releases.add_argument("--limit", type=int)
    rollback = add("rollback", "app rollback now; db/pg-hba/docker-daemon: plan, confirm, approve")
    rollback.add_argument("what", choices=("app", "db", "pg-hba", "docker-daemon"))
    rollback.add_argument("--dump", help="dump name in the backups folder (rollback db)")
    rollback.add_argument("--yes", action="store_true", help="skip typing the target's name")
    rollback.add_argument("--plan", action="store_true",
                          help="rollback app: only show what it would do")
    rollback.add_argument("--to", metavar="RELEASE",
                          help="rollback app: to this known-good release (fingerprint prefix, "
                          "see `status`); shows the plan and asks first")
    approve = add("approve", "approve a planned action (shows its plan first); the token is "
                  "read from the terminal, or from stdin's first line, never from argv")
    approve.add_argument("--yes", action="store_true", help="skip typing the target's name")
    add("inspect", "show the stored plan a token would approve, without using it (token read "
        "like approve's)")
    add("freeze", "freeze automatic actions").add_argument("--reason")
    add("unfreeze", "resume automatic actions")
    add("ack", "acknowledge the pending escalation")


def _args_for(ns: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    picks = {"events": ("limit", "since_id", "kind"), "explain": ("id",),
             "timeline": ("action_id", "hours"), "backups": ("limit",),
             "restore-test": ("dump",), "freeze": ("reason",), "releases": ("limit",)}
    args = {k: getattr(ns, k) for k in picks.get(ns.command, ()) if getattr(ns, k) is not None}
    return ns.command, args


def socket_path(ns: argparse.Namespace) -> str:
    if ns.socket:
        return str(ns.socket)
    try:
        return str(load_config(ns.config).control.socket)
    except ConfigError as exc:
        if ns.config == DEFAULT_CONFIG and not Path(DEFAULT_CONFIG).exists():
            return FALLBACK_SOCKET
        sys.stderr.write(f"brace-watchdogctl: {exc}\n(give --socket PATH to skip the config)\n")
        raise SystemExit(EXIT_USAGE) from None


class Session:
    """One invocation: a client, output streams, the --json switch."""

    def __init__(self, client: ControlClient, *, as_json: bool, out: TextIO, err: TextIO,
                 ask: Callable[[str], str], ask_secret: Callable[[str], str]) -> None:
        self.client = client
        self.as_json = as_json
        self.out = out
        self.err = err
        self.ask = ask
        self.ask_secret = ask_secret

    def progress(self, event: dict[str, Any]) -> None:
        self.err.write(f"[{_when(event.get('ts'))}] {event.get('stage')}: "
                       f"{event.get('message')}\n")
        self.err.flush()

    def call(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        return self.client.call(cmd, args, on_progress=self.progress)

    def finish(self, reply: dict[str, Any], printer: Printer = _kv) -> int:
        if self.as_json:
            self.out.write(json.dumps(reply.get("data") if reply["ok"] else reply, indent=2,
                                      default=str) + "\n")
        elif reply["ok"]:
            data = reply["data"]
            printer(data, self.out) if isinstance(data, dict) else self.out.write(f"{data}\n")
        else:
            self._error(reply["error"])
        return EXIT_OK if reply["ok"] else _exit_code(reply["error"]["code"])

    def _error(self, error: dict[str, Any]) -> None:
        self.err.write(f"error ({error['code']}): {error['message']}\n")
        details = error.get("details") or {}
        if details.get("state"):
            self.err.write("state now:\n")
            for key, value in details["state"].items():
                self.err.write(f"  {key}: {value}\n")
        for step in details.get("next_steps", []):
            self.err.write(f"  next: {step}\n")

    def confirm(self, target: str, yes: bool) -> bool:
        if yes:
            return True
        try:
            typed = self.ask(f"Type '{target}' to approve (anything else aborts): ")
        except EOFError:
            typed = ""
        if typed.strip() != target:
            self.err.write("not confirmed; nothing was changed\n")
            return False
        return True

    def gated(self, cmd: str, args: dict[str, Any], yes: bool) -> int:
        reply = self.call(cmd, args)
        if not reply["ok"]:
            return self.finish(reply)
        plan = reply["data"]
        if not self.as_json:
            _plan(plan, self.out)
        if plan["two_person_rule"]:
            self.out.write(json.dumps(plan, indent=2) + "\n" if self.as_json else
                           "two-person rule: another operator must run `brace-watchdogctl "
                           f"approve` and paste this token when asked:\n  {plan['token']}\n"
                           f"(token valid until {_when(plan['expires_at'])} UTC)\n")
            return EXIT_OK
        if not self.confirm(plan["target"], yes):
            return EXIT_FAILED
        return self.finish(self.call("approve", {"token": plan["token"]}))

    def rollback_app(self, release: str | None, *, plan_only: bool, yes: bool) -> int:
        """``rollback app [--plan] [--to RELEASE]``: without ``--to`` at once (the daemon's
        choice); with it, plan, show, confirm, then run bound to the confirmed target."""
        if release is None or plan_only:
            args = {"plan_only": True} if plan_only else {}
            return self.finish(self.call("app_rollback", {
                **args, **({"to": release} if release else {})}),
                (lambda data, out: _app_plan(data["plan"], out)) if plan_only else _kv)
        reply = self.call("app_rollback", {"plan_only": True, "to": release})
        if not reply["ok"]:
            return self.finish(reply)
        data = reply["data"]["plan"]
        if not self.as_json:
            _app_plan(data, self.out)
        if data.get("refused") or data["manual"]["action"] != "rollback":
            self.err.write("refused; nothing was changed\n")
            return EXIT_FAILED
        target = str(data["target"])
        if not self.confirm(target[:12], yes):
            return EXIT_FAILED
        return self.finish(self.call("app_rollback", {"to": release, "expect": target}))

    def token(self) -> str | None:
        """The plan token, typed at the terminal (not echoed) or piped as stdin's first line."""
        try:
            token = self.ask_secret("Token from the plan: ").strip()
        except EOFError:
            token = ""
        if not token:
            self.err.write("no token given: paste it when asked, or pipe it on stdin "
                           "(never on the command line, where `ps` shows it)\n")
        return token or None

    def inspect(self) -> int:
        token = self.token()
        if token is None:
            return EXIT_USAGE
        return self.finish(self.call("inspect", {"token": token}), _approval)

    def approve(self, yes: bool) -> int:
        token = self.token()
        if token is None:
            return EXIT_USAGE
        reply = self.call("inspect", {"token": token})
        if not reply["ok"]:
            return self.finish(reply)
        view = reply["data"]
        if not self.as_json:
            _approval(view, self.out)
        if not self.confirm(view["target"], yes):
            return EXIT_FAILED
        return self.finish(self.call("approve", {"token": token}))


def read_secret(prompt: str) -> str:
    """A line from the terminal without echo, or stdin's next line when it is not a terminal."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line


def _exit_code(code: str) -> int:
    if code == "denied":
        return EXIT_DENIED
    return EXIT_USAGE if code in USAGE_CODES else EXIT_FAILED


def _rollback(ns: argparse.Namespace, session: Session) -> int:
    if ns.what == "app":
        return session.rollback_app(ns.to, plan_only=ns.plan, yes=ns.yes)
    if ns.what == "db" and not ns.dump:
        session.err.write("rollback db needs --dump NAME\n")
        return EXIT_USAGE
    return session.gated(GATED[ns.what], {"dump": ns.dump} if ns.what == "db" else {}, ns.yes)


def _clear_failed(ns: argparse.Namespace, session: Session) -> int:
    if not ns.release:
        session.err.write("releases clear-failed needs RELEASE (see `releases`)\n")
        return EXIT_USAGE
    return session.finish(session.call("release-clear-failed", {"release": ns.release}))


def run(ns: argparse.Namespace, session: Session) -> int:
    if ns.command == "rollback":
        return _rollback(ns, session)
    if ns.command == "releases" and ns.verb == "clear-failed":
        return _clear_failed(ns, session)
    if ns.command == "approve":
        return session.approve(ns.yes)
    if ns.command == "inspect":
        return session.inspect()
    cmd, args = _args_for(ns)
    return session.finish(session.call(cmd, args), PRINTERS.get(cmd, _kv))


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    session = Session(ControlClient(socket_path(ns)), as_json=getattr(ns, "json", False),
                      out=sys.stdout, err=sys.stderr, ask=input, ask_secret=read_secret)
    try:
        return run(ns, session)
    except Unreachable as exc:
        sys.stderr.write(f"brace-watchdogctl: {exc}\n")
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; a started action keeps running in the daemon "
                         "(see `status`)\n")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
