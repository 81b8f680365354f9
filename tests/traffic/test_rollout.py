"""Progressive rollouts on real gateways: automatic rollback, promotion, commands, restarts."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

from basic_inference_server.gateway.routes import CHECK_EVERY
from tests.conftest import (
    Gateway,
    GatewayPool,
    assert_error,
    assert_ok,
    spawn_gateway,
    wait_until,
    with_test_defaults,
)

# The manager publishes the route table a few milliseconds after deciding; this much more
# than the table's propagation bound allows for a busy machine.
PUBLISH_SLACK = 0.05


def config(v2: dict[str, Any], **section: Any) -> dict[str, Any]:
    return {"GATEWAY_WORKERS": 2, "CONFIG_ENDPOINTS": {"clf": {
        "SERVER_CLASS": "flaky", "NR_WORKERS": 2, "VERSIONS": {"v1": {}, "v2": v2},
        **section}}}


def ready(gw: Gateway) -> Gateway:
    gw.wait_ready(60)
    for name in ("clf@v1", "clf@v2"):
        gw.wait_state(name, "READY", timeout=60)
    return gw


class Load:
    """Steady load on an endpoint from a few threads; every request's start, end, status
    and serving version is recorded (wall-clock times, as the rollout's history)."""

    def __init__(self, gw: Gateway, name: str, threads: int = 4) -> None:
        self.gw, self.name = gw, name
        self.records: list[tuple[float, float, int, str | None]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10)
        body = json.dumps({"SIGNATURE": self.name})
        try:
            while not self.stop.is_set():
                started = time.time()
                try:
                    conn.request("POST", "/run", body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    self.errors.append(repr(exc))
                    conn.close()
                    continue
                self.records.append((started, time.time(), resp.status,
                                     resp.getheader("X-Endpoint-Version")))
        finally:
            conn.close()

    def started_after(self, when: float) -> list[tuple[float, float, int, str | None]]:
        return [r for r in list(self.records) if r[0] >= when]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        wait_until(lambda: len(self.records) >= 20, timeout=20, message="the load runs")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)
        assert not self.errors, self.errors[:5]


def rollout(gw: Gateway) -> dict[str, Any]:
    return assert_ok(gw.get("/rollout?SIGNATURE=clf"))


def test_a_canary_failing_30_percent_is_rolled_back_and_nothing_fails_after(
        gateways: GatewayPool) -> None:
    gw = ready(gateways(config({"FAIL_FRACTION": 0.3})))
    plan = {"SIGNATURE": "clf", "CANARY": "v2", "STEPS": [20, 50, 100], "DWELL_S": 60,
            "MIN_REQUESTS": 30, "MAX_ERROR_RATE_DELTA": 0.1}
    with Load(gw, "clf") as load:
        assert assert_ok(gw.post("/rollout", plan))["weights"] == {"v2": 20, "v1": 80}
        wait_until(lambda: rollout(gw)["state"] == "failed", timeout=60,
                   message="the rollout fails")
        decided = rollout(gw)["history"][-1]["time"]
        settled = decided + CHECK_EVERY + PUBLISH_SLACK
        wait_until(lambda: len(load.started_after(settled)) >= 200, timeout=30,
                   message="200 requests after the rollback")
    info = rollout(gw)
    last = info["history"][-1]
    assert last["event"] == "failed" and last["weights"] == {"v2": 0, "v1": 100}, last
    assert "canary error rate" in last["reason"] and "exceeds stable's 0.0%" in last["reason"]
    failures = [r for r in load.records if r[2] != 200]
    assert failures and all(r[2] == 500 and r[3] == "v2" for r in failures), failures[:5]
    late = [r for r in failures if r[0] >= settled]
    assert not late, f"{len(late)} requests started after the rollback failed: {late[:5]}"
    assert {r[3] for r in load.started_after(settled)} == {"v1"}
    # Every canary request is counted in the rollout's totals, in-flight ones included
    # (each front process reports a few times a second).
    canary = [r for r in load.records if r[3] == "v2"]
    wait_until(lambda: (rollout(gw)["stats"]["canary_total"]["failures"],
                        rollout(gw)["stats"]["canary_total"]["requests"])
               == (len(failures), len(canary)),
               timeout=10, message="the rollout counts every canary request and failure")
    assert last["canary_total"]["failures"] >= 1
    assert gw.get("/traffic?SIGNATURE=clf").json()["weights"] == {"v1": 100, "v2": 0}
    notes = gw.get("/notifications").json()["NOTIFICATIONS"]
    assert any(n["notif"] == "ROLLOUT_FAILED" and n["endpoint"] == "clf" for n in notes), notes
    metrics = gw.get("/metrics").text
    assert re.search(r'bis_rollout_rollbacks_total\{endpoint="clf"\} 1\.0', metrics), metrics
    assert re.search(r'bis_rollout_canary_weight\{endpoint="clf",version="v2"\} 0\.0', metrics)
    events = [e["kind"] for e in gw.get("/history").json()["events"]]
    assert "rollout_started" in events and "rollout_failed" in events, events


def test_a_healthy_canary_is_promoted_through_every_step(gateways: GatewayPool) -> None:
    gw = ready(gateways(config({"LABEL": "two"})))
    # The steps are under test here, not the latency judgment (test_traffic_rollout.py):
    # on a busy machine the p99 of a step's 10 requests is one stall, which the default
    # margin (50 ms) would read as a slower canary.
    plan = {"SIGNATURE": "clf", "CANARY": "v2", "STEPS": [10, 50, 100], "DWELL_S": 1,
            "MIN_REQUESTS": 10, "P99_MARGIN_MS": 10000}
    with Load(gw, "clf", threads=3) as load:
        assert_ok(gw.post("/rollout", plan))
        ended = wait_until(lambda: (info := rollout(gw))["state"] != "running" and info,
                           timeout=90, message="the rollout ends")
        assert ended["state"] == "promoted", ended
        promoted = rollout(gw)["history"][-1]["time"]
        wait_until(lambda: len(load.started_after(promoted + 0.5)) >= 50, timeout=30)
    info = rollout(gw)
    assert [(h["event"], h["weights"]["v2"]) for h in info["history"]] == [
        ("started", 10), ("advanced", 50), ("advanced", 100), ("promoted", 100)]
    assert all(r[2] == 200 for r in load.records), [r for r in load.records if r[2] != 200][:5]
    assert {r[3] for r in load.started_after(promoted + 0.5)} == {"v2"}
    assert gw.get("/traffic?SIGNATURE=clf").json()["weights"] == {"v1": 0, "v2": 100}
    metrics = gw.get("/metrics").text
    assert re.search(r'bis_rollout_canary_weight\{endpoint="clf",version="v2"\} 100\.0', metrics)
    listing = gw.servers()["ROLLOUTS"]["clf"]
    assert listing["state"] == "promoted" and listing["weights"] == {"v2": 100, "v1": 0}


def test_the_canary_breaker_opening_fails_the_rollout(gateways: GatewayPool,
                                                      tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.touch()
    gw = ready(gateways(config({"FAIL_FILE": str(broken)},
                               BREAKER={"CONSECUTIVE_ERRORS": 3, "OPEN_SECONDS": 30})))
    plan = {"SIGNATURE": "clf", "CANARY": "v2", "STEPS": [50, 100], "DWELL_S": 60,
            "MIN_REQUESTS": 100_000}  # the error rate cannot decide: only the breaker
    with Load(gw, "clf", threads=2):
        assert_ok(gw.post("/rollout", plan))
        wait_until(lambda: rollout(gw)["state"] == "failed", timeout=30,
                   message="the rollout fails")
    assert "circuit breaker opened" in rollout(gw)["reason"]


def test_rollout_commands_check_their_input_and_a_restart_keeps_the_rollout(
        gateways: GatewayPool) -> None:
    cfg = config({})
    gw = ready(gateways(cfg))
    assert_error(gw.post("/rollout", {"SIGNATURE": "clf", "CANARY": "v2"}, token=None), 401)
    assert_error(gw.get("/rollout?SIGNATURE=clf", token=None), 401)
    assert_error(gw.post("/rollout", {"SIGNATURE": "nope", "CANARY": "v2"}), 404)
    assert_error(gw.post("/rollout", {"SIGNATURE": "clf", "CANARY": "v9"}), 400)
    assert_error(gw.post("/rollout", {"SIGNATURE": "clf", "CANARY": "v1"}), 400)  # the stable
    assert_error(gw.post("/rollout", {"SIGNATURE": "clf", "CANARY": "v2", "STEPS": [50, 10]}),
                 400)
    assert_error(gw.post("/rollout", {"SIGNATURE": "clf", "CANARY": "v2", "DWEL_S": 1}), 400)
    assert_error(gw.post("/rollout", {"CANARY": "v2"}), 400)
    assert_error(gw.get("/rollout?SIGNATURE=clf"), 404)  # none yet
    assert_error(gw.get("/rollout?SIGNATURE=clf&CANARY=v2"), 404)  # a GET starts nothing
    assert assert_ok(gw.get("/rollout"))["ROLLOUTS"] == {}
    assert_error(gw.post("/rollout/promote", {"SIGNATURE": "clf"}), 409)
    assert_error(gw.post("/rollout/abort", {}), 400)
    plan = {"SIGNATURE": "clf", "CANARY": "v2", "STEPS": [10, 100], "DWELL_S": 3600}
    assert assert_ok(gw.post("/rollout", plan))["state"] == "running"
    assert_error(gw.post("/rollout", plan), 409)
    assert_error(gw.post("/traffic", {"SIGNATURE": "clf", "WEIGHTS": {"v1": 100}}), 409)
    # A restart carries on with the rollout where it was.
    workdir, port = gw.workdir, gw.port
    gw.stop()
    again = spawn_gateway(workdir, with_test_defaults(cfg), port=port)
    gateways.started.append(again)
    ready(again)
    info = rollout(again)
    assert (info["state"], info["step"], info["weights"]) == ("running", 0, {"v2": 10, "v1": 90})
    assert again.get("/traffic?SIGNATURE=clf").json()["weights"] == {"v1": 90, "v2": 10}
    body = assert_ok(again.post("/rollout/abort", {"SIGNATURE": "clf", "REASON": "by ops"}))
    assert body["state"] == "aborted" and body["weights"] == {"v2": 0, "v1": 100}
    assert [h["event"] for h in rollout(again)["history"]] == ["started", "aborted"]
    assert_error(again.post("/rollout/abort", {"SIGNATURE": "clf"}), 409)
    assert_ok(again.post("/rollout", plan))
    body = assert_ok(again.post("/rollout/promote", {"SIGNATURE": "clf"}))
    assert body["state"] == "promoted" and body["weights"] == {"v2": 100, "v1": 0}
    served = lambda: {again.run("clf").headers["X-Endpoint-Version"] for _ in range(20)}  # noqa: E731
    wait_until(lambda: served() == {"v2"}, timeout=5, message="the front routes by the new table")
    assert served() == {"v2"}
    # A canary that stops serving fails its rollout (the fronts report even when idle).
    assert_ok(again.post("/rollout", {**plan, "CANARY": "v1"}))
    assert_ok(again.post("/kill_server", {"SIGNATURE": "clf@v1"}))
    wait_until(lambda: rollout(again)["state"] == "failed", timeout=10,
               message="the rollout fails")
    assert "the canary clf@v1 is STOP" in rollout(again)["reason"]
