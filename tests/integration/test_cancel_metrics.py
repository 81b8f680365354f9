"""``bis_cancelled_total`` through a real gateway: a ``/run`` whose caller left (streamed
or not) is ``client_gone``, a stream its timeout cut is ``timeout``; each under its
endpoint, and only its endpoint (the jobs' reasons: tests/jobs/test_job_cancel.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.jobs.sse import leave_after_first_chunk

CONFIG = {"CONFIG_ENDPOINTS": {
    "streamer": {"NR_WORKERS": 1},
    "tight": {"SERVER_CLASS": "streamer", "NR_WORKERS": 1, "STREAM_TIMEOUT": 1}}}


def cancelled(gw) -> dict[tuple[str, str], float]:
    """``bis_cancelled_total`` by (endpoint, reason)."""
    return {(s.labels["endpoint"], s.labels["reason"]): s.value
            for family in text_string_to_metric_families(gw.get("/metrics").text)
            for s in family.samples if s.name == "bis_cancelled_total"}


def word(path: Path) -> str:
    return path.read_text().partition(" ")[0] if path.exists() else ""


def test_cancelled_work_is_counted_by_endpoint_and_reason(gateways, tmp_path):
    gw = gateways(CONFIG)
    assert cancelled(gw) == {}

    # A /run that does not stream, its caller gone while _predict polls self.cancelled().
    polling = tmp_path / "polling"
    body = json.dumps({"SIGNATURE": "streamer", "POLL_MS": 10, "MAX_POLLS": 100_000,
                       "COUNTER": str(polling)}).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.sendall(b"POST /run HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    wait_until(lambda: word(polling) == "polled", timeout=30, message="the request runs")
    sock.close()
    wait_until(lambda: word(polling) == "stopped", timeout=30, message="_predict stopped")
    wait_until(lambda: cancelled(gw) == {("streamer", "client_gone"): 1.0}, timeout=10,
               message="the request counted as client_gone")

    # A stream its caller leaves after the first chunk.
    made = tmp_path / "made"
    leave_after_first_chunk(gw, SIGNATURE="streamer", N=100_000, DELAY_MS=10, COUNTER=str(made))
    wait_until(lambda: word(made) == "exit", timeout=30, message="the generator was closed")
    wait_until(lambda: cancelled(gw) == {("streamer", "client_gone"): 2.0}, timeout=10,
               message="the stream counted as client_gone")

    # A stream cut by STREAM_TIMEOUT.
    with httpx.Client(timeout=60) as client, connect_sse(
            client, "POST", gw.url("/run"), json={"SIGNATURE": "tight", "N": 100_000,
                                                  "DELAY_MS": 50}) as source:
        last = [e for e in source.iter_sse()][-1]
    assert last.event == "error" and last.json()["ERROR_TYPE"] == "stream_timeout"
    wait_until(lambda: cancelled(gw) == {("streamer", "client_gone"): 2.0,
                                         ("tight", "timeout"): 1.0}, timeout=10,
               message="the stream counted as timeout")

    # A caller's unknown SIGNATURE makes no series.
    assert gw.post("/run", {"SIGNATURE": "nosuch"}).status_code == 404
    assert {e for e, _r in cancelled(gw)} == {"streamer", "tight"}
