"""H3: headers alone must not make the front allocate the body they announce.

The front once allocated ``Content-Length`` bytes as soon as a request's headers were
in: ten connections declaring 64 MiB, with no body byte and no credential, took two
front processes to hundreds of MiB. A body's buffer now grows with the bytes received
(doubling, up to its Content-Length), under a per-process budget of bodies in progress.
"""

from __future__ import annotations

from tests.security.hostile import (
    MIB,
    Probe,
    assert_probe_held,
    front_workers,
    rss_bound,
)
from tests.security.raw_client import PeakRss, send_all_or_stall, tcp

CONNECTIONS = 8
DECLARED = 48 * MIB  # under the default MAX_REQUEST_SIZE of 64 MiB
SENT = 256 * 1024  # body bytes each attacker actually sends


def test_declared_body_sizes_cost_nothing_until_the_bytes_come(gateways):
    gw = gateways({"GATEWAY_WORKERS": 2, "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}})
    procs = front_workers(gw)
    assert len(procs) == 2
    idle = Probe(gw.url("/health/live")).run_for(3)
    head = (f"POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {DECLARED}\r\n\r\n").encode()
    attackers = []
    received = 0
    with PeakRss(procs) as memory:
        for _ in range(CONNECTIONS):
            sock = tcp(gw.port)
            attackers.append(sock)
            received += send_all_or_stall(sock, head)
        # Then a part of each body: memory may follow what was sent, not what was declared.
        for sock in attackers:
            received += send_all_or_stall(sock, b"[" + b"0," * (SENT // 2 - 1))
        attacked = Probe(gw.url("/health/live")).run_for(3)
    for sock in attackers:
        sock.close()
    assert memory.growth < rss_bound(received), (
        f"front RSS grew {memory.growth / MIB:.1f} MiB for {received / MIB:.2f} MiB received "
        f"(bound {rss_bound(received) / MIB:.1f} MiB)")
    assert_probe_held(idle, attacked)
