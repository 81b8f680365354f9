"""Streams through a real gateway's front: events in order as they come, the request id,
a client that leaves stopping the endpoint's producer, the three stream timeouts,
API keys (the slot held for the stream's life, USAGE charged and taken out), many
streams at once, and a slow reader that must not make the front buffer.

The endpoint is ``stream_front_ticks`` (tests/fixtures/endpoints); events are read with
httpx-sse, or NDJSON lines with httpx.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from basic_inference_server import streams
from tests.conftest import assert_error, wait_until
from tests.jobs.sse import leave_after_first_chunk
from tests.security.hostile import front_workers, rss
from tests.tenants.conftest import make_key, ready

MORE_CHUNKS = 2  # the most a producer makes after its client left (see test_stream_server)
MIB = 1024 * 1024
TICKS = {"SERVER_CLASS": "stream_front_ticks", "NR_WORKERS": 1, "MAX_IN_FLIGHT": 100}
TIGHT = {**TICKS, "TIMEOUT": 20, "STREAM_FIRST_CHUNK_TIMEOUT": 1, "STREAM_IDLE_TIMEOUT": 1,
         "STREAM_TIMEOUT": 4}


PIPE = {"PIPELINE": {"STEPS": [{"ID": "t", "SIGNATURE": "ticks", "INPUT": {"N": "$input.N"}}],
                     "OUTPUT": {"CHUNKS": "$steps.t.CHUNKS"}}}
# The first step answers whole (its chunks gathered), the final one may stream.
PIPE_TWO = {"PIPELINE": {"STEPS": [
    {"ID": "first", "SIGNATURE": "ticks", "INPUT": {"N": 2}},
    {"ID": "t", "SIGNATURE": "ticks", "INPUT": {"N": "$input.N", "FROM": "$steps.first.CHUNKS"}}]}}
PIPE_USAGE = {"PIPELINE": {"STEPS": [
    {"ID": "first", "SIGNATURE": "ticks", "INPUT": {"N": 1, "USAGE": 4}},
    {"ID": "t", "SIGNATURE": "ticks", "INPUT": {"N": 2, "USAGE": 7, "AFTER": "$steps.first.CHUNKS"}}]}}
PIPE_NEEDS_LAST = {"PIPELINE": {"STEPS": [
    {"ID": "b", "SIGNATURE": "ticks", "INPUT": {"N": "$steps.a.CHUNKS"}},
    {"ID": "a", "SIGNATURE": "ticks", "INPUT": {"N": 1}}]}}
PIPE_STREAMING_STEP = {"PIPELINE": {
    "STEPS": [{"ID": "t", "SIGNATURE": "ticks", "INPUT": {"N": 2, "STREAM": True}}],
    "OUTPUT": {"CHUNKS": "$steps.t.CHUNKS"}}}


@pytest.fixture(scope="module")
def gw(module_gateways):
    return ready(module_gateways({"GATEWAY_WORKERS": 1, "CONFIG_ENDPOINTS": {
        "ticks": TICKS, "tight": TIGHT, "pipe": PIPE, "pipe_bad": PIPE_STREAMING_STEP,
        "pipe_two": PIPE_TWO, "pipe_needs_last": PIPE_NEEDS_LAST}}))


def sse(gw, signature: str, headers: dict[str, str] | None = None,
        **fields: Any) -> tuple[httpx.Response, list[tuple[str, str, dict[str, Any]]]]:
    with httpx.Client(timeout=60) as client, connect_sse(
            client, "POST", gw.url("/run"), json={"SIGNATURE": signature, **fields},
            headers=headers or {}) as source:
        return source.response, [(e.event, e.id, e.json()) for e in source.iter_sse()]


def counted(path: Path) -> tuple[str, int]:
    state, _, count = path.read_text().partition(" ")
    return state, int(count)


def ended(path: Path) -> tuple[str, int] | None:
    """The counter's last word once the producer ended (exit or done), else None."""
    try:
        state, count = counted(path)
    except (OSError, ValueError):
        return None
    return (state, count) if state in ("exit", "done") else None


