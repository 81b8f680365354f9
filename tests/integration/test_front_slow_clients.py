"""Slow clients cost the front and the endpoint servers a socket, never their capacity."""

from __future__ import annotations

import socket
import threading
import time

import requests

from tests.conftest import assert_error, assert_ok, wait_until

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


def timed_run(url: str, body: dict) -> float:
    started = time.monotonic()
    resp = requests.post(url, json=body, timeout=10)
    took = time.monotonic() - started
    assert_ok(resp)
    return took


def test_slow_header_clients_do_not_starve_run(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1, "TCP_PORT": True}}})
    port = gw.server("echo")["port"]
    slow_front = Slowloris(gw.port, SLOW)
    slow_server = Slowloris(port, SLOW)
    try:
        # Every slow connection is accepted and has dripped twice: they all hold the front.
        wait_until(lambda: slow_front.rounds >= 2 and slow_server.rounds >= 2, timeout=30,
                   message="the slow clients are dripping")
        for _ in range(5):
            assert timed_run(gw.url("/run"), {"SIGNATURE": "echo", "X": 1}) < 1.0
            # Straight to the endpoint server's own port too.
            assert timed_run(f"http://127.0.0.1:{port}/run", {"X": 1}) < 1.0
            time.sleep(0.3)
    finally:
        slow_front.close()
        slow_server.close()


def test_header_deadline_disconnects_a_slow_client(gateways):
    gw = gateways({"HEADER_TIMEOUT": 1, "KEEPALIVE_TIMEOUT": 1,
                   "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1, "TCP_PORT": True}}})
    for port in (gw.port, gw.server("echo")["port"]):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(b"POST /run HTTP/1.1\r\n")
            for i in range(10):
                try:
                    sock.sendall(b"X-Slow: %d\r\n" % i)
                except OSError:
                    break
                time.sleep(0.3)
            sock.settimeout(10)
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
            assert time.monotonic() - started < 6, "the slow client was not cut off"
        # So is a connection that sends nothing.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            started = time.monotonic()
            assert sock.recv(4096) == b""
            assert time.monotonic() - started < 6


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
