"""H4: a client that pipelines requests and never reads must not make a process buffer
answers without bound, in the front or in an endpoint server (they share the code).

188 KB of pipelined ``GET /openapi.json`` once grew a front process by 344 MiB: every
request of a read was parsed and answered into the transport's buffer. Now answers obey
write flow control (no further answer while the transport holds more than its
high-water mark) and at most a few parsed requests wait; the rest stays unread.
"""

from __future__ import annotations

from tests.conftest import assert_ok
from tests.security.hostile import (
    MIB,
    Probe,
    assert_probe_held,
    front_workers,
    rss_bound,
    server_workers,
)
from tests.security.manager_socket import run_dir
from tests.security.raw_client import PeakRss, read_answers, send_all_or_stall, tcp, unix


def assert_bounded(memory: PeakRss, received: int, who: str) -> None:
    assert memory.growth < rss_bound(received), (
        f"{who} RSS grew {memory.growth / MIB:.1f} MiB for {received / 1024:.0f} KiB "
        f"received (bound {rss_bound(received) / MIB:.1f} MiB)")


def test_front_pipelining_without_reading(gateways):
    gw = gateways({"GATEWAY_WORKERS": 2, "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}})
    procs = front_workers(gw)
    idle = Probe(gw.url("/health/live")).run_for(3)
    flood = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 2000
    # (closed whatever fails: a socket left to the collector warns in a later test)
    with tcp(gw.port, rcvbuf=4096) as sock:
        with PeakRss(procs) as memory:
            received = send_all_or_stall(sock, flood)
            attacked = Probe(gw.url("/health/live")).run_for(5)
        assert_bounded(memory, received, "front")
        assert_probe_held(idle, attacked)
        # Nothing was lost meanwhile: read now, the client gets its answers in order.
        sock.settimeout(5)
        assert read_answers(sock, 20) == [200] * 20


def test_endpoint_server_pipelining_without_reading(gateways):
    # GET /run?SIZE=n on big_answer: a 1 MiB answer for a 50-byte request.
    gw = gateways({"CONFIG_ENDPOINTS": {"big_answer": {"NR_WORKERS": 1}}})
    gw.wait_state("big_answer", "READY", timeout=60)
    procs = server_workers(gw)  # the only endpoint's
    assert len(procs) == 1, [p.cmdline() for p in gw.tree()]
    run = gw.url("/run")
    params = {"SIGNATURE": "big_answer", "SIZE": "16"}
    idle = Probe(run, params=params).run_for(3)
    flood = b"GET /run?SIZE=1048576 HTTP/1.1\r\nHost: x\r\n\r\n" * 200
    with unix(str(run_dir(gw) / "srv-big_answer.sock")) as sock:
        with PeakRss(procs) as memory:
            received = send_all_or_stall(sock, flood)
            # The endpoint keeps serving the front while the attacker holds its answers.
            attacked = Probe(run, params=params).run_for(4)
        assert_bounded(memory, received, "endpoint server")
        assert_probe_held(idle, attacked)
        assert_ok(gw.get("/health/live"))
        sock.settimeout(5)
        assert read_answers(sock, 3) == [200] * 3
