"""Streaming endpoints on a real endpoint server (the ``streamer`` fixture), called on its
own TCP port: the formats, errors before and after the first chunk, and a client that
leaves stopping the work (a stream's generator, a long ``_predict`` polling
``self.cancelled()``), directly and through the gateway."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from basic_inference_server import streams
from tests.conftest import Gateway, wait_until
from tests.jobs.jobs_client import submit, wait_finished

MORE_CHUNKS = 2  # the most a producer makes after its client left: the chunk in the
#                  making, and one written to the socket before the drop was seen
MORE_POLLS = 5


@pytest.fixture(scope="module")
def gateway(module_gateways) -> Gateway:
    return module_gateways({"CONFIG_ENDPOINTS": {
        "streamer": {"NR_WORKERS": 1, "TCP_PORT": True},
    }})


@pytest.fixture(scope="module")
def server(gateway) -> str:
    """The endpoint server's /run on its own port."""
    return f"http://127.0.0.1:{gateway.server('streamer')['port']}/run"


def sse(url: str, **fields: Any) -> list[tuple[str, str, dict[str, Any]]]:
    with httpx.Client(timeout=30) as client, \
            connect_sse(client, "POST", url, json={"SIGNATURE": "streamer", **fields}) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"] == streams.Format.SSE.content_type
        assert source.response.headers["cache-control"] == "no-cache"
        return [(e.event, e.id, e.json()) for e in source.iter_sse()]


def counted(path: Path) -> tuple[str, int]:
    """What the fixture last wrote in its counter file: (state, count)."""
    state, _, count = path.read_text().partition(" ")
    return state, int(count)


def test_sse_events_in_order_then_done(server):
    got = sse(server, N=20, DELAY_MS=1)
    assert [(name, event_id) for name, event_id, _d in got] == \
        [("chunk", str(i)) for i in range(1, 21)] + [("done", "21")]
    assert [d["i"] for _n, _i, d in got[:-1]] == list(range(20))
    done = got[-1][2]
    assert done["CHUNKS"] == 20 and done["worker_id"] == "streamer:0" and "call_id" in done


def test_async_generator_and_usage(server):
    got = sse(server, N=3, ASYNC=True, USAGE=True)
    assert [name for name, _i, _d in got] == ["chunk"] * 3 + ["done"]
    assert all("USAGE" not in d for _n, _i, d in got[:-1]) and got[-1][2]["USAGE"] == 3


def test_ndjson_one_event_a_line(server):
    body = {"SIGNATURE": "streamer", "N": 5}
    with httpx.stream("POST", server, json=body, headers={"Accept": streams.NDJSON_TYPE},
                      timeout=30) as resp:
        assert resp.headers["content-type"] == streams.NDJSON_TYPE
        assert resp.headers["transfer-encoding"] == "chunked"
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert [(e["event"], e["id"]) for e in lines] == \
        [("chunk", i) for i in range(1, 6)] + [("done", 6)]
    assert lines[-1]["data"]["CHUNKS"] == 5


def test_gathered_when_no_stream_is_asked(server):
    resp = httpx.post(server, json={"SIGNATURE": "streamer", "N": 3, "USAGE": True}, timeout=30)
    body = resp.json()
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    assert body["CHUNKS"] == [{"i": i, "cancelled": False} for i in range(3)]
    assert body["USAGE"] == 3 and "call_id" in body and "worker_id" in body


def test_an_error_after_a_chunk_is_an_error_event(server):
    got = sse(server, N=5, FAIL_AT=1)
    assert [(name, event_id) for name, event_id, _d in got] == [("chunk", "1"), ("error", "2")]
    assert got[-1][2]["ERROR_TYPE"] == "endpoint_error"
    assert got[-1][2]["EXCEPTION"] == "RuntimeError"


def test_an_error_before_the_first_chunk_is_a_json_error(server):
    resp = httpx.post(server, json={"SIGNATURE": "streamer", "N": 5, "FAIL_AT": 0, "STREAM": True},
                      timeout=30)
    assert resp.status_code == 500 and resp.headers["content-type"] == "application/json"
    assert resp.json()["ERROR_TYPE"] == "endpoint_error"
    resp = httpx.post(server, json={"SIGNATURE": "streamer", "BAD": True, "STREAM": True},
                      timeout=30)
    assert resp.status_code == 400 and resp.json()["ERROR_TYPE"] == "bad_request"


