"""``bis_tenant_quota_used_ratio``: the share of its quota each tenant's key nearest its own
has spent, read from the key store at scrape time (SQLite and Redis), bounded to the
tenants nearest their quota; and through a live gateway's /metrics."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from basic_inference_server.tenants.keys import key_from_request
from basic_inference_server.tenants.metering import QuotaUse
from basic_inference_server.tenants.store import open_store
from basic_inference_server.tenants.usage import period
from tests.conftest import assert_ok
from tests.tenants.conftest import call, keyed_config, make_key, ready


def shares(collector: QuotaUse) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return {s.labels.get("tenant", "*"): s.value for family in registry.collect()
            for s in family.samples if s.name == "bis_tenant_quota_used_ratio"}


def add_key(store: Any, tenant: str, quota: dict[str, Any] | None) -> Any:
    key, _secret = key_from_request({"TENANT": tenant, **({"QUOTA": quota} if quota else {})})
    store.add(key)
    return key


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_each_tenant_reports_its_key_nearest_its_quota(backend, tmp_path, request):
    url = None
    if backend == "redis":
        url = f"{request.getfixturevalue('redis_url')}?prefix=bis-quota-{os.urandom(4).hex()}"
    store = open_store(url, str(tmp_path / "tenants.db"))
    now = time.time()
    day, month = period("day", now)[0], period("month", now)[0]
    acme_day = add_key(store, "acme", {"REQUESTS": 10, "PER": "day"})
    acme_month = add_key(store, "acme", {"UNITS": 1000, "PER": "month"})
    globex = add_key(store, "globex", {"UNITS": 50, "PER": "day"})
    add_key(store, "initech", None)  # no quota: no sample
    revoked = add_key(store, "umbrella", {"REQUESTS": 1, "PER": "day"})
    store.charge_now(acme_day.lineage, day, 3)
    store.charge_now(acme_month.lineage, month, 900)
    store.charge_now(globex.lineage, day, 10)
    store.charge_now(globex.lineage, "2000-01-01", 49)  # another period: not this one's
    store.charge_now(revoked.lineage, day, 1)
    revoked.revoked = now
    store.save(revoked)

    assert shares(QuotaUse(store)) == {"acme": 0.9, "globex": 0.2}
    assert shares(QuotaUse(store, top=1)) == {"acme": 0.9}, "the tenants nearest their quota"
    assert shares(QuotaUse(store, tenant_labels=False)) == {"*": 0.9}


def test_a_live_gateway_reports_what_a_key_spent_of_its_quota(gateways):
    gw = ready(gateways(keyed_config()))
    key = make_key(gw, TENANT="acme", QUOTA={"REQUESTS": 8, "PER": "day"})["KEY"]
    for i in range(6):
        assert_ok(call(gw, key, A=i))
    text = requests.get(gw.url("/metrics"), timeout=10,
                        headers={"Authorization": f"Bearer {gw.token}"}).text
    got = {s.labels["tenant"]: s.value for family in text_string_to_metric_families(text)
           for s in family.samples if s.name == "bis_tenant_quota_used_ratio"}
    assert got == {"acme": 6 / 8}
