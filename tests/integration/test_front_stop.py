"""A graceful stop is prompt: idle keep-alive connections never delay it; work in flight ends."""

from __future__ import annotations

import signal
import socket
import threading
import time

import psutil
import requests

from tests.conftest import Traffic, assert_ok, is_gone, wait_until

STOP_TIMEOUT = 30


def test_one_worker_server_stops_at_once_after_load(gateways):
    gw = gateways({"STOP_TIMEOUT": STOP_TIMEOUT,
                   "CONFIG_ENDPOINTS": {"slow": {"NR_WORKERS": 1, "TCP_PORT": True}}})
    info = gw.server("slow")
    port = info["port"]
    # A client that connected and sent nothing yet: gunicorn's gthread worker parked such
    # a connection after 5 s and let it hold a stop for its whole keepalive (120 s), so
    # a stop took all of STOP_TIMEOUT. Here it is idle, and an idle one is closed at once.
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    connected = time.monotonic()
    # Load through the front and straight on the server's port, with kept-alive
    # connections left idle afterwards (wrk leaves them so).
    sessions = [requests.Session() for _ in range(8)]
    with Traffic(gw, "slow", SECONDS=0) as traffic:
        for _ in range(20):
            for session in sessions:
                assert_ok(session.post(f"http://127.0.0.1:{port}/run", json={"SECONDS": 0},
                                       timeout=10))
        wait_until(lambda: traffic.ok > 20, timeout=10)
    assert not traffic.failures, traffic.failures[:3]
    # The scenario: the silent connection has been idle past gthread's 5 s when the stop comes.
    time.sleep(max(0.0, 6 - (time.monotonic() - connected)))
    # One request in flight when the stop comes: it still gets its answer.
    answer: list[requests.Response] = []
    marker = gw.workdir / "in-flight.marker"
    slow = threading.Thread(target=lambda: answer.append(requests.post(
        f"http://127.0.0.1:{port}/run", json={"SECONDS": 1.0, "MARKER": str(marker)},
        timeout=10)))
    slow.start()
    wait_until(marker.exists, timeout=30, message="the request is running")
    master = psutil.Process(info["pid"])
    tree = [master, *master.children(recursive=True)]
    master.send_signal(signal.SIGTERM)
    # A connection that held the stop would hold it until STOP_TIMEOUT ends it by force.
    wait_until(lambda: all(is_gone(p) for p in tree), timeout=STOP_TIMEOUT / 3, interval=0.02,
               message="the server and its worker exit long before STOP_TIMEOUT")
    slow.join(10)
    assert answer and answer[0].status_code == 200, answer and answer[0].text
    for session in sessions:
        session.close()
    silent.close()