def send_raw(url: str, fields: dict[str, Any]) -> socket.socket:
    """Send a /run on a raw connection and leave its answer unread."""
    body = json.dumps({"SIGNATURE": "streamer", **fields}).encode()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /run HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return sock


def test_jobs_get_the_chunks_gathered_and_none_is_claimed_while_a_stream_is_open(gateway,
                                                                                 server):
    body = {"SIGNATURE": "streamer", "N": 5, "DELAY_MS": 300}
    with httpx.Client(timeout=30) as client, \
            connect_sse(client, "POST", server, json=body) as source:
        got = source.iter_sse()
        next(got)
        # The first may be taken by a claim that was waiting when the stream began; it
        # then runs between two chunks. The second waits for the stream's end.
        first, second = (submit(gateway, "streamer", N=3, USAGE=True) for _ in range(2))
        for event in got:
            if event.id == "4":
                fourth = time.time()  # the fifth chunk is still to be made
        assert event.event == "done"
    for job_id in (first, second):
        job = wait_finished(gateway, job_id)
        assert job["STATUS"] == "done" and job["RESULT"]["USAGE"] == 3
        assert job["RESULT"]["CHUNKS"] == [{"i": i, "cancelled": False} for i in range(3)]
    assert job["STARTED_AT"] >= fourth


def drop_after_first_chunk(url: str, counter: Path) -> None:
    """Read a stream's first event and leave (the connection is closed unread)."""
    body = {"SIGNATURE": "streamer", "N": 1000, "DELAY_MS": 10, "COUNTER": str(counter)}
    with httpx.Client(timeout=30) as client, \
            connect_sse(client, "POST", url, json=body) as source:
        first = next(source.iter_sse())
        assert (first.event, first.id) == ("chunk", "1")


def assert_producer_stopped(counter: Path) -> None:
    wait_until(lambda: counted(counter)[0] == "exit", timeout=10,
               message="the generator is closed (GeneratorExit)")
    made = counted(counter)[1]
    print(f"\nchunks made after the client left: {made - 1}")
    assert made - 1 <= MORE_CHUNKS


def test_a_client_that_leaves_closes_the_generator_within_a_chunk(server, tmp_path):
    counter = tmp_path / "counter"
    drop_after_first_chunk(server, counter)
    assert_producer_stopped(counter)
    # The endpoint takes its next request.
    assert [name for name, _i, _d in sse(server, N=2)] == ["chunk", "chunk", "done"]


def test_a_client_that_leaves_the_gateway_closes_the_generator_within_a_chunk(gateway, server,
                                                                             tmp_path):
    counter = tmp_path / "counter"
    drop_after_first_chunk(gateway.url("/run"), counter)
    assert_producer_stopped(counter)
    assert [name for name, _i, _d in sse(gateway.url("/run"), N=2)] == ["chunk", "chunk", "done"]


def test_a_client_that_leaves_before_the_first_chunk_closes_the_generator(server, tmp_path):
    counter = tmp_path / "counter"
    sock = send_raw(server, {"N": 1000, "DELAY_MS": 1000, "STREAM": True, "COUNTER": str(counter)})
    wait_until(lambda: counter.exists(), timeout=10, message="the generator starts")
    sock.close()  # while its first chunk is in the making: the answer is made for no one
    assert_producer_stopped(counter)
    assert [name for name, _i, _d in sse(server, N=1)] == ["chunk", "done"]


@pytest.mark.parametrize("via", ["server", "gateway"])
def test_a_polling_predict_stops_soon_after_its_client_left(via, gateway, server, tmp_path):
    counter = tmp_path / "counter"
    sock = send_raw(server if via == "server" else gateway.url("/run"),
                    {"POLL_MS": 10, "COUNTER": str(counter)})
    wait_until(lambda: counter.exists() and counted(counter)[1] >= 3, timeout=10,
               message="the request polls")
    polled = counted(counter)[1]
    sock.close()
    wait_until(lambda: counted(counter)[0] == "stopped", timeout=10,
               message="the _predict sees cancelled()")
    after = counted(counter)[1] - polled
    print(f"\npolls after the client left: {after}")
    assert after <= MORE_POLLS
    resp = httpx.post(server, json={"SIGNATURE": "streamer", "N": 1}, timeout=30)
    assert resp.status_code == 200 and resp.json()["CHUNKS"] == [{"i": 0, "cancelled": False}]