def test_events_arrive_in_order_with_the_request_id(gw):
    resp, got = sse(gw, "ticks", headers={"X-Request-ID": "stream-front-1"}, N=50)
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "stream-front-1"
    assert resp.headers["content-type"] == streams.Format.SSE.content_type
    assert resp.headers["cache-control"] == "no-cache"
    assert resp.headers["transfer-encoding"] == "chunked"
    assert [(n, i) for n, i, _ in got] == [("chunk", str(i)) for i in range(1, 51)] + [
        ("done", "51")]
    assert [d["i"] for _n, _i, d in got[:-1]] == list(range(50))
    assert got[-1][2]["CHUNKS"] == 50


def test_ndjson_and_gathered_through_the_front(gw):
    with httpx.Client(timeout=60) as client:
        resp = client.post(gw.url("/run"), json={"SIGNATURE": "ticks", "N": 4},
                           headers={"Accept": streams.NDJSON_TYPE})
        lines = [json.loads(line) for line in resp.text.splitlines()]
        assert resp.headers["content-type"] == streams.NDJSON_TYPE
        assert [(e["event"], e["id"]) for e in lines] == [
            ("chunk", 1), ("chunk", 2), ("chunk", 3), ("chunk", 4), ("done", 5)]
        whole = client.post(gw.url("/run"), json={"SIGNATURE": "ticks", "N": 4})
        assert whole.headers["content-type"].startswith("application/json")
        assert [c["i"] for c in whole.json()["CHUNKS"]] == [0, 1, 2, 3]


def test_chunks_come_before_the_stream_ends(gw, tmp_path):
    counter = tmp_path / "made"
    with httpx.Client(timeout=60) as client, connect_sse(
            client, "POST", gw.url("/run"), json={"SIGNATURE": "ticks", "N": 20,
                                                  "DELAY_MS": 100, "COUNTER": str(counter)}
    ) as source:
        events = source.iter_sse()
        assert next(events).event == "chunk"
        state, made = counted(counter)
        assert state == "made" and made < 20, "the first event came while the rest was made"
        assert [e.event for e in events][-1] == "done"


def test_a_client_that_leaves_stops_the_producer_within_two_chunks(gw, tmp_path):
    counter = tmp_path / "made"
    # A chunk each 100 ms: long enough for the leave to reach the producer on a busy machine.
    leave_after_first_chunk(gw, SIGNATURE="ticks", N=1000, DELAY_MS=100, COUNTER=str(counter))
    state, made = wait_until(lambda: ended(counter), timeout=20,
                             message="the producer was closed")
    assert state == "exit" and made <= 1 + MORE_CHUNKS, (state, made)


# Producers with more chunks to make than the MORE_CHUNKS they may make once the front
# has closed their stream: one that ends "done" was not stopped.
@pytest.mark.parametrize("fields, which", [
    ({"N": 1000, "DELAY_MS": 10, "FIRST_MS": 3000}, "STREAM_FIRST_CHUNK_TIMEOUT"),
    ({"N": 1000, "DELAY_MS": 10, "STALL_AT": 2, "STALL_MS": 3000}, "STREAM_IDLE_TIMEOUT"),
    ({"N": 10_000, "DELAY_MS": 50}, "STREAM_TIMEOUT"),
])
def test_each_stream_timeout_ends_with_its_error_event_and_stops_the_work(gw, tmp_path,
                                                                            fields, which):
    counter = tmp_path / "made"
    resp, got = sse(gw, "tight", COUNTER=str(counter), **fields)
    assert resp.status_code == 200
    name, event_id, data = got[-1]
    assert name == "error" and event_id == str(len(got))
    assert data["ERROR_TYPE"] == "stream_timeout" and data["TIMEOUT"] == which, data
    assert [n for n, _i, _d in got[:-1]] == ["chunk"] * (len(got) - 1)
    state, _made = wait_until(lambda: ended(counter), timeout=20,
                              message="the producer was closed")
    assert state == "exit", "the front closed the endpoint's stream, which stopped the work"


def metric(gw, name: str, **labels: str) -> float:
    text = gw.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{want}}} in /metrics")


