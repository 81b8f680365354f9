"""Async jobs of tenants: run with their tenant, units charged and metered when they run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psutil
import pytest
import redis
import requests

from basic_inference_server.procutil import free_port
from tests.conftest import FIXTURE_ENDPOINTS, assert_error, assert_ok, wait_until, with_test_defaults
from tests.services import Service
from tests.tenants.conftest import POOL, call, keyed_config, make_key, ready, store_overlay

HERE = Path(__file__).parent


def endpoints_with_metered(tmp_path: Path) -> Path:
    endpoints = tmp_path / "endpoints"
    shutil.copytree(FIXTURE_ENDPOINTS, endpoints, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(HERE / "endpoints" / "metered.py", endpoints / "metered.py")
    return endpoints


def submit(gw, key: str | None, signature: str, **fields) -> str:
    resp = call(gw, key, signature, ASYNC=True, **fields)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["JOB_ID"])


def finished(gw, key: str | None, job: str) -> dict:
    headers = {"X-API-Key": key} if key else {}

    def read():
        record = requests.get(gw.url(f"/jobs/{job}"), headers=headers, timeout=10).json()
        return record if record.get("STATUS") in ("done", "failed", "dead") else None

    return dict(wait_until(read, timeout=30, message=f"job {job} finished"))


# With VERSIONS, the job runner runs the jobs (through the front), not the servers.
@pytest.mark.parametrize(("store", "versions"), [("sqlite", False), ("redis", False),
                                                 ("sqlite", True)])
def test_job_units_are_charged_and_metered_when_the_job_runs(store, versions, gateways,
                                                             tmp_path, request):
    extra = store_overlay(store, request)
    section = {"SERVER_CLASS": "metered"}
    if versions:
        section.update(VERSIONS={"v1": {}, "v2": {}}, TRAFFIC={"v1": 50, "v2": 50})
    config = keyed_config(CONFIG_ENDPOINTS={"metered": section}, **extra)
    gw = ready(gateways(with_test_defaults(config), endpoints=endpoints_with_metered(tmp_path)))
    key = make_key(gw, QUOTA={"UNITS": 10, "PER": "day"})["KEY"]
    jobs = [submit(gw, key, "metered", n=4) for _ in range(3)]
    for job in jobs:
        record = finished(gw, key, job)
        assert record["STATUS"] == "done" and record["RESULT"]["done"] is True
        assert "USAGE" not in record["RESULT"]  # stripped, as from an answer

    def spent():
        seen = assert_ok(requests.get(gw.url("/usage"), headers={"X-API-Key": key}, timeout=10))
        return seen["USAGE"]["SPENT"]

    # 4 + 4 + 4: charged when each job ran; the third crossed 10 and is charged in full.
    wait_until(lambda: spent() == 12, timeout=10, message="the jobs' units are charged")
    body = assert_error(call(gw, key, "metered", ASYNC=True, n=1), 429)
    assert body["ERROR_TYPE"] == "quota_exceeded" and body["SPENT"] == 12
    assert_error(call(gw, key, "metered", n=1), 429)  # the same quota as /run's

    def metered():
        rows = assert_ok(gw.get("/usage/tenants"))["ROWS"]
        row = next((r for r in rows if (r["TENANT"], r["ENDPOINT"]) == ("acme", "metered")), None)
        return row if row and row["REQUESTS"] == 4 else None

    # The 3 jobs, metered by the worker that ran them, and the refused /run, by the front.
    row = wait_until(metered, timeout=20, message="the jobs are metered")
    assert row["UNITS"] == 12 and row["ERRORS"] == 1 and row["LATENCY_MS_AVG"] > 0
    text = gw.get("/metrics").text
    assert 'bis_tenant_units_total{endpoint="metered",tenant="acme"} 12.0' in text


def test_jobs_run_with_their_tenant(gateways):
    # With keys: the key's tenant, so CUSTOMER_MODELS load the tenant's models for jobs too.
    gw = ready(gateways(keyed_config(CONFIG_ENDPOINTS={
        "pool": POOL, "bad_pre": {"SERVER_CLASS": "bad_pre"}})))
    globex = make_key(gw, TENANT="globex")["KEY"]
    acme = make_key(gw, TENANT="acme")["KEY"]
    # (acme's first: a worker keeps the models it loaded)
    assert finished(gw, acme, submit(gw, acme, "pool"))["RESULT"]["loaded"] == ["base"]
    assert finished(gw, globex, submit(gw, globex, "pool"))["RESULT"]["loaded"] == \
        ["base", "globex_model"]
    # A job the endpoint refuses counts as an error of its tenant.
    assert finished(gw, acme, submit(gw, acme, "bad_pre"))["STATUS"] == "failed"

    def rows():
        got = {(r["TENANT"], r["ENDPOINT"]): r for r in assert_ok(gw.get("/usage/tenants"))["ROWS"]}
        return got if sum(r["REQUESTS"] for r in got.values()) == 3 else None

    got = wait_until(rows, timeout=20, message="the jobs are metered")
    assert got[("globex", "pool")]["REQUESTS"] == 1 and got[("globex", "pool")]["ERRORS"] == 0
    assert got[("acme", "pool")]["REQUESTS"] == 1
    assert got[("acme", "bad_pre")]["ERRORS"] == 1


def test_without_keys_jobs_run_with_the_client_customer(gateways):
    gw = ready(gateways({"CONFIG_ENDPOINTS": {"pool": POOL}}))
    assert finished(gw, None, submit(gw, None, "pool"))["RESULT"]["loaded"] == ["base"]
    job = submit(gw, None, "pool", headers={"X-Customer-ID": "globex"})
    record = finished(gw, None, job)
    assert record["RESULT"]["loaded"] == ["base", "globex_model"] and "TENANT" not in record


def test_the_store_password_reaches_consumers_in_their_spec_only(gateways, tmp_path):
    """The consumer and the job runner charge through a Redis with a password, read from
    a file: no process of the tree has it on its command line or in its environment."""
    password = "pw-" + os.urandom(8).hex()
    port = free_port()
    (tmp_path / "redis").mkdir()
    service = Service("redis", tmp_path / "redis")
    service.spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--requirepass", password,
                   "--dir", str(tmp_path / "redis")])
    url_file = tmp_path / "tenants_url"
    url_file.write_text(f"redis://:{password}@127.0.0.1:{port}/0\n")
    try:
        direct = redis.Redis.from_url(url_file.read_text().strip())
        service.wait_ready(direct.ping, timeout=30)
        # The versioned endpoint's jobs are the job runner's.
        config = keyed_config(CONFIG_ENDPOINTS={
            "metered": {"SERVER_CLASS": "metered"},
            "versioned": {"SERVER_CLASS": "metered", "VERSIONS": {"v1": {}}}},
            TENANTS_REDIS=f"file:{url_file}")
        gw = ready(gateways(with_test_defaults(config),
                            endpoints=endpoints_with_metered(tmp_path)))
        key = make_key(gw, QUOTA={"UNITS": 100, "PER": "day"})["KEY"]
        assert finished(gw, key, submit(gw, key, "metered", n=5))["STATUS"] == "done"
        assert finished(gw, key, submit(gw, key, "versioned", n=2))["STATUS"] == "done"

        def spent():
            seen = assert_ok(requests.get(gw.url("/usage"), headers={"X-API-Key": key},
                                          timeout=10))
            return seen["USAGE"]["SPENT"] == 7

        wait_until(spent, timeout=10, message="the job's units are charged in Redis")
        for proc in gw.tree():
            try:
                argv, env = " ".join(proc.cmdline()), proc.environ()
            except psutil.Error:
                continue
            assert password not in argv, argv
            assert not [k for k, v in env.items() if password in v], proc.pid
        direct.close()
    finally:
        service.stop()
