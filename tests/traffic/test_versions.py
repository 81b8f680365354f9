"""Versions side by side, weighted and sticky routing, runtime weights kept across restarts."""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from basic_inference_server.config import parse_config
from basic_inference_server.errors import ConfigError
from tests.conftest import (
    Gateway,
    GatewayPool,
    assert_error,
    assert_ok,
    spawn_gateway,
    wait_until,
    with_test_defaults,
)

# One endpoint file, two versions: v2 differs by a key the echo worker reports (TAG).
CLF = {"SERVER_CLASS": "echo", "VERSIONS": {"v1": {}, "v2": {"TAG": "two"}},
       "TRAFFIC": {"v1": 90, "v2": 10}}
CONFIG = {"GATEWAY_WORKERS": 2, "CONFIG_ENDPOINTS": {"clf": CLF, "plain": {"SERVER_CLASS": "echo"}}}


def ready(gw: Gateway) -> Gateway:
    gw.wait_ready(60)
    for name in ("clf@v1", "clf@v2", "plain"):
        gw.wait_state(name, "READY", timeout=60)
    return gw


@pytest.fixture(scope="module")
def gw(module_gateways: GatewayPool) -> Gateway:
    return ready(module_gateways(CONFIG))


def test_each_version_is_a_server_and_a_pin_reaches_it(gw: Gateway) -> None:
    servers = gw.servers()
    for label in ("v1", "v2"):
        info = servers["SERVERS"][f"clf@{label}"]
        assert info["version"] == label and info["state"] == "READY"
    assert servers["SERVERS"]["clf@v1"]["pid"] != servers["SERVERS"]["clf@v2"]["pid"]
    assert servers["TRAFFIC"]["clf"]["weights"] == {"v1": 90, "v2": 10}
    resp = gw.run("clf@v2", X=1)
    assert assert_ok(resp)["tag"] == "two"
    assert resp.headers["X-Endpoint-Version"] == "v2"
    resp = gw.run("clf@v1", X=1)
    assert assert_ok(resp)["tag"] == "from-_CONFIG"
    assert resp.headers["X-Endpoint-Version"] == "v1"
    # An endpoint without VERSIONS names no version.
    assert "X-Endpoint-Version" not in gw.run("plain", X=1).headers
    assert_error(gw.run("clf@v3"), 404)
    assert_error(gw.run("clf@"), 404)


def test_weights_split_within_2_percent_and_each_tenant_sees_one_version(gw: Gateway) -> None:
    """10,000 requests from 5,000 tenants at 90/10."""
    seen: dict[str, set[str]] = collections.defaultdict(set)
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=16))

    def call(i: int) -> tuple[str, str]:
        tenant = f"tenant-{i % 5000}"
        resp = session.post(gw.url("/run"), json={"SIGNATURE": "clf"},
                            headers={"X-Customer-ID": tenant}, timeout=30)
        assert resp.status_code == 200, resp.text
        return tenant, resp.headers["X-Endpoint-Version"]

    with ThreadPoolExecutor(12) as pool:
        for tenant, version in pool.map(call, range(10_000)):
            seen[tenant].add(version)
    counts = collections.Counter(v for versions in seen.values() for v in versions)
    assert all(len(versions) == 1 for versions in seen.values()), "a tenant saw two versions"
    share = counts["v2"] / sum(counts.values())
    assert abs(share - 0.10) <= 0.02, counts


def test_a_sticky_field_keeps_a_caller_on_one_version(module_gateways: GatewayPool) -> None:
    config = {"CONFIG_ENDPOINTS": {"clf": {**CLF, "STICKY_FIELD": "user",
                                           "TRAFFIC": {"v1": 50, "v2": 50}}}}
    gw = module_gateways(config)
    gw.wait_state("clf@v1", "READY", timeout=60)
    gw.wait_state("clf@v2", "READY", timeout=60)
    versions = collections.defaultdict(set)
    for i in range(200):
        user = f"u{i % 20}"
        versions[user].add(gw.run("clf", user=user).headers["X-Endpoint-Version"])
    assert all(len(v) == 1 for v in versions.values())
    assert {v for vs in versions.values() for v in vs} == {"v1", "v2"}


