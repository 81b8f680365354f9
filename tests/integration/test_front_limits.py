"""Bounded memory and body limits: the front routes without decoding; 413 before reading."""

from __future__ import annotations

import socket

import psutil
import pytest

from basic_inference_server.protocol import MAX_JSON_ELEMENTS
from tests.conftest import assert_ok

MB = 1024 * 1024


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways({"GATEWAY_WORKERS": 1, "MAX_REQUEST_SIZE": 16 * MB,
                            "CONFIG_ENDPOINTS": {"slow": {"NR_WORKERS": 1, "TCP_PORT": True}}})


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had, in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def front_worker(gw) -> psutil.Process:
    [worker] = [p for p in gw.tree() if "basic_inference_server.gateway" in " ".join(p.cmdline())
                and p.parent() and "basic_inference_server.gateway" in " ".join(p.parent().cmdline())]
    return worker


def test_many_small_objects_do_not_blow_up_the_front(gw):
    """Bodies of many small values cost the front about their size; the server decodes
    those under MAX_JSON_ELEMENTS values and refuses the others (413) before decoding."""
    under = b'{"SIGNATURE": "slow", "SECONDS": 0, "X": [' + b"{}," * (MAX_JSON_ELEMENTS - 10) + b"{}]}"
    over = b'{"SIGNATURE": "slow", "SECONDS": 0, "X": [' + b"{}," * (4 * MB) + b"{}]}"
    assert len(over) > 12 * MB
    assert_ok(gw.post("/run", json={"SIGNATURE": "slow", "SECONDS": 0}))  # warm
    worker = front_worker(gw)
    before = peak_rss(worker.pid)
    assert_ok(gw.post("/run", data=under, headers={"Content-Type": "application/json"}, timeout=60))
    refused = gw.post("/run", data=over, headers={"Content-Type": "application/json"}, timeout=60)
    assert refused.status_code == 413, refused.text
    assert refused.json()["ERROR_TYPE"] == "payload_too_large"
    assert refused.json()["MAX_JSON_ELEMENTS"] == MAX_JSON_ELEMENTS
    grew = peak_rss(worker.pid) - before
    assert grew < 2 * len(over), f"front peak RSS grew {grew / MB:.0f} MB for a {len(over) / MB:.0f} MB body"


def refused_unread(port: int, path: str, method: str = "POST", size: int = 200 * MB) -> bytes:
    """Announce a huge body, send a little of it: the answer comes before the rest."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
                     f"\r\nContent-Length: {size}\r\n\r\n".encode() + b"{" * 1000)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_every_front_route_refuses_a_huge_body_unread(gw):
    paths = list(gw.get("/get_paths").json()["AVAIL_PATHS"]) + ["/no/such/path"]
    for path in paths:
        path = path.replace("<id>", "0123")
        head = refused_unread(gw.port, path)
        assert head.startswith(b"HTTP/1.1 413"), (path, head[:200])
    # The data path takes up to MAX_REQUEST_SIZE, management calls 1 MB.
    assert refused_unread(gw.port, "/run", size=17 * MB).startswith(b"HTTP/1.1 413")
    assert refused_unread(gw.port, "/list_servers", size=2 * MB).startswith(b"HTTP/1.1 413")


def test_endpoint_server_routes_refuse_a_huge_body_unread(gw):
    port = gw.server("slow")["port"]
    for path in ("/run", "/health", "/nothing"):
        head = refused_unread(port, path)
        assert head.startswith(b"HTTP/1.1 413"), (path, head[:200])
    # Chunked bodies are counted as they come.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * MB
        answer = b""
        for _ in range(40):
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
