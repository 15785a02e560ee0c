"""Unit tests for the control protocol: envelope parsing, argument validation, line splitting."""

from __future__ import annotations

import json

import pytest

from brace_watchdog.control.auth import Peer, allowed, role_of
from brace_watchdog.control.protocol import (
    MAX_LINE_BYTES,
    ArgSpec,
    LineSplitter,
    ProtocolError,
    TooLong,
    encode,
    error_response,
    ok_response,
    parse_request,
    progress_event,
    validate_args,
)


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_parses_a_valid_request() -> None:
    request = parse_request(line({"v": 1, "id": "a", "cmd": "status", "args": {"x": 1}}))
    assert (request.id, request.cmd, request.args) == ("a", "status", {"x": 1})


def test_args_default_to_empty_and_id_may_be_missing() -> None:
    request = parse_request(line({"v": 1, "cmd": "status"}))
    assert request.id is None and request.args == {}


@pytest.mark.parametrize(("raw", "code", "fragment"), [
    (b"not json", "invalid_json", "not valid JSON"),
    (b"\xff\xfe", "invalid_json", "UTF-8"),
    (b"[1, 2]", "invalid_json", "an array"),
    (b'"text"', "invalid_json", "a string"),
    (b"[" * 100_000, "invalid_json", "JSON"),
    (line({"v": 2, "cmd": "status"}), "bad_request", "version 2"),
    (line({"v": True, "cmd": "status"}), "bad_request", "version"),
    (line({"cmd": "status"}), "bad_request", "version None"),
    (line({"v": 1}), "bad_request", "'cmd'"),
    (line({"v": 1, "cmd": ""}), "bad_request", "'cmd'"),
    (line({"v": 1, "cmd": 5}), "bad_request", "'cmd'"),
    (line({"v": 1, "cmd": "x", "args": []}), "bad_request", "'args' must be an object"),
    (line({"v": 1, "cmd": "x", "extra": 1}), "bad_request", "unknown request fields"),
    (line({"v": 1, "cmd": "x", "id": {"a": 1}}), "bad_request", "'id'"),
    (line({"v": 1, "cmd": "x", "id": "i" * 200}), "bad_request", "'id'"),
    (line({"v": 1, "cmd": "x", "id": 2 ** 60}), "bad_request", "'id'"),
    (line({"v": 1, "cmd": "x", "id": True}), "bad_request", "'id'"),
    (b'{"v":1,"cmd":"status","id":' + b"9" * 5000 + b"}", "invalid_json", "4300"),
    (b'{"v":1,"cmd":"\\ud800"}', "invalid_json", "surrogate"),
    (b'{"v":1,"cmd":"freeze","args":{"reason":"a\\udfffb"}}', "invalid_json", "surrogate"),
    (b'{"v":1,"cmd":"x","args":{"\\ud800":1}}', "invalid_json", "surrogate"),
    (b'{"v":1,"cmd":"x","args":{"n":NaN}}', "invalid_json", "NaN"),
    (b'{"v":1,"cmd":"x","args":{"n":-Infinity}}', "invalid_json", "Infinity"),
    (b'{"v":1,"cmd":"x","args":{"n":1e999}}', "invalid_json", "out of range"),
    (b'{"v":1,"cmd":"st\xc3"}', "invalid_json", "UTF-8"),
    (b'{"v":1,"cmd":"\xed\xa0\x80"}', "invalid_json", "UTF-8"),
])
def test_bad_envelopes_get_clear_errors(raw: bytes, code: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(raw)
    assert info.value.code == code
    assert fragment in info.value.message


def test_error_keeps_the_request_id_when_it_was_readable() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(line({"v": 9, "id": 42, "cmd": "x"}))
    assert info.value.request_id == 42


SPECS = {"name": ArgSpec("str", required=True, max_chars=5),
         "count": ArgSpec("int", minimum=1, maximum=10),
         "flag": ArgSpec("bool")}


def test_valid_args_pass_and_nulls_are_dropped() -> None:
    assert validate_args("c", {"name": "ab", "count": 3, "flag": None}, SPECS) == {
        "name": "ab", "count": 3}


@pytest.mark.parametrize(("args", "fragment"), [
    ({}, "'name' is required"),
    ({"name": 1}, "'name' must be a string, not an integer"),
    ({"name": "toolong"}, "at most 5"),
    ({"name": "a", "count": "3"}, "'count' must be an integer, not a string"),
    ({"name": "a", "count": True}, "must be an integer, not a boolean"),
    ({"name": "a", "count": 1.5}, "must be an integer, not a number"),
    ({"name": "a", "count": 0}, ">= 1"),
    ({"name": "a", "count": 11}, "<= 10"),
    ({"name": "a", "count": 2 ** 70}, "must be between"),
    ({"name": "a", "flag": "yes"}, "true or false"),
    ({"name": "a", "bogus": 1}, "unknown arguments ['bogus']"),
])
def test_bad_args_are_named(args: dict[str, object], fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        validate_args("cmd", args, SPECS)
    assert info.value.code == "bad_args"
    assert fragment in info.value.message


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ProtocolError) as info:
        validate_args("cmd", {"count": "x", "flag": 1}, SPECS)
    assert info.value.message.count("'") >= 6


def test_splitter_yields_lines_across_chunks() -> None:
    splitter = LineSplitter(limit=100)
    assert list(splitter.feed(b'{"a"')) == []
    assert list(splitter.feed(b':1}\n{"b":2}\nrest')) == [b'{"a":1}', b'{"b":2}']
    assert splitter.pending() == b"rest"


def test_splitter_turns_an_oversized_line_into_one_marker_and_recovers() -> None:
    splitter = LineSplitter(limit=10)
    out = list(splitter.feed(b"x" * 25))
    out += list(splitter.feed(b"y" * 30))
    out += list(splitter.feed(b"z\nok\n"))
    assert [type(o) for o in out] == [TooLong, bytes]
    assert out[1] == b"ok"
    assert splitter.pending() == b""


def test_splitter_flags_a_complete_line_over_the_limit() -> None:
    splitter = LineSplitter(limit=10)
    out = list(splitter.feed(b"123456789\n1234567890\nfine\n"))
    assert out[0] == b"123456789"
    assert isinstance(out[1], TooLong)
    assert out[2] == b"fine"


def test_default_limit_is_64_kib() -> None:
    assert MAX_LINE_BYTES == 65536


def test_responses_are_single_json_lines() -> None:
    for message in (ok_response(1, {"a": [1]}), error_response("x", "denied", "no"),
                    progress_event(2, "restoring", "line\nbreak", 1.0)):
        encoded = encode(message)
        assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
        assert json.loads(encoded)["v"] == 1
    assert json.loads(encode(error_response(1, "failed", "x", {"stage": "s"})))["error"][
        "details"] == {"stage": "s"}


ROOT = Peer(0, 0, 1, "root")
ALICE = Peer(1000, 1000, 2, "alice", ("alice", "ops"))
BOB = Peer(1001, 1001, 3, "bob", ("bob",))


@pytest.mark.parametrize(("peer", "readers", "operators", "role"), [
    (ROOT, (), (), "operator"),
    (ALICE, (), (), None),
    (ALICE, ("alice",), (), "reader"),
    (ALICE, ("ops",), (), "reader"),
    (ALICE, ("@ops",), (), "reader"),
    (ALICE, ("alice",), ("@ops",), "operator"),
    (BOB, ("alice",), ("ops",), None),
])
def test_role_of(peer: Peer, readers: tuple[str, ...], operators: tuple[str, ...],
                 role: str | None) -> None:
    assert role_of(peer, readers=readers, operators=operators) == role


def test_allowed_ranks_operators_above_readers() -> None:
    assert allowed("operator", "reader") and allowed("reader", "reader")
    assert not allowed("reader", "operator") and not allowed(None, "reader")
