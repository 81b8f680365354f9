"""The model manager behind real gateways: eviction, 429, the model factory, metrics, Redis."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from basic_inference_server.models.redis_state import RedisState
from tests.conftest import assert_error, assert_ok, free_port, wait_until
from tests.integration.test_metrics import samples

UNITS = 512
SIZE = UNITS * UNITS * 4 + UNITS * 4  # bytes of one model (a Linear layer)
MB = 1024 * 1024


def pool(**settings):
    models = {name: {"units": UNITS} for name in ("pinned", "a", "b", "c")}
    models["huge"] = {"units": 2048, "memory_mb": 16}
    return {"SERVER_CLASS": "model_pool", "NR_WORKERS": 1, "MODELS": models, **settings}


def test_eviction_lru_pinned_and_429(gateways):
    # Room for 3.5 models at the 80 % threshold: pinned + two others.
    budget_mb = 3.5 * SIZE / MB / 0.8
    gw = gateways({"CONFIG_ENDPOINTS": {"pool": pool(MODEL_MEMORY_BUDGET_MB=budget_mb,
                                                     PRELOAD_MODELS=["pinned"],
                                                     MODEL_THRASH_LIMIT=2)}})

    def loaded_after(*models):
        return assert_ok(gw.run("pool", models=list(models)))["loaded"]

    assert loaded_after() == ["pinned"]
    assert loaded_after("a") == ["a", "pinned"]
    assert loaded_after("b") == ["a", "b", "pinned"]
    assert loaded_after("a") == ["a", "b", "pinned"]  # b is now the least recently used idle one
    # pinned is older than both, but referenced (preloaded): b goes.
    assert loaded_after("c") == ["a", "c", "pinned"]
    assert loaded_after("b") == ["b", "c", "pinned"]  # then a, the LRU of a and c

    resp = gw.run("pool", models=["huge"])
    body = assert_error(resp, 429)
    assert body["error"] == "Required models unavailable"
    assert body["unavailable_models"] == ["huge"]
    assert body["message"].startswith("The server is currently unable to handle the request")
    assert int(resp.headers["Retry-After"]) >= 1
    assert loaded_after() == ["b", "c", "pinned"]  # the refused load unloaded nothing it did not need

    got = samples(gw)

    def value(name, **labels):
        key = (name, tuple(sorted({"endpoint": "pool", **labels}.items())))
        return got.get(key, 0)

    assert value("bis_model_loads_total", model="b") == 2
    assert value("bis_model_unloads_total", model="b", reason="evicted") == 1
    assert value("bis_model_unloads_total", model="a", reason="evicted") == 1
    assert value("bis_model_unavailable_total", model="huge") == 1
    assert value("bis_model_refs", model="pinned") == 1
    assert value("bis_model_memory_bytes", model="c") == SIZE
    assert value("bis_model_hits_total", model="a") >= 1
    assert value("bis_model_load_seconds_count", model="a") == 1
    # b was loaded, evicted and loaded again: over the limit of 2 events, one alert.
    assert value("bis_model_thrashing", model="b") == 1
    assert value("bis_model_thrashing", model="a") == 0

    def alerts():
        notes = gw.get("/notifications").json()["NOTIFICATIONS"]
        return [n for n in notes if n["endpoint"] == "pool" and n["notif"] == "alert"]

    listed = wait_until(alerts, timeout=10, message="the thrash alert is in /notifications")
    assert [n["msg"] for n in listed] == ["model b thrashes: 3 loads/unloads in 300 s"]


def test_model_factory_sources(gateways, monkeypatch):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIS_")}
    env["MODEL_GLOBAL"] = "c"
    gw = gateways({"CONFIG_ENDPOINTS": {"pool": pool(
        REQUIRED_MODELS=["a"], CUSTOMER_MODELS={"acme": ["b"]})}}, env=env)
    assert assert_ok(gw.run("pool"))["loaded"] == ["a", "c"]
    resp = gw.post("/run", {"SIGNATURE": "pool"}, headers={"X-Customer-ID": "acme"})
    assert assert_ok(resp)["loaded"] == ["a", "b", "c"]
    body = assert_error(gw.run("pool", models=["a", "nope", "evil"]), 400)
    assert body["unknown_models"] == ["nope", "evil"] and "nope, evil" in body["ERROR"]
    assert_error(gw.run("pool", models="a"), 400)
    body = assert_error(gw.run("pool", USE="nope"), 500)  # the worker's own bug, named
    assert "nope" in body["ERROR"]


def test_worker_use_holds_a_model(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"pool": pool()}})
    body = assert_ok(gw.run("pool", USE="a"))
    assert body["out_features"] == UNITS and body["loaded"] == ["a"]


@pytest.fixture
def prefix(redis_prefix):
    return redis_prefix


def test_two_servers_share_one_record_in_redis(gateways, prefix, redis_url):
    shared = {"MODEL_STATE_URL": redis_url, "MODEL_STATE_PREFIX": prefix, "NR_WORKERS": 2,
              "REQUIRED_MODELS": ["a"]}
    gw = gateways({"CONFIG_ENDPOINTS": {"one": pool(**shared), "two": pool(**shared)}})
    state = RedisState(redis_url, prefix=prefix)
    n = 60
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            rec = state.record("a")
            if rec:
                peak[0] = max(peak[0], rec["ref_count"])

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        # A worker's first request builds the model (torch imported then): on a busy
        # machine that takes longer than the helpers' default timeout.
        with ThreadPoolExecutor(8) as ex:
            answers = list(ex.map(lambda i: gw.run("one" if i % 2 else "two", HOLD_S=0.02, _timeout=60),
                                  range(n)))
    finally:
        done.set()
        sampler.join()
    for resp in answers:
        assert_ok(resp)
    rec = state.record("a")
    assert rec["hits"] == n and rec["ref_count"] == 0
    assert 1 < peak[0] <= 4  # four workers, one request each at a time
    pids = {s["pid"] for s in gw.servers()["SERVERS"].values()}
    workers = {p for s in gw.servers()["SERVERS"].values() for p in s["worker_pids"]}
    holders = {c["pid"] for c in rec["copies"]}
    assert holders <= workers and len(holders) >= 2, (holders, workers, pids)
    state.close()


def test_killed_worker_frees_its_references(gateways, prefix, redis_url):
    lease = 1.0
    gw = gateways({"CONFIG_ENDPOINTS": {"one": pool(
        MODEL_STATE_URL=redis_url, MODEL_STATE_PREFIX=prefix, MODEL_LEASE=lease)}})
    state = RedisState(redis_url, prefix=prefix)
    stuck = ThreadPoolExecutor(1)
    pending = stuck.submit(gw.run, "one", models=["a", "b"], HOLD_S=60, _timeout=90)
    wait_until(lambda: (state.record("a") or {}).get("ref_count") == 1, timeout=20,
               message="the request holds a")
    pid = state.record("a")["copies"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    assert_error(pending.result(timeout=30), 503)
    stuck.shutdown()
    wait_until(lambda: state.record("a") is None and state.record("b") is None, timeout=lease + 5,
               message="references and copies of the killed worker expired")
    gw.wait_ready(20)
    assert_ok(gw.run("one", models=["a"]))  # the respawned worker loads its own copy
    state.close()


def test_unreachable_model_state_is_503(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"pool": pool(
        MODEL_STATE_URL=f"redis://127.0.0.1:{free_port()}/0")}})
    resp = gw.run("pool", models=["a"])
    body = assert_error(resp, 503)
    assert "model state unavailable" in body["ERROR"] and resp.headers["Retry-After"] == "1"
