"""L4: bytes after a request that ends the connection must not drop the answers due.

A client that pipelined requests, the last with ``Connection: close`` (or HTTP/1.0),
followed by anything more, once got no answer at all: the parser's complaint about the
extra bytes closed the connection with every queued answer. Now the requests up to the
last are answered in order, the connection is closed, and the extra bytes are ignored.
"""

from __future__ import annotations

import pytest

from tests.security.manager_socket import run_dir
from tests.security.raw_client import read_answers, tcp, unix

LIVE = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
LAST = b"GET /get_paths HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
EXTRA = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nnot even HTTP\r\n"


@pytest.mark.parametrize("requests, answers", [
    (LIVE * 3 + LAST, 4),
    (b"GET /get_paths HTTP/1.0\r\n\r\n", 1),
])
def test_answers_before_the_end_of_a_connection_all_arrive(gateways, requests, answers):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}})
    sock = tcp(gw.port)
    sock.sendall(requests + EXTRA)
    assert read_answers(sock, answers + 1) == [200] * answers  # and then the end
    assert sock.recv(1) == b""
    sock.close()


def test_the_endpoint_servers_answer_what_came_before_the_end_too(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}})
    gw.wait_state("echo", "READY", timeout=60)
    sock = unix(str(run_dir(gw) / "srv-echo.sock"))
    run = b"GET /run?Q=%d HTTP/1.1\r\nHost: x\r\n\r\n"
    sock.sendall(run % 1 + run % 2 + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                 + EXTRA)
    assert read_answers(sock, 4) == [200, 200, 200]
    sock.close()
