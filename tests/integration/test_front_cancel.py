"""A client that goes away cancels its /run: its slot is freed at once and it does not run."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import assert_ok, wait_until

LIMIT = 6  # MAX_IN_FLIGHT
SECONDS = 4  # each abandoned request's work: all of them would hold the slots for 24 s


def in_flight(gw) -> float:
    for family in text_string_to_metric_families(gw.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "bis_in_flight" and sample.labels.get("endpoint") == "slow":
                return sample.value
    return 0.0


def send_run(port: int, fields: dict) -> socket.socket:
    """Send a /run on a raw connection and leave its answer unread."""
    body = json.dumps({"SIGNATURE": "slow", **fields}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /run HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return sock


def test_abandoned_requests_free_their_slots_and_do_not_run(gateways, tmp_path):
    gw = gateways({"CONFIG_ENDPOINTS": {"slow": {"SERVER_CLASS": "slow", "NR_WORKERS": 1,
                                                 "MAX_IN_FLIGHT": LIMIT}}})
    markers = tmp_path / "markers"
    markers.mkdir()
    clients = [send_run(gw.port, {"SECONDS": SECONDS, "MARKER": str(markers / str(i))})
               for i in range(LIMIT)]
    wait_until(lambda: in_flight(gw) == LIMIT, timeout=10, message="the bulkhead is full")
    wait_until(lambda: any(markers.iterdir()), timeout=10, message="the first one runs")
    for sock in clients:
        sock.close()
    # The slots come back at once, not as the abandoned requests finish one by one.
    wait_until(lambda: in_flight(gw) == 0, timeout=SECONDS * 1.5,
               message="the abandoned requests' slots are freed")

    # A burst up to MAX_IN_FLIGHT gets no 503, and each answer is its own request's (no
    # half-read answer left on a pooled upstream connection).
    def call(i: int) -> dict:
        return assert_ok(gw.run("slow", SECONDS=i / 100, _timeout=SECONDS * 4))

    with ThreadPoolExecutor(max_workers=LIMIT) as pool:
        answers = list(pool.map(call, range(LIMIT)))
    assert [a["slept"] for a in answers] == [i / 100 for i in range(LIMIT)]
    # The one worker runs in order: any abandoned request that was going to run has run
    # before the burst was answered. Only those already running when their clients left
    # did.
    ran = len(list(markers.iterdir()))
    assert 1 <= ran < LIMIT, f"{ran} of {LIMIT} abandoned requests ran"
