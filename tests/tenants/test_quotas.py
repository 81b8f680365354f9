"""Quotas in units reported by a real endpoint; counters across a restart; GET /usage."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import requests

from tests.conftest import FIXTURE_ENDPOINTS, assert_error, assert_ok, spawn_gateway, with_test_defaults
from tests.tenants.conftest import call, keyed_config, make_key, ready

HERE = Path(__file__).parent


def usage(gw, key):
    resp = requests.get(gw.url("/usage"), headers={"X-API-Key": key}, timeout=10)
    return assert_ok(resp)


def test_unit_quota_survives_a_restart(tmp_path):
    endpoints = tmp_path / "endpoints"
    shutil.copytree(FIXTURE_ENDPOINTS, endpoints, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(HERE / "endpoints" / "metered.py", endpoints / "metered.py")
    config = with_test_defaults(keyed_config(CONFIG_ENDPOINTS={
        "metered": {"SERVER_CLASS": "metered"}}))
    gw = spawn_gateway(tmp_path / "gw", config, endpoints=endpoints)
    try:
        ready(gw)
        key = make_key(gw, QUOTA={"UNITS": 10, "PER": "day"})["KEY"]
        for _ in range(3):  # 4 + 4 + 4: the third crosses 10 and is charged in full
            body = assert_ok(call(gw, key, "metered", n=4))
            assert body["done"] is True and "USAGE" not in body
        refused = call(gw, key, "metered", n=1)
        body = assert_error(refused, 429)
        assert body["ERROR_TYPE"] == "quota_exceeded" and body["SPENT"] == 12
        assert body["RESET_AT"] > time.time() and 1 <= int(refused.headers["Retry-After"]) <= 86400
        seen = usage(gw, key)["USAGE"]
        assert seen["SPENT"] == 12 and seen["QUOTA"] == 10 and seen["UNIT"] == "units"
        # A requests quota counts answers, whatever their units.
        other = make_key(gw, QUOTA={"REQUESTS": 2, "PER": "month"})["KEY"]
        assert_ok(call(gw, other, "metered", n=100))
        assert usage(gw, other)["USAGE"]["SPENT"] == 1
    finally:
        gw.stop()
    again = spawn_gateway(tmp_path / "gw", config, endpoints=endpoints)
    try:
        ready(again)
        assert usage(again, key)["USAGE"]["SPENT"] == 12
        assert_error(call(again, key, "metered", n=1), 429)
        assert_ok(call(again, other, "metered"))
        assert_error(call(again, other, "metered"), 429)
    finally:
        again.stop()


def test_bad_quotas_are_400(module_gateways):
    gw = module_gateways(keyed_config())
    for quota in ({"UNITS": 0}, {"REQUESTS": 1, "UNITS": 1}, {"REQUESTS": 1, "PER": "week"},
                  "10/day"):
        assert_error(gw.post("/keys", {"TENANT": "acme", "QUOTA": quota}), 400)
