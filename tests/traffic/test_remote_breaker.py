"""Remote endpoints and circuit breakers: the second gateway killed, then started again.

Gateway B serves ``echo`` with API keys on; gateway A's endpoint ``rem`` has
``URLS: [B]``, B's key in a file (``REMOTE_API_KEY: file:...``) and a ``BREAKER``.
"""

from __future__ import annotations

import time
from typing import Any

import requests

from tests.conftest import Gateway, free_port, wait_until
from tests.traffic.test_remote import remote_b, restart

BREAKER = {"CONSECUTIVE_ERRORS": 3, "ERROR_RATE": 0.5, "MIN_REQUESTS": 10, "WINDOW": 5,
           "OPEN_SECONDS": 2, "MAX_OPEN_SECONDS": 4, "HALF_OPEN_SUCCESSES": 3}


def call(session: requests.Session, a: Gateway, i: int) -> tuple[int, dict[str, Any], float]:
    started = time.perf_counter()
    resp = session.post(a.url("/run"), json={"SIGNATURE": "rem", "i": i}, timeout=15)
    return resp.status_code, resp.json(), time.perf_counter() - started


def breaker_state(a: Gateway) -> str | None:
    return (a.server("rem").get("breaker") or {}).get("state")


def test_killing_the_remote_opens_the_breaker_and_starting_it_closes_it(gateways, tmp_path):
    """The acceptance case: B is killed, A fails fast; B is back on its port, A closes."""
    key_file = tmp_path / "b_key"
    b = remote_b(gateways, free_port(), key_file)
    # One front process (breakers are per process); probes too rare to mark B down first:
    # here the breaker, fed by the requests themselves, is what reacts.
    a = gateways({"GATEWAY_WORKERS": 1, "CONFIG_ENDPOINTS": {"rem": {
        "URLS": [f"http://127.0.0.1:{b.port}"], "REMOTE_SIGNATURE": "echo",
        "REMOTE_API_KEY": f"file:{key_file}", "BREAKER": BREAKER, "PING_INTERVAL": 600}}})
    a.wait_state("rem", "READY", timeout=30)
    with requests.Session() as session:
        for i in range(5):
            status, body, _ = call(session, a, i)
            assert status == 200 and body["echo"] == {"i": i}, body
        b.stop()  # SIGKILL, and its whole process tree is gone
        failures = 0
        while True:
            status, body, _ = call(session, a, 0)
            assert status == 503, body
            if body["ERROR_TYPE"] == "circuit_open":
                break
            assert body["ERROR_TYPE"] in ("unavailable", "upstream_dropped"), body
            failures += 1
            assert failures <= BREAKER["CONSECUTIVE_ERRORS"], "still closed after enough failures"
        assert failures == BREAKER["CONSECUTIVE_ERRORS"]
        refusals = [call(session, a, 0) for _ in range(30)]
        assert all(s == 503 and got["ERROR_TYPE"] == "circuit_open" for s, got, _ in refusals)
        assert sorted(t for _, _, t in refusals)[15] < 0.05, [t for _, _, t in refusals]
        wait_until(lambda: breaker_state(a) == "open", timeout=5, message="breaker open")
        restart(gateways, b)  # the same port; its key store kept
        wait_until(lambda: call(session, a, 1)[0] == 200, timeout=BREAKER["MAX_OPEN_SECONDS"] + 10,
                   interval=0.1, message="served through the half-open breaker")
        for i in range(BREAKER["HALF_OPEN_SUCCESSES"]):
            status, body, _ = call(session, a, i)
            assert status == 200 and body["echo"] == {"i": i}, body
    wait_until(lambda: breaker_state(a) == "closed", timeout=5, message="breaker closed")
