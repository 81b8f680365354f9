"""Shadow traffic through a real gateway: off the request path, compared, published."""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from basic_inference_server.traffic.shadow import sampled
from tests.conftest import Gateway, GatewayPool, assert_ok, wait_until

SHADOW_ROOM = 8
IGNORE_PID = ["loaded_in"]  # the echo worker's pid: differs between any two servers
CONFIG = {"GATEWAY_WORKERS": 2, "CONFIG_ENDPOINTS": {
    # The shadow sleeps 1 s (slow_echo.py) and takes 8 requests at once; half the
    # requests are mirrored.
    "clf": {"SERVER_CLASS": "echo", "VERSIONS": {"v1": {}, "v2": {
        "SERVER_CLASS": "slow_echo", "NR_WORKERS": 2, "MAX_IN_FLIGHT": SHADOW_ROOM}},
            "SHADOW": {"VERSION": "v2", "FRACTION": 0.5}},
    # The shadow answers a different TAG: every comparison disagrees.
    "diff": {"SERVER_CLASS": "echo", "VERSIONS": {"v1": {}, "v2": {"TAG": "two"}},
             "SHADOW": {"VERSION": "v2", "IGNORE": IGNORE_PID}},
    # The same answers, compared by the operator's hook on the echoed inputs only.
    "hooked": {"SERVER_CLASS": "echo", "VERSIONS": {"v1": {}, "v2": {"TAG": "two"}},
               "SHADOW": {"VERSION": "v2", "COMPARE": "hook", "HOOK": "shadow_hooks:same_echo"}},
}}
SERVERS = [f"{name}@{label}" for name in ("clf", "diff", "hooked") for label in ("v1", "v2")]


@pytest.fixture(scope="module")
def gw(module_gateways: GatewayPool) -> Gateway:
    gw = module_gateways(CONFIG)
    for name in SERVERS:
        gw.wait_state(name, "READY", timeout=90)
    return gw


def shadow_counts(gw: Gateway, endpoint: str) -> dict[str, float]:
    """``bis_shadow_requests_total`` of an endpoint by result, from /metrics."""
    text = gw.get("/metrics").text
    return {s.labels["result"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "bis_shadow_requests_total" and s.labels["endpoint"] == endpoint}


def request_ids(mirrored: bool, count: int) -> list[str]:
    """Request ids the FRACTION 0.5 of ``clf`` mirrors (or not): the choice is by id."""
    ids: list[str] = []
    while len(ids) < count:
        rid = uuid.uuid4().hex
        if sampled(rid, 0.5) == mirrored:
            ids.append(rid)
    return ids


def timed(session: requests.Session, gw: Gateway, rid: str, i: int) -> float:
    started = time.perf_counter()
    resp = session.post(gw.url("/run"), json={"SIGNATURE": "clf", "i": i},
                        headers={"X-Request-ID": rid}, timeout=10)
    elapsed = time.perf_counter() - started
    assert resp.status_code == 200 and resp.headers["X-Endpoint-Version"] == "v1", resp.text
    return elapsed


def test_a_one_second_shadow_adds_at_most_1_ms_to_the_primary_p50(gw: Gateway) -> None:
    """Mirrored and unmirrored requests alternate on one endpoint; their medians compare."""
    rounds = 300
    on, off = request_ids(True, rounds), request_ids(False, rounds + 20)
    session = requests.Session()
    for i in range(20):  # warm the connections (no mirror: the shadow starts idle)
        timed(session, gw, off[rounds + i], i)
    before = shadow_counts(gw, "clf")
    with_shadow: list[float] = []
    without: list[float] = []
    for i in range(rounds):
        with_shadow.append(timed(session, gw, on[i], i))
        without.append(timed(session, gw, off[i], i))
    p50_on, p50_off = statistics.median(with_shadow), statistics.median(without)
    assert p50_on - p50_off <= 0.001, (p50_on, p50_off)
    # The shadow really was busy: it held every mirror it could take (its MAX_IN_FLIGHT),
    # and the rest were dropped, never queued.
    counts = wait_until(lambda: (c := shadow_counts(gw, "clf"))
                        and sum(c.values()) - sum(before.values()) >= rounds and c,
                        timeout=30, message="every mirrored request is counted")
    assert counts.get("dropped", 0) > before.get("dropped", 0), counts
    sent = sum(counts.get(r, 0) - before.get(r, 0) for r in ("agree", "disagree"))
    assert sent >= SHADOW_ROOM, counts
    assert sum(counts.values()) - sum(before.values()) == rounds, counts


def test_a_shadow_that_answers_differently_shows_in_metrics_and_list_servers(gw: Gateway) -> None:
    for i in range(5):
        answer = assert_ok(gw.run("diff", i=i))
        assert answer["tag"] == "from-_CONFIG"  # the caller always gets the primary's answer
    wait_until(lambda: shadow_counts(gw, "diff").get("disagree") == 5, timeout=30,
               message="5 disagreements in /metrics")
    stats: dict[str, Any] = gw.servers()["SHADOW"]["diff"]["v2"]
    assert (stats["disagree"], stats["agree"], stats["mirrored"]) == (5, 0, 5), stats
    assert stats["disagreement_rate"] == 1.0
    assert 0 < stats["latency_p50_s"] <= stats["latency_p99_s"] < 10


def test_a_hook_from_the_endpoints_folder_compares(gw: Gateway) -> None:
    for i in range(3):
        assert_ok(gw.run("hooked", i=i))
    wait_until(lambda: shadow_counts(gw, "hooked").get("agree") == 3, timeout=30,
               message="3 agreements by the hook")
    stats = gw.servers()["SHADOW"]["hooked"]["v2"]
    assert stats["disagreement_rate"] == 0.0 and stats["error"] == 0, stats


def test_the_shadow_version_itself_is_never_mirrored(gw: Gateway) -> None:
    before = shadow_counts(gw, "diff")
    resp = gw.run("diff@v2", i=1)
    assert assert_ok(resp)["tag"] == "two" and resp.headers["X-Endpoint-Version"] == "v2"
    # A request that is mirrored after it proves the counters moved past the pinned one.
    assert_ok(gw.run("diff", i=2))
    wait_until(lambda: shadow_counts(gw, "diff").get("disagree", 0)
               == before.get("disagree", 0) + 1, timeout=30, message="one more mirror")
    assert sum(shadow_counts(gw, "diff").values()) == sum(before.values()) + 1