def test_stream_metrics(gw):
    before = metric(gw, "bis_stream_chunks_total", endpoint="ticks") if "bis_stream_chunks" \
        in gw.get("/metrics").text else 0.0
    sse(gw, "ticks", N=7)
    assert metric(gw, "bis_stream_chunks_total", endpoint="ticks") == before + 7
    assert metric(gw, "bis_streams_ended_total", endpoint="ticks", reason="done") >= 1
    assert metric(gw, "bis_streams_in_flight", endpoint="ticks") == 0
    assert metric(gw, "bis_stream_first_chunk_seconds_count", endpoint="ticks") >= 1


def test_64_concurrent_streams_of_1000_chunks_arrive_whole_and_in_order(gw):
    async def one(client: httpx.AsyncClient, n: int) -> list[int]:
        ids = []
        async with client.stream("POST", gw.url("/run"), json={"SIGNATURE": "ticks", "N": 1000},
                                 headers={"Accept": streams.NDJSON_TYPE}) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                event = json.loads(line)
                ids.append(event["id"])
                if event["event"] == "chunk":
                    assert event["data"]["i"] == event["id"] - 1
                else:
                    assert event["event"] == "done", event
        return ids

    async def main() -> list[list[int]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            return await asyncio.gather(*(one(client, n) for n in range(64)))

    results = asyncio.run(main())
    assert len(results) == 64
    for ids in results:
        assert ids == list(range(1, 1002))


def test_a_slow_reader_pauses_the_producer_and_the_front_holds_little(gw, tmp_path):
    front = front_workers(gw, 1)
    counter = tmp_path / "made"
    body = json.dumps({"SIGNATURE": "ticks", "N": 1_000_000, "SIZE": 1000,
                       "COUNTER": str(counter)}).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        # The producer fills what the pipes hold, then waits for the reader: its count
        # stops moving (read twice, a second apart; on a busy machine filling takes a while).
        last = [-1]

        def settled() -> bool:
            made_now = counted(counter)[1]
            same, last[0] = made_now == last[0] and made_now > 0, made_now
            return same

        wait_until(settled, timeout=60, interval=1.0, message="the producer filled the pipes")
        start_rss = rss(front)
        # The reader takes one chunk (about 1 KB) a second until the producer has made no
        # more than a few over three seconds: it is paused (filling the buffers on the way
        # takes a busy machine longer).
        made: list[int] = []
        while len(made) < 4 or made[-1] - made[-4] > 50:
            assert len(made) < 30, f"the producer did not pause: {made}"
            assert sock.recv(1100)
            made.append(counted(counter)[1])
            time.sleep(1)  # the slow reader's pace
        grown = rss(front) - start_rss
    assert grown < 2 * MIB, f"the front grew {grown} bytes for one slow stream"
    # What the socket buffers on the way hold (a few MB), then nothing more: paused.
    assert made[-1] < 10_000, f"the producer made {made[-1]} chunks for a reader of {len(made)}"
    state, _ = wait_until(lambda: ended(counter), timeout=20, message="the producer was closed")
    assert state == "exit"


# -- API keys --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(module_gateways):
    return ready(module_gateways({"API_KEYS": True, "GATEWAY_WORKERS": 1,
                                  "CONFIG_ENDPOINTS": {"ticks": TICKS, "pipe_usage": PIPE_USAGE}}))


def test_a_stream_holds_its_keys_slot_and_is_charged_its_usage(keyed, tmp_path):
    key = make_key(keyed, MAX_CONCURRENT=1, QUOTA={"UNITS": 1000, "PER": "day"})["KEY"]
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=60) as client:
        with connect_sse(client, "POST", keyed.url("/run"), headers=auth, json={
                "SIGNATURE": "ticks", "N": 20, "DELAY_MS": 50, "USAGE": 7}) as source:
            events = source.iter_sse()
            assert next(events).event == "chunk"
            # The stream holds the key's one slot: a second request is refused.
            refused = httpx.post(keyed.url("/run"), headers=auth, timeout=30,
                                 json={"SIGNATURE": "ticks", "N": 1})
            assert_error(refused, 429)
            assert refused.json()["ERROR_TYPE"] == "rate_limited"
            rest = [(e.event, e.json()) for e in events]
        assert rest[-1][0] == "done" and "USAGE" not in rest[-1][1], "USAGE is taken out"

        def spent() -> float:
            resp = client.get(keyed.url("/usage"), headers=auth)
            return resp.json()["USAGE"]["SPENT"]

        wait_until(lambda: spent() == 7, timeout=10, message="the stream's USAGE is charged")
        again = client.post(keyed.url("/run"), headers=auth, json={"SIGNATURE": "ticks", "N": 1})
        assert again.status_code == 200, "the slot came back when the stream ended"


