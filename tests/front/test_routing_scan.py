"""The front reads SIGNATURE and ASYNC from raw bytes: right field, any size, no decoding."""

from __future__ import annotations

import orjson
import pytest

from basic_inference_server.config import parse_endpoint
from basic_inference_server.manager.state import Endpoint
from basic_inference_server.protocol import CONTAINER, peek_field

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


def test_max_in_flight_follows_live_workers_and_batch_size():
    ep = Endpoint(config=parse_endpoint("e", {"MAX_BATCH_SIZE": 4}, "test"))
    assert ep.max_in_flight() == 1 * 4 * 32  # no worker ready yet: counted as one
    ep.ready_pids = {1, 2, 3}
    assert ep.max_in_flight() == 3 * 4 * 32
    assert ep.route()["max_in_flight"] == 3 * 4 * 32
    fixed = Endpoint(config=parse_endpoint("f", {"MAX_IN_FLIGHT": 7}, "test"))
    fixed.ready_pids = {1, 2}
    assert fixed.max_in_flight() == 7
