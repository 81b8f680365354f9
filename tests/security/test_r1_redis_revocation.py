"""A key revoked on one gateway is refused by every gateway sharing the Redis, under 40
concurrent callers, no later than a second after the revoke's answer: while callers go
on through the revoke, and when they come back at once after a pause (a burst must not
be served from a key cache that was not checked again since before the revoke)."""

from __future__ import annotations

import http.client
import time

import orjson

from tests.conftest import assert_ok, wait_until
from tests.tenants.conftest import make_key, ready

CALLERS = 40
WITHIN = 1.0  # seconds after the revoke's answer
ROUNDS = 4


def config(url: str) -> dict:
    return {"API_KEYS": True, "GATEWAY_WORKERS": 2, "TENANTS_REDIS": url,
            "CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "echo", "NR_WORKERS": 2}}}


class Callers:
    """40 keep-alive connections, half to each gateway. A burst sends one request on
    each, back to back, then reads the answers: (status, monotonic time answered)."""

    def __init__(self, gateways: tuple) -> None:
        self.conns = [http.client.HTTPConnection("127.0.0.1", gateways[i % 2].port, timeout=30)
                      for i in range(CALLERS)]

    def burst(self, key: str) -> list[tuple[int, float]]:
        body = orjson.dumps({"SIGNATURE": "echo"})
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for conn in self.conns:
            conn.request("POST", "/run", body, headers)
        answers = []
        for conn in self.conns:
            resp = conn.getresponse()
            resp.read()
            answers.append((resp.status, time.monotonic()))
        return answers

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


def test_revoked_key_is_refused_by_both_gateways_within_a_second(gateways, redis_url,
                                                                  redis_prefix):
    url = f"{redis_url}?prefix={redis_prefix.rstrip(':')}"
    one, two = ready(gateways(config(url))), ready(gateways(config(url)))
    callers = Callers((one, two))
    late: list[float] = []
    statuses: set[int] = set()
    try:
        for steady in [True] + [False] * ROUNDS:
            made = make_key(one)
            for _ in range(3):  # every front process of both gateways caches the key
                assert {s for s, _t in callers.burst(made["KEY"])} == {200}
            assert_ok(one.post("/keys/revoke", {"KEY_ID": made["KEY_ID"]}))
            revoked = time.monotonic()
            if not steady:
                # A pause, then every caller at once, when a 200 would be late.
                wait_until(lambda revoked=revoked: time.monotonic() > revoked + WITHIN,
                           timeout=5)
            answers: list[tuple[int, float]] = []
            while time.monotonic() < revoked + WITHIN + 0.5:
                answers += callers.burst(made["KEY"])
            late += [round(t - revoked, 3) for s, t in answers if s == 200 and t > revoked + WITHIN]
            statuses |= {s for s, t in answers if t > revoked + WITHIN}
    finally:
        callers.close()
    assert not late, f"{len(late)} answers 200 more than {WITHIN} s after a revoke: {late[:20]}"
    assert statuses == {401}