def test_a_streamed_pipeline_is_charged_the_units_of_all_its_steps(keyed):
    key = make_key(keyed, QUOTA={"UNITS": 1000, "PER": "day"})["KEY"]
    auth = {"Authorization": f"Bearer {key}"}
    resp, got = sse(keyed, "pipe_usage", headers=auth)
    assert resp.status_code == 200 and [n for n, _, _ in got] == ["chunk", "chunk", "done"]
    assert "USAGE" not in got[-1][2], "USAGE is taken out"

    def spent() -> float:
        return httpx.get(keyed.url("/usage"), headers=auth, timeout=30).json()["USAGE"]["SPENT"]

    wait_until(lambda: spent() == 11, timeout=10, message="4 from the first step, 7 streamed")


def test_pipelines_gather_their_steps_unless_asked_for_a_stream(gw):
    whole = gw.run("pipe", N=3)
    assert whole.status_code == 200, whole.text
    assert [c["i"] for c in whole.json()["CHUNKS"]] == [0, 1, 2], "a step's chunks, gathered"
    failed = gw.run("pipe_bad")
    assert failed.status_code == 502 and "answered a stream" in failed.text, failed.text


@pytest.mark.parametrize("ask", [{"headers": {"Accept": streams.SSE_TYPE}}, {"STREAM": True}])
def test_a_pipeline_asked_for_a_stream_relays_its_final_steps_stream(gw, ask):
    resp, got = sse(gw, "pipe_two", headers=ask.get("headers"), N=3,
                    **({"STREAM": True} if "STREAM" in ask else {}))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == streams.Format.SSE.content_type
    assert [(n, i) for n, i, _ in got] == [("chunk", "1"), ("chunk", "2"), ("chunk", "3"),
                                           ("done", "4")]
    assert got[-1][2]["CHUNKS"] == 3


def test_a_pipeline_streams_ndjson_when_asked_and_refuses_when_its_last_step_is_needed(gw):
    resp = httpx.post(gw.url("/run"), json={"SIGNATURE": "pipe_two", "N": 2}, timeout=30,
                      headers={"Accept": streams.NDJSON_TYPE})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith(
        streams.NDJSON_TYPE)
    assert [json.loads(line)["event"] for line in resp.text.splitlines()] == [
        "chunk", "chunk", "done"]
    refused = httpx.post(gw.url("/run"), json={"SIGNATURE": "pipe_needs_last", "N": 2},
                         timeout=30, headers={"Accept": streams.SSE_TYPE})
    assert assert_error(refused, 400)["ERROR_TYPE"] == "bad_request"
    assert "cannot stream" in refused.json()["ERROR"]


def test_a_remote_endpoints_stream_passes_through_and_a_leaving_client_stops_it(gateways,
                                                                                 tmp_path):
    b = gateways({"GATEWAY_WORKERS": 1, "CONFIG_ENDPOINTS": {"ticks": TICKS}})
    a = gateways({"GATEWAY_WORKERS": 1, "CONFIG_ENDPOINTS": {"far": {
        "URLS": [b.base], "REMOTE_SIGNATURE": "ticks"}}})
    resp, got = sse(a, "far", N=30)
    assert [(n, i) for n, i, _ in got] == [("chunk", str(i)) for i in range(1, 31)] + [
        ("done", "31")]
    counter = tmp_path / "made"
    with httpx.Client(timeout=60) as client, connect_sse(
            client, "POST", a.url("/run"), json={"SIGNATURE": "far", "N": 1000, "DELAY_MS": 10,
                                                 "COUNTER": str(counter)}) as source:
        assert next(source.iter_sse()).event == "chunk"
    state, made = wait_until(lambda: ended(counter), timeout=20,
                             message="the remote's producer was closed")
    assert state == "exit" and made <= 1 + 2 * MORE_CHUNKS, (state, made)
