"""Usage metering per tenant and endpoint: batched into the store, admin JSON and CSV, Prometheus."""

from __future__ import annotations

import csv
import io

from tests.conftest import assert_error, assert_ok, wait_until
from tests.tenants.conftest import call, keyed_config, make_key, ready


def test_metering_per_tenant_and_endpoint(gateways):
    gw = ready(gateways(keyed_config()))
    acme = make_key(gw, TENANT="acme")["KEY"]
    globex = make_key(gw, TENANT="globex")["KEY"]
    for _ in range(5):
        assert_ok(call(gw, acme))
    for _ in range(3):
        assert_ok(call(gw, globex))
    assert_error(call(gw, globex, "nope"), 404)

    def rows():
        got = assert_ok(gw.get("/usage/tenants"))["ROWS"]
        return {(r["TENANT"], r["ENDPOINT"]): r for r in got}

    def settle():
        now = rows()
        return now if sum(r["REQUESTS"] for r in now.values()) == 9 else None

    got = wait_until(settle, timeout=20, message="the metering batches are written")
    assert got[("acme", "echo")]["REQUESTS"] == 5 and got[("acme", "echo")]["ERRORS"] == 0
    assert got[("globex", "echo")]["REQUESTS"] == 3
    assert got[("globex", "unknown")]["ERRORS"] == 1
    assert got[("acme", "echo")]["LATENCY_MS_AVG"] > 0
    text = gw.get("/usage/tenants.csv").text
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert {(r["TENANT"], r["ENDPOINT"], r["REQUESTS"]) for r in parsed} >= {("acme", "echo", "5")}
    assert_error(gw.get("/usage/tenants", token=None), 401)
    assert_error(gw.get("/usage/tenants", params={"DAY": "yesterday"}), 400)
    metrics = gw.get("/metrics").text
    assert 'bis_tenant_requests_total{endpoint="echo",status="2xx",tenant="acme"} 5.0' in metrics
