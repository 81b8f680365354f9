"""The front reads SIGNATURE and ASYNC from raw bytes: right field, any size, no decoding."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from basic_inference_server.config import parse_endpoint
from basic_inference_server.errors import BadRequest
from basic_inference_server.manager.state import Endpoint
from basic_inference_server.protocol import (
    CONTAINER,
    MAX_JSON_ELEMENTS,
    cut_field,
    json_elements_over,
    peek_field,
    route_field,
)

CASES = [
    (b'{"SIGNATURE": "echo"}', (True, "echo")),
    (b' \n{"A": 1, "SIGNATURE" :  "echo"}', (True, "echo")),
    # Nested fields of the same name are not the request's.
    (b'{"a": {"SIGNATURE": "x"}, "b": [{"SIGNATURE": "y"}], "SIGNATURE": "z"}', (True, "z")),
    (b'{"a": {"SIGNATURE": "x"}}', (False, None)),
    # Text that looks like the field inside a string value or key.
    (b'{"a": "\\"SIGNATURE\\": \\"evil\\"", "SIGNATURE": "ok"}', (True, "ok")),
    (b'{"x\\"SIGNATURE": "evil"}', (False, None)),
    (b'{"a": "[{", "SIGNATURE": "ok"}', (True, "ok")),
    # Escapes in the value are decoded; the last duplicate wins, as in decoding.
    (b'{"SIGNATURE": "no\\u006fp"}', (True, "noop")),
    (b'{"SIGNATURE": "a", "SIGNATURE": "b"}', (True, "b")),
    (b'{"SIGNATURE": 5}', (True, 5)),
    (b'{"SIGNATURE": null}', (True, None)),
    (b'{"SIGNATURE": [1]}', (True, CONTAINER)),
    (b'["SIGNATURE", "x"]', (False, None)),
    (b'"SIGNATURE"', (False, None)),
    (b"", (False, None)),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_peek_field(raw, expected):
    assert peek_field(raw, "SIGNATURE") == expected


@pytest.mark.parametrize(("raw", "_expected"), CASES)
def test_peek_agrees_with_decoding(raw, _expected):
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    if not isinstance(body, dict):
        assert peek_field(raw, "SIGNATURE") == (False, None)
        return
    found, value = peek_field(raw, "SIGNATURE")
    assert found == ("SIGNATURE" in body)
    if found and value is not CONTAINER:
        assert value == body["SIGNATURE"]


def test_peek_of_a_large_body_of_tiny_objects():
    raw = b'{"X": [' + b"{}," * 2_000_000 + b'{}], "ASYNC": true, "SIGNATURE": "echo"}'
    assert peek_field(raw, "SIGNATURE") == (True, "echo")
    assert peek_field(raw, "ASYNC") == (True, True)


# Text that trips scanners: quotes, backslashes, brackets, the field's own name.
TEXT = st.lists(st.sampled_from(['"', "\\", "[", "]", "{", "}", ",", ":", "a", " ", "SIGNATURE",
                                 "USAGE", "\u00e9", "\n"]), max_size=8).map("".join)
KEYS = st.sampled_from(["SIGNATURE", "USAGE", "a", "b\"c", "d\\", "\u00e9t\u00e9"]) | TEXT
VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
                      | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
                      lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)
BODIES = st.dictionaries(KEYS, VALUES, max_size=6)
# Encoders as clients use them: orjson, and json.dumps (non-ASCII escaped as \\u).
ENCODERS = [orjson.dumps, lambda v: json.dumps(v).encode(),
            lambda v: json.dumps(v, indent=1).encode()]


def _values(value: object) -> int:
    """How many values a decoded document holds, itself included."""
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return 1 + sum(map(_values, items))


@settings(max_examples=300, deadline=None)
@given(BODIES)
def test_scans_agree_with_decoding(body):
    for encode in ENCODERS:
        raw = encode(body)
        for key in ("SIGNATURE", "USAGE"):
            found, value = peek_field(raw, key)
            assert found == (key in body), raw
            if found and isinstance(body[key], (list, dict)):
                assert value is CONTAINER, raw
            elif found:
                assert value == body[key], raw
        # Refused exactly when a top-level key is written with an escape.
        escaped = any(b"\\" in encode(key) for key in body)
        try:
            assert route_field(raw) == peek_field(raw, "SIGNATURE")
            refused = False
        except BadRequest:
            refused = True
        assert refused == escaped, raw
        values = _values(body)
        assert not json_elements_over(raw, values) and json_elements_over(raw, values - 1)
        cut, found, _value = cut_field(raw, "USAGE")
        if found and not isinstance(body["USAGE"], (list, dict)):
            assert orjson.loads(cut) == {k: v for k, v in body.items() if k != "USAGE"}, raw
        else:
            assert cut == raw


def test_route_field_refuses_what_the_bytes_may_misread():
    for raw in (b'{"SIGNATURE": "a", "SIGNATURE": "b"}', b'{"SIGN\\u0041TURE": "b"}',
                b'{"SIGNATURE": "a", "x": 1, "SIGNATURE": "b"}',
                b'{"SIGNATURE": "a", "ASYN\\u0043": true}'):
        with pytest.raises(BadRequest):
            route_field(raw)
    # Escapes in values and in nested keys are fine; so is a nested SIGNATURE.
    raw = b'{"SIGNATURE": "no\\u006fp", "X": {"\\u00e9": "\\"", "SIGNATURE": 1}}'
    assert route_field(raw) == (True, "noop")


def test_the_count_of_values_is_an_upper_bound_from_the_bytes():
    assert not json_elements_over(b'{"a": [1, 2, 3]}', 5)
    assert json_elements_over(b'{"a": [1, 2, 3, 4]}', 5)
    # Commas and brackets inside strings are text, not values.
    assert not json_elements_over(b'{"a": "' + b",[{" * 100 + b'"}', 5)
    assert not json_elements_over(b'{"a": "\\",[{,[{"}', 3)
    # Values: the array and its objects; an empty container is one value.
    wide = b"[" + b"{}, " * (MAX_JSON_ELEMENTS - 2) + b"{ }]"
    assert not json_elements_over(wide) and json_elements_over(wide, MAX_JSON_ELEMENTS - 1)
    assert json_elements_over(b"[" + b"[[]]," * (MAX_JSON_ELEMENTS // 2) + b"1]")


def test_max_in_flight_follows_live_workers_and_batch_size():
    ep = Endpoint(config=parse_endpoint("e", {"MAX_BATCH_SIZE": 4}, "test"))
    assert ep.max_in_flight() == 1 * 4 * 32  # no worker ready yet: counted as one
    ep.ready_pids = {1, 2, 3}
    assert ep.max_in_flight() == 3 * 4 * 32
    assert ep.route().max_in_flight == 3 * 4 * 32
    fixed = Endpoint(config=parse_endpoint("f", {"MAX_IN_FLIGHT": 7}, "test"))
    fixed.ready_pids = {1, 2}
    assert fixed.max_in_flight() == 7
