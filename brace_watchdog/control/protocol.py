"""The control socket's wire protocol (version 1): JSON lines, requests, responses, progress.

One JSON object per line, UTF-8, at most :data:`MAX_LINE_BYTES` bytes (newline included). Lines
that are not valid UTF-8, hold a lone surrogate escape (``\\ud800``), a non-finite number or an
integer too long to read are refused as ``invalid_json``; integer arguments must fit in 53 bits.

Request::

    {"v": 1, "id": "any string or integer", "cmd": "status", "args": {...}}

Responses carry the request's ``id``. A long action sends any number of progress lines and then
exactly one result line::

    {"v": 1, "id": 7, "event": "progress", "stage": "restoring", "message": "...", "ts": 1.0}
    {"v": 1, "id": 7, "event": "result", "ok": true, "data": {...}}
    {"v": 1, "id": 7, "event": "result", "ok": false,
     "error": {"code": "denied", "message": "..."}}

Everything here is pure: parsing and validation raise :class:`ProtocolError` with an error code
and a message written for the operator; nothing does I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ERROR_CODES",
    "MAX_LINE_BYTES",
    "PROTOCOL_VERSION",
    "ArgSpec",
    "LineSplitter",
    "ProtocolError",
    "Request",
    "TooLong",
    "encode",
    "error_response",
    "ok_response",
    "parse_request",
    "progress_event",
    "validate_args",
]

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 64 * 1024
MAX_ID_CHARS = 128
MAX_SAFE_INT = 2 ** 53
TOO_DEEP = "request is not valid JSON: nested too deeply"

ERROR_CODES = (
    "invalid_json",     # the line is not a JSON object
    "too_long",         # the line exceeds MAX_LINE_BYTES
    "bad_request",      # envelope wrong: version, id, cmd, args
    "unknown_command",  # cmd is not one we serve
    "bad_args",         # an argument is missing, unknown or of the wrong type
    "denied",           # the peer's uid may not run this command
    "refused",          # a guard refused the action (bad dump name, expired token, ...)
    "failed",           # the action ran and failed
    "unavailable",      # the component that serves the command is not running
    "idle_timeout",     # no complete request within [control] idle_timeout_seconds
    "request_timeout",  # a started request line not finished within request_timeout_seconds
    "busy",             # too many open connections ([control] max_clients[_per_uid])
    "internal",         # a bug: logged with a traceback
)

RequestId = str | int | None
ArgType = Literal["str", "int", "bool"]


class ProtocolError(Exception):
    """A request that cannot be served; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    id: RequestId
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArgSpec:
    """One argument of a command: its JSON type, whether it is required, its bounds."""

    type: ArgType
    required: bool = False
    max_chars: int = 4096
    minimum: int | None = None
    maximum: int | None = None


class TooLong:
    """Marker yielded by :class:`LineSplitter` for a line that exceeded the limit."""

    def __repr__(self) -> str:
        return "TooLong()"


TOO_LONG = TooLong()


class LineSplitter:
    """Splits a byte stream into lines; a line over ``limit`` becomes one :class:`TooLong`.

    The rest of an oversized line is discarded up to its newline, so the next line is read
    cleanly: a huge line costs the client one error, never the connection or the daemon's memory.
    """

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> Iterator[bytes | TooLong]:
        self._buffer += data
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                break
            line = bytes(self._buffer[:newline])
            del self._buffer[:newline + 1]
            if self._discarding:
                self._discarding = False
                continue
            yield TOO_LONG if len(line) + 1 > self.limit else line
        if len(self._buffer) >= self.limit:
            self._buffer.clear()
            if not self._discarding:
                self._discarding = True
                yield TOO_LONG

    def buffered(self) -> bool:
        """Part of a line (or of an oversized one being discarded) is waiting for its newline."""
        return self._discarding or bool(self._buffer)

    def pending(self) -> bytes:
        """A final line without newline (at end of stream), unless it was being discarded."""
        return b"" if self._discarding else bytes(self._buffer)


