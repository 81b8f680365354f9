"""Slow clients cost the front and the endpoint servers a socket, never their capacity."""

from __future__ import annotations

import select
import socket
import threading
import time

import requests

from tests.conftest import assert_error, assert_ok, wait_until
from tests.timing import assert_not_slowed, timed

SLOW = 150


class Slowloris:
    """``n`` connections that send a request's headers one line per second, forever."""

    def __init__(self, port: int, n: int) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
        self.stop = threading.Event()
        self.closed = 0
        self.rounds = 0  # drip rounds sent to every connection
        for sock in self.socks:
            sock.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\n")
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        i = 0
        while not self.stop.wait(1.0):
            i += 1
            for sock in self.socks:
                try:
                    sock.sendall(b"X-Drip-%d: %d\r\n" % (i, i))
                except OSError:
                    pass
            self.rounds = i

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.socks:
            sock.close()


def answer_seconds(url: str, body: dict) -> float:
    """The seconds ``url`` takes to answer ``body`` (a 200)."""
    resp, took = timed(lambda: requests.post(url, json=body, timeout=10))
    assert_ok(resp)
    return took


def test_slow_header_clients_do_not_starve_run(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1, "TCP_PORT": True}}})
    port = gw.server("echo")["port"]
    # Through the front, and straight to the endpoint server's own port.
    calls = {"front": (gw.url("/run"), {"SIGNATURE": "echo", "X": 1}),
             "server": (f"http://127.0.0.1:{port}/run", {"X": 1})}
    baseline = {k: [answer_seconds(*call) for _ in range(20)] for k, call in calls.items()}
    slow_front = Slowloris(gw.port, SLOW)
    slow_server = Slowloris(port, SLOW)
    try:
        # Every slow connection is accepted and has dripped twice: they all hold the front.
        wait_until(lambda: slow_front.rounds >= 2 and slow_server.rounds >= 2, timeout=30,
                   message="the slow clients are dripping")
        # Calls one after the other for five more drip rounds.
        during: dict[str, list[float]] = {k: [] for k in calls}
        last = slow_front.rounds + 5
        while slow_front.rounds < last:
            for k, call in calls.items():
                during[k].append(answer_seconds(*call))
    finally:
        slow_front.close()
        slow_server.close()
    for k in calls:
        assert_not_slowed(during[k], baseline[k], f"/run on the {k} beside {SLOW} slow clients")


# Well under the default HEADER_TIMEOUT (60 s) and KEEPALIVE_TIMEOUT (30 s): only the
# configured 1 s can cut a client off within it.
PATIENCE = 20


def test_header_deadline_disconnects_a_slow_client(gateways):
    gw = gateways({"HEADER_TIMEOUT": 1, "KEEPALIVE_TIMEOUT": 1,
                   "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1, "TCP_PORT": True}}})
    for port in (gw.port, gw.server("echo")["port"]):
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as sock:
            # A header line every 0.3 s for PATIENCE: each read is prompt, so only a
            # deadline on the whole of the headers ends it.
            sock.sendall(b"POST /run HTTP/1.1\r\n")
            give_up = time.monotonic() + PATIENCE
            while time.monotonic() < give_up:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    break
                if select.select([sock], [], [], 0.3)[0]:  # answered or closed
                    break
            else:
                raise AssertionError("the slow client was not cut off")
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
        # So is a connection that sends nothing (a socket.timeout if it is not).
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as sock:
            assert sock.recv(4096) == b""


def test_connection_cap_answers_503(gateways):
    gw = gateways({"MAX_CONNECTIONS": 30, "GATEWAY_WORKERS": 1,
                   "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}})
    held = []
    try:
        for _ in range(40):
            held.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))

        def refused() -> list[requests.Response]:
            resp = requests.post(gw.url("/run"), json={"SIGNATURE": "echo"}, timeout=5)
            return [resp] if resp.status_code == 503 else []
        [resp] = wait_until(refused, timeout=5, message="a connection past the cap is refused")
        body = assert_error(resp, 503)
        assert body["ERROR_TYPE"] == "too_many_connections"
        assert resp.headers["Retry-After"] == "1"
    finally:
        for sock in held:
            sock.close()
    # Closed connections free their places.
    wait_until(lambda: requests.post(gw.url("/run"), json={"SIGNATURE": "echo"},
                                     timeout=5).status_code == 200, timeout=10)
