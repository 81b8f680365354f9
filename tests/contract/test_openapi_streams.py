"""A live gateway's streamed /run answers match the OpenAPI document: the media types of
the 200, and every SSE and NDJSON event (chunk, done, error) against its schema.

schemathesis (test_schemathesis.py) cannot reach a streaming endpoint by chance, so
these answers are asked for by name.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource
from jsonschema import Draft202012Validator

from basic_inference_server import streams
from basic_inference_server.gateway.openapi import document
from tests.conftest import Gateway, GatewayPool


def validator(ref: str) -> Draft202012Validator:
    """A validator of one of the document's schemas, its references resolved in it."""
    return Draft202012Validator({"$ref": f"#/components/schemas/{ref}",
                                 "components": document()["components"]})


@pytest.fixture(scope="module")
def gw(module_gateways: GatewayPool) -> Gateway:
    return module_gateways({"CONFIG_ENDPOINTS": {"streamer": {}}})


def post(gw: Gateway, accept: str, **fields: Any) -> httpx.Response:
    return httpx.post(gw.url("/run"), json={"SIGNATURE": "streamer", **fields},
                      headers={"Accept": accept}, timeout=30)


def documented_media() -> set[str]:
    return set(document()["paths"]["/run"]["post"]["responses"]["200"]["content"])


@pytest.mark.parametrize("fail_at", [None, 2])
def test_sse_events_match_their_schemas(gw, fail_at):
    names = []
    with httpx.Client(timeout=30) as client, client.stream(
            "POST", gw.url("/run"), headers={"Accept": streams.SSE_TYPE},
            json={"SIGNATURE": "streamer", "N": 4, "USAGE": True, "FAIL_AT": fail_at}) as resp:
        assert resp.status_code == 200
        assert streams.format_of(resp.headers["content-type"]) is streams.Format.SSE
        assert streams.SSE_TYPE in documented_media()
        for sse in EventSource(resp).iter_sse():
            names.append(sse.event)
            validator(f"Stream{sse.event.capitalize()}").validate(json.loads(sse.data))
    assert names == (["chunk"] * 4 + ["done"] if fail_at is None else ["chunk"] * 2 + ["error"])


@pytest.mark.parametrize("fail_at", [None, 1])
def test_ndjson_lines_match_the_stream_event_schema(gw, fail_at):
    resp = post(gw, streams.NDJSON_TYPE, N=3, USAGE=True, FAIL_AT=fail_at)
    assert resp.status_code == 200 and streams.NDJSON_TYPE in documented_media()
    assert resp.headers["content-type"].startswith(streams.NDJSON_TYPE)
    lines = [json.loads(line) for line in resp.text.splitlines()]
    for line in lines:
        validator("StreamEvent").validate(line)
    assert [line["id"] for line in lines] == list(range(1, len(lines) + 1))
    assert lines[-1]["event"] == ("done" if fail_at is None else "error")


def test_the_gathered_answer_matches_its_schema(gw):
    resp = post(gw, "application/json", N=3, USAGE=True)
    assert resp.status_code == 200
    body = resp.json()
    validator("StreamGathered").validate(body)
    assert len(body["CHUNKS"]) == 3 and body["USAGE"] == 3
