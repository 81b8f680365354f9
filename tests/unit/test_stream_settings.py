"""The stream timeouts of an endpoint: defaults, checks, and what reaches the front."""

from __future__ import annotations

import pytest

from basic_inference_server.config import parse_endpoint
from basic_inference_server.errors import ConfigError
from basic_inference_server.gateway.stream_relay import Deadlines


def test_defaults():
    ep = parse_endpoint("gen", {"TIMEOUT": 30}, "here")
    assert ep.settings["STREAM_FIRST_CHUNK_TIMEOUT"] is None
    assert ep.settings["STREAM_IDLE_TIMEOUT"] == 60 and ep.settings["STREAM_TIMEOUT"] == 3600


@pytest.mark.parametrize("key, value", [
    ("STREAM_FIRST_CHUNK_TIMEOUT", 0), ("STREAM_FIRST_CHUNK_TIMEOUT", "5"),
    ("STREAM_IDLE_TIMEOUT", -1), ("STREAM_IDLE_TIMEOUT", None), ("STREAM_TIMEOUT", 0),
    ("STREAM_TIMEOUT", True),
])
def test_bad_values_are_refused_by_name(key, value):
    with pytest.raises(ConfigError, match=key):
        parse_endpoint("gen", {key: value}, "here")


def test_the_front_reads_them_from_the_route():
    route = {"timeout": 30, "stream": {"first_chunk": None, "idle": 5, "total": 600}}
    assert Deadlines.of(route) == Deadlines(30, 5, 600), "the first chunk's: TIMEOUT"
    route["stream"]["first_chunk"] = 2.5
    assert Deadlines.of(route).first == 2.5