def test_weights_change_at_runtime_and_survive_a_restart(gateways: GatewayPool) -> None:
    gw = ready(gateways(CONFIG))
    resp = gw.post("/traffic", {"SIGNATURE": "clf", "WEIGHTS": {"v2": 100}})
    assert assert_ok(resp)["weights"] == {"v1": 0, "v2": 100}
    # Each front process reads the new table within CHECK_EVERY (50 ms).
    wait_until(lambda: all(gw.run("clf", X=i).headers["X-Endpoint-Version"] == "v2"
                           for i in range(10)), timeout=5, message="every front routes to v2")
    assert {gw.run("clf", X=i).headers["X-Endpoint-Version"] for i in range(30)} == {"v2"}
    assert gw.get("/traffic").json()["TRAFFIC"]["clf"]["weights"] == {"v1": 0, "v2": 100}
    history = gw.get("/history").json()
    assert any(e.get("kind") == "traffic_weights" for e in history.get("events", [])), history
    workdir, port = gw.workdir, gw.port
    gw.stop()
    again = spawn_gateway(workdir, with_test_defaults(CONFIG), port=port)
    gateways.started.append(again)
    ready(again)
    assert again.get("/traffic?SIGNATURE=clf").json()["weights"] == {"v1": 0, "v2": 100}
    assert {again.run("clf", X=i).headers["X-Endpoint-Version"] for i in range(30)} == {"v2"}


@pytest.mark.parametrize(("body", "status"), [
    ({"SIGNATURE": "clf", "WEIGHTS": {"v1": -1}}, 400),
    ({"SIGNATURE": "clf", "WEIGHTS": {"v1": 0, "v2": 0}}, 400),
    ({"SIGNATURE": "clf", "WEIGHTS": {"v9": 10}}, 400),
    ({"SIGNATURE": "clf", "WEIGHTS": {"v1": "ten"}}, 400),
    ({"SIGNATURE": "clf", "WEIGHTS": [1, 2]}, 400),
    ({"SIGNATURE": "plain", "WEIGHTS": {"v1": 10}}, 404),
    ({"SIGNATURE": "nope", "WEIGHTS": {"v1": 10}}, 404),
])
def test_bad_weights_are_refused_and_change_nothing(gw: Gateway, body: Any, status: int) -> None:
    assert_error(gw.post("/traffic", body), status)
    assert_error(gw.post("/traffic", {"SIGNATURE": "clf"}), 400)
    assert gw.get("/traffic?SIGNATURE=clf").json()["weights"] == {"v1": 90, "v2": 10}


def test_traffic_needs_the_admin_token(gw: Gateway) -> None:
    assert_error(gw.get("/traffic", token=None), 401)
    assert_error(gw.post("/traffic", {"SIGNATURE": "clf", "WEIGHTS": {"v1": 1}}, token=None), 401)


def test_the_request_metric_has_a_version_label(gw: Gateway) -> None:
    gw.run("clf@v2", X=1)
    text = gw.get("/metrics").text
    assert 'bis_requests_total{endpoint="clf",status="200",version="v2"}' in text \
        or 'bis_requests_total{endpoint="clf",version="v2",status="200"}' in text, text[:2000]


@pytest.mark.parametrize(("section", "message"), [
    ({"VERSIONS": {"v1": {}}, "TRAFFIC": {"v2": 10}}, "TRAFFIC names versions"),
    ({"VERSIONS": {"1bad": {}}}, "labels must be"),
    ({"VERSIONS": {"v1": {"VERSIONS": {}}}}, "may not set VERSIONS"),
    ({"VERSIONS": {"v1": []}}, "must map each version"),
    ({"TRAFFIC": {"v1": 10}}, "need VERSIONS"),
    ({"VERSIONS": {"v1": {}}, "TRAFFIC": {"v1": 0}}, "above 0"),
    ({"VERSIONS": {"v1": {}}, "SHADOW": {"VERSION": "v9"}}, "SHADOW.VERSION"),
])
def test_bad_version_settings_stop_the_start(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"CONFIG_ENDPOINTS": {"clf": {"SERVER_CLASS": "echo", **section}}})


def test_a_stopped_version_gives_its_share_to_the_others(gw: Gateway) -> None:
    assert_ok(gw.post("/kill_server", {"SIGNATURE": "clf@v2"}))
    gw.wait_state("clf@v2", "STOPPED")
    try:
        wait_until(lambda: gw.run("clf", X=0).status_code == 200, timeout=5)
        answers = [gw.post("/run", {"SIGNATURE": "clf"}, headers={"X-Customer-ID": f"t{i}"})
                   for i in range(100)]
        assert {r.status_code for r in answers} == {200}
        assert {r.headers["X-Endpoint-Version"] for r in answers} == {"v1"}
        assert_error(gw.run("clf@v2"), 503)  # a pin still names the stopped version
    finally:
        assert_ok(gw.post("/start_server", {"SIGNATURE": "clf@v2"}))
        gw.wait_state("clf@v2", "READY", timeout=60)