def parse_request(line: bytes) -> Request:
    """Decode and check the envelope of one request line (not the command's arguments)."""
    value = _decode(line)
    if not isinstance(value, dict):
        raise ProtocolError("invalid_json",
                            f"request must be a JSON object, not {_json_type(value)}")
    request_id = _request_id(value.get("id"))
    version = value.get("v")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError("bad_request", f"unsupported protocol version {version!r}; this "
                            f"daemon speaks v{PROTOCOL_VERSION}", request_id)
    cmd = value.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise ProtocolError("bad_request", "'cmd' must be a non-empty string", request_id)
    args = value.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError("bad_request", f"'args' must be an object, not {_json_type(args)}",
                            request_id)
    unknown = sorted(set(value) - {"v", "id", "cmd", "args"})
    if unknown:
        raise ProtocolError("bad_request", f"unknown request fields {unknown}", request_id)
    return Request(request_id, cmd, args)


def _decode(line: bytes) -> Any:
    """The line as JSON that round-trips: UTF-8, finite numbers, no lone surrogates."""
    try:
        value = json.loads(line.decode("utf-8"), parse_constant=_no_constant,
                           parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise ProtocolError("invalid_json", f"request is not UTF-8 text (bad byte at offset "
                            f"{exc.start})") from None
    except RecursionError:
        raise ProtocolError("invalid_json", TOO_DEEP) from None
    except json.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"request is not valid JSON: {exc}") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise ProtocolError("invalid_json", f"request holds a number that cannot be read: "
                            f"{exc}") from None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("invalid_json", "request holds a lone UTF-16 surrogate (such as "
                            "\\ud800), which is not text; send valid Unicode") from None
    except RecursionError:
        raise ProtocolError("invalid_json", TOO_DEEP) from None
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:20]} is out of range")
    return number


def _request_id(value: Any) -> RequestId:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)
                         and abs(value) < MAX_SAFE_INT):
        return value
    if isinstance(value, str) and len(value) <= MAX_ID_CHARS:
        return value
    raise ProtocolError("bad_request", f"'id' must be a string of at most {MAX_ID_CHARS} "
                        "characters or an integer")


def validate_args(cmd: str, args: Mapping[str, Any], specs: Mapping[str, ArgSpec]
                  ) -> dict[str, Any]:
    """Check ``args`` against ``specs``; return them, or raise ProtocolError("bad_args")."""
    problems: list[str] = []
    unknown = sorted(set(args) - set(specs))
    if unknown:
        problems.append(f"unknown arguments {unknown} (accepted: {sorted(specs) or 'none'})")
    for name, spec in specs.items():
        if name not in args or args[name] is None:
            if spec.required:
                problems.append(f"'{name}' is required")
            continue
        problem = _check(args[name], spec)
        if problem:
            problems.append(f"'{name}' {problem}")
    if problems:
        raise ProtocolError("bad_args", f"{cmd}: " + "; ".join(problems))
    return {k: v for k, v in args.items() if v is not None}


def _check(value: Any, spec: ArgSpec) -> str:
    if spec.type == "bool":
        return "" if isinstance(value, bool) else f"must be true or false, not {_json_type(value)}"
    if spec.type == "str":
        if not isinstance(value, str):
            return f"must be a string, not {_json_type(value)}"
        return f"must be at most {spec.max_chars} characters" if len(value) > spec.max_chars else ""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, not {_json_type(value)}"
    if abs(value) >= MAX_SAFE_INT:
        return f"must be between -{MAX_SAFE_INT - 1} and {MAX_SAFE_INT - 1}"
    return _bounds(value, spec)


def _bounds(value: int, spec: ArgSpec) -> str:
    if spec.minimum is not None and value < spec.minimum:
        return f"must be >= {spec.minimum}"
    if spec.maximum is not None and value > spec.maximum:
        return f"must be <= {spec.maximum}"
    return ""


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(
                type(value), type(value).__name__)


def ok_response(request_id: RequestId, data: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "event": "result", "ok": True, "data": data}


def error_response(request_id: RequestId, code: str, message: str,
                   details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = dict(details)
    return {"v": PROTOCOL_VERSION, "id": request_id, "event": "result", "ok": False,
            "error": error}


def progress_event(request_id: RequestId, stage: str, message: str, ts: float) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "event": "progress", "stage": stage,
            "message": message, "ts": ts}


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as one line; values JSON cannot carry become strings."""
    return json.dumps(message, default=str, separators=(",", ":")).encode("utf-8") + b"\n"
