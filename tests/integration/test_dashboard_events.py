"""``GET /dashboard/events`` on a live gateway, read with httpx-sse: the admin token is
needed, events carry ids, a change is sent as it happens, ``Last-Event-ID`` resumes on
any front process, and the streams are capped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from basic_inference_server.gateway.dashboard_events import MAX_STREAMS, Cursor
from basic_inference_server.gateway.openapi import document
from tests.conftest import ADMIN_TOKEN, Gateway, GatewayPool, assert_error, wait_until

PATH = "/dashboard/events"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Two front processes: a resumed stream may land on either.
CONFIG = {"HEALTH_SAMPLE_INTERVAL": 0.5, "GATEWAY_WORKERS": 2,
          "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}, "slow": {"NR_WORKERS": 1}}}


@pytest.fixture(scope="module")
def gw(module_gateways: GatewayPool) -> Gateway:
    gw = module_gateways(CONFIG)
    wait_until(lambda: len(gw.get("/history?samples=10").json()["samples"]) >= 2, timeout=15,
               message="a few health samples")
    return gw


def events(client: httpx.Client, gw: Gateway, **headers: str) -> Iterator[ServerSentEvent]:
    with connect_sse(client, "GET", gw.url(PATH), headers={**AUTH, **headers}) as source:
        assert source.response.status_code == 200, source.response.read()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        assert source.response.headers["cache-control"] == "no-cache"
        yield from source.iter_sse()


def first(stream: Iterator[ServerSentEvent], name: str, where: Any = lambda _d: True,
          limit: int = 200) -> tuple[ServerSentEvent, list[ServerSentEvent]]:
    """The first ``name`` event whose data passes ``where``, and the events before it."""
    before = []
    for sse in stream:
        if sse.event == name and where(json.loads(sse.data)):
            return sse, before
        before.append(sse)
        assert len(before) < limit, [e.event for e in before]
    raise AssertionError(f"the stream ended before a {name} event")


def test_the_stream_needs_the_admin_token_and_a_readable_cursor(gw):
    assert_error(httpx.get(gw.url(PATH), timeout=10), 401)
    resp = httpx.get(gw.url(PATH), headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert_error(resp, 401)
    assert_error(httpx.get(gw.url(PATH), headers={**AUTH, "Last-Event-ID": "7"}, timeout=10), 400)
    assert_error(httpx.post(gw.url(PATH), headers=AUTH, json={}, timeout=10), 405)
    assert "text/event-stream" in document()["paths"][PATH]["get"]["responses"]["200"]["content"]


def test_state_samples_and_events_come_with_ids_and_a_change_comes_as_it_happens(gw):
    with httpx.Client(timeout=30) as client:
        stream = events(client, gw)
        state, _ = first(stream, "state")
        data = json.loads(state.data)
        assert data["SERVERS"]["echo"]["state"] == "READY"
        assert {"SYSTEM_STATUS", "SYSTEM_ALERTS", "TRAFFIC"} <= set(data)
        samples, _ = first(stream, "samples")
        assert len(json.loads(samples.data)["samples"]) >= 2
        history, _ = first(stream, "events")
        assert "startup" in [e["kind"] for e in json.loads(history.data)["events"]]
        for sse in (state, samples, history):
            Cursor.parse(sse.id)  # each event's id is a cursor the stream can resume at

        assert gw.post("/kill_server", {"SIGNATURE": "slow"}).status_code == 200
        stopped, _ = first(stream, "state",
                           lambda d: d["SERVERS"]["slow"]["state"] == "STOPPED")
        assert Cursor.parse(stopped.id).state != Cursor.parse(state.id).state
        gw.post("/start_server", {"SIGNATURE": "slow"})
        first(stream, "state", lambda d: d["SERVERS"]["slow"]["state"] == "READY")


def test_last_event_id_resumes_after_what_the_reader_has(gw):
    with httpx.Client(timeout=30) as client:
        stream = events(client, gw)
        _, _ = first(stream, "state")
        last, _ = first(stream, "samples")
        had = Cursor.parse(last.id)
        stream.close()
        # Resumed (on either front process): no state it has, no sample it has; the
        # samples after it come, as health samples are taken.
        resumed = events(client, gw, **{"Last-Event-ID": last.id})
        newer, before = first(resumed, "samples")
        for sse in before:
            if sse.event == "state":
                assert Cursor.parse(sse.id).state != had.state
        assert min(s["ts"] * 1000 for s in json.loads(newer.data)["samples"]) > had.sample
        resumed.close()
        # A cursor whose state is not the current one: the state comes first.
        stale = str(Cursor("0" * 16, had.sample, had.event))
        sse = next(events(client, gw, **{"Last-Event-ID": stale}))
        assert sse.event == "state"


def test_the_streams_are_capped_over_all_front_processes(gw):
    with ExitStack() as stack:
        clients = [stack.enter_context(httpx.Client(timeout=30)) for _ in range(MAX_STREAMS)]
        streams = [stack.enter_context(connect_sse(c, "GET", gw.url(PATH), headers=AUTH))
                   for c in clients]
        assert [s.response.status_code for s in streams] == [200] * MAX_STREAMS
        over = httpx.get(gw.url(PATH), headers=AUTH, timeout=10)
        assert assert_error(over, 503)["ERROR_TYPE"] == "overloaded"
        assert over.headers["Retry-After"]
        clients[0].close()  # one leaves: its place is free once the gateway sees it go

        def opens() -> bool:
            with httpx.Client(timeout=10) as client, client.stream(
                    "GET", gw.url(PATH), headers=AUTH) as resp:
                return resp.status_code == 200

        wait_until(opens, timeout=15, message="a place freed by a stream that left")
