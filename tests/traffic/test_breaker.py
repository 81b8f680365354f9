"""Circuit breakers on real gateways: open on failures, refuse fast, close on recovery."""

from __future__ import annotations

import http.client
import json
import re
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from tests.conftest import Gateway, GatewayPool, assert_error, assert_ok, wait_until
from tests.timing import assert_not_slowed

BREAKER = {"CONSECUTIVE_ERRORS": 5, "ERROR_RATE": 0.5, "MIN_REQUESTS": 10, "WINDOW": 5,
           "OPEN_SECONDS": 3, "MAX_OPEN_SECONDS": 6, "HALF_OPEN_SUCCESSES": 3}


class Client:
    """One kept-alive connection: what a busy caller uses, and no client overhead to speak of."""

    def __init__(self, gw: Gateway) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)

    def run(self, signature: str, **fields: Any) -> tuple[int, dict[str, Any], dict[str, str], float]:
        body = json.dumps({"SIGNATURE": signature, **fields})
        started = time.perf_counter()
        self.conn.request("POST", "/run", body, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = json.loads(resp.read())
        return resp.status, data, dict(resp.getheaders()), time.perf_counter() - started

    def close(self) -> None:
        self.conn.close()


def breaker_of(gw: Gateway, target: str) -> dict[str, Any] | None:
    info: dict[str, Any] | None = gw.server(target).get("breaker")
    return info


def test_a_failing_endpoint_opens_refuses_fast_and_closes_when_it_recovers(
        gateways: GatewayPool, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.touch()
    config = {"GATEWAY_WORKERS": 1, "CONFIG_ENDPOINTS": {"flaky": {
        "SERVER_CLASS": "flaky", "NR_WORKERS": 1, "FAIL_FILE": str(broken), "BREAKER": BREAKER}}}
    gw = gateways(config)
    with closing(Client(gw)) as client:
        check_the_cycle(gw, client, broken)


def check_the_cycle(gw: Gateway, client: Client, broken: Path) -> None:
    """Open within the window, refuse as fast as the front answers on its own, close again
    after the recovery."""
    # Fails every request: opened after CONSECUTIVE_ERRORS, well within the WINDOW.
    started, reached = time.monotonic(), 0
    while True:
        status, body, headers, _ = client.run("flaky")
        if status == 503:
            break
        assert status == 500, body
        reached += 1
        assert reached <= BREAKER["CONSECUTIVE_ERRORS"], "still closed after enough failures"
    assert time.monotonic() - started < BREAKER["WINDOW"]
    assert body["ERROR_TYPE"] == "circuit_open" and body["SIGNATURE"] == "flaky", body
    assert 1 <= int(headers["Retry-After"]) <= BREAKER["OPEN_SECONDS"], headers
    # While open: 503 at once, nothing sent to the endpoint; timed in turn with answers
    # that the front makes on its own (an unknown SIGNATURE's 404).
    refusals, local = [], []
    for _ in range(60):
        status, body, _, elapsed = client.run("flaky")
        assert status == 503 and body["ERROR_TYPE"] == "circuit_open", body
        refusals.append(elapsed)
        status, body, _, elapsed = client.run("no_such_endpoint")
        assert status == 404, body
        local.append(elapsed)
    assert_not_slowed(refusals, local, "a circuit_open refusal")
    wait_until(lambda: (breaker_of(gw, "flaky") or {}).get("state") == "open", timeout=5,
               message="/list_servers shows the breaker open")
    metrics = gw.get("/metrics").text
    assert re.search(r'bis_breaker_state\{endpoint="flaky",version=""\} 2\.0', metrics), metrics
    # It recovers: half-open probes go through, one at first; enough successes close it.
    broken.unlink()
    first: dict[str, Any] = {}

    def served() -> bool:
        status, body, _, _ = client.run("flaky")
        if status == 200 and not first:
            first.update(body)
        return status == 200

    wait_until(served, timeout=BREAKER["OPEN_SECONDS"] + 5, interval=0.1,
               message="the endpoint is served again")
    # The endpoint counted every request that reached it: the failures and this success.
    assert first["count"] == reached + 1, (first, reached)
    for _ in range(BREAKER["HALF_OPEN_SUCCESSES"]):
        assert_ok(gw.run("flaky"))
    wait_until(lambda: (breaker_of(gw, "flaky") or {}).get("state") == "closed", timeout=5,
               message="/list_servers shows the breaker closed")
    stats = gw.server("flaky")["stats"]
    assert stats["rejected"] >= 60 and stats["failures"] == reached, stats


def test_client_errors_do_not_open_it(gateways: GatewayPool) -> None:
    config = {"CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "bad_pre",
                                            "BREAKER": {"CONSECUTIVE_ERRORS": 2}}}}
    gw = gateways(config)
    for _ in range(10):
        assert gw.run("echo").status_code == 400
    assert breaker_of(gw, "echo") in (None, {"state": "closed", "opens": 0, "open_in": 0,
                                             "reason": ""})


def test_an_open_canary_gives_its_share_to_stable(gateways: GatewayPool, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.touch()
    config = {"GATEWAY_WORKERS": 1, "CONFIG_ENDPOINTS": {"clf": {
        "SERVER_CLASS": "flaky", "BREAKER": {**BREAKER, "OPEN_SECONDS": 60,
                                             "MAX_OPEN_SECONDS": 60},
        "VERSIONS": {"v1": {}, "v2": {"FAIL_FILE": str(broken)}},
        "TRAFFIC": {"v1": 50, "v2": 50}}}}
    gw = gateways(config)
    gw.wait_state("clf@v2", "READY", timeout=60)
    failed = 0
    while failed < BREAKER["CONSECUTIVE_ERRORS"]:
        resp = gw.run("clf")
        if resp.status_code != 200:
            assert resp.headers["X-Endpoint-Version"] == "v2", resp.text
            failed += 1
    # v2 is open: every caller is served, by v1; a pin to v2 is refused fast.
    versions = {gw.run("clf", X=i).headers["X-Endpoint-Version"] for i in range(40)}
    assert versions == {"v1"}
    assert assert_error(gw.run("clf@v2"), 503)["ERROR_TYPE"] == "circuit_open"
