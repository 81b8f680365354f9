"""The tenant package's pieces without a gateway: periods, USAGE, buckets, key parsing."""

from __future__ import annotations

import asyncio
import calendar

import orjson
import pytest

from basic_inference_server.errors import BadRequest
from basic_inference_server.tenants.allot import Ahead
from basic_inference_server.tenants.keys import digest, key_from_request, presented
from basic_inference_server.tenants.limits import Plan
from basic_inference_server.tenants.shared import SharedLimits
from basic_inference_server.tenants.usage import period, strip_usage


def test_periods_end_at_the_next_utc_day_and_month():
    dec = calendar.timegm((2026, 12, 31, 23, 59, 0))
    assert period("day", dec) == ("2026-12-31", calendar.timegm((2027, 1, 1, 0, 0, 0)))
    assert period("month", dec) == ("2026-12", calendar.timegm((2027, 1, 1, 0, 0, 0)))
    feb = calendar.timegm((2028, 2, 10, 5, 0, 0))
    assert period("month", feb) == ("2028-02", calendar.timegm((2028, 3, 1, 0, 0, 0)))


def test_usage_is_stripped_and_only_numbers_count():
    body, units = strip_usage(orjson.dumps({"a": 1, "USAGE": 7.5}))
    assert orjson.loads(body) == {"a": 1} and units == 7.5
    assert strip_usage(orjson.dumps({"USAGE": "lots"}))[1] == 0.0
    assert strip_usage(orjson.dumps({"USAGE": -3}))[1] == 0.0
    assert strip_usage(b'{"text": "the word \\"USAGE\\" only"}')[1] == 0.0
    assert strip_usage(b"not json")[0] == b"not json"


def test_bucket_refuses_past_burst_and_reports_headers():
    limits = Ahead(SharedLimits(rows=2, slots=64))

    async def run():
        return [await limits.take(Plan([("k", 1 / 60, 3)])) for _ in range(4)]

    decisions = asyncio.run(run())
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[0].headers() == [("RateLimit-Limit", "3"), ("RateLimit-Remaining", "2"),
                                      ("RateLimit-Reset", "60")]
    assert 59 <= decisions[3].retry_after <= 60


def test_slots_come_back_and_a_new_process_clears_its_row():
    shared = SharedLimits(rows=2, slots=64)
    limits = Ahead(shared)

    async def run():
        first, second, third = (Plan([], ("k:slots", 2)) for _ in range(3))
        assert (await limits.take(first)).allowed and (await limits.take(second)).allowed
        assert not (await limits.take(third)).allowed
        await limits.release(first)
        assert (await limits.take(Plan([], ("k:slots", 2)))).allowed
        shared.claim_row(0)  # the process holding them died; its successor starts
        assert (await Ahead(shared).take(Plan([], ("k:slots", 2)))).allowed

    asyncio.run(run())


def test_keys_are_random_and_presented_either_way():
    key, secret = key_from_request({"TENANT": "acme", "RATE": "120/minute"})
    other, second = key_from_request({"TENANT": "acme"})
    assert secret != second and key.hash == digest(secret) and key.id != other.id
    assert key.limit is not None and key.limit.rate == 2.0 and key.limit.burst == 2
    assert presented(b"x-api-key", b" k1 ") == b"k1"
    assert presented(b"authorization", b"Bearer k2") == b"k2"
    assert presented(b"authorization", b"Basic k3") is None
    assert presented(b"host", b"Bearer k4") is None
    with pytest.raises(BadRequest):
        key_from_request({"TENANT": "acme", "ENDPOINT_LIMITS": {"x": {"RATE": 1, "EXTRA": 1}}})
    # A huge rate as text: its default burst stays within bounds (no 500).
    huge, _ = key_from_request({"TENANT": "acme", "RATE": "11231857438179798065469/day"})
    assert huge.limit is not None and huge.limit.burst == 10**9
    counted, _ = key_from_request({"TENANT": "acme", "MAX_CONCURRENT": 3.0, "RATE": 1,
                                   "BURST": 66.0})
    assert counted.max_concurrent == 3 and counted.limit is not None and counted.limit.burst == 66


def test_tenant_labels_are_the_top_n_by_requests_then_other():
    from prometheus_client import CollectorRegistry, Counter

    from basic_inference_server.tenants.metering import TENANT_FAMILIES, TopTenants

    def source(counts):
        """A registry of per-tenant counters, as one metrics folder holds them."""
        registry = CollectorRegistry()
        requests = Counter("bis_tenant_requests_total", "r", TENANT_FAMILIES[
            "bis_tenant_requests"][1], registry=registry)
        units = Counter("bis_tenant_units_total", "u", ["tenant", "endpoint"], registry=registry)
        Counter("bis_unrelated_total", "x", registry=registry).inc()
        for tenant, n in counts.items():
            requests.labels(tenant, "ep", "2xx").inc(n)
            units.labels(tenant, "ep").inc(10 * n)
        return registry

    # The front's folder and the endpoint workers' (jobs) are merged before ranking:
    # "late" came last but has the most requests in all; "t0", the first seen, is not kept.
    front = source({"t0": 3, "t1": 2, "t2": 1})
    jobs = source({"late": 5, "t2": 3})
    families = {f.name: f for f in TopTenants(front, jobs, top=2).collect()}
    requests = {s.labels["tenant"]: s.value for s in families["bis_tenant_requests"].samples}
    assert requests == {"late": 5, "t2": 4, "other": 5}
    units = {s.labels["tenant"]: s.value for s in families["bis_tenant_units"].samples}
    assert units == {"late": 50, "t2": 40, "other": 50}
    assert "bis_unrelated" in families
    # Ties: by name, so the labels do not flap between scrapes.
    tied = TopTenants(source({"b": 1, "a": 1, "c": 1}), top=1).collect()
    assert {s.labels["tenant"] for f in tied if f.name == "bis_tenant_requests"
            for s in f.samples} == {"a", "other"}
