"""``/metrics`` names tenants and their usage: it takes the admin token or the scrape
token (``METRICS_TOKEN``, also as an ``env:``/``file:`` reference), which opens nothing
else; without either it is a 401 that names no tenant. ``METRICS_TENANT_LABELS`` false
sums the per-tenant counters over tenants.
"""

from __future__ import annotations

import uuid
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from basic_inference_server.config import parse_config
from basic_inference_server.errors import ConfigError
from tests.conftest import Gateway, assert_error, assert_ok, gateway_env, wait_until

TENANT = "m6-tenant-" + uuid.uuid4().hex[:8]
SCRAPE = "scrape-" + uuid.uuid4().hex
SCRAPE_VAR = "M6_SCRAPE_TOKEN"


def config(**extra: Any) -> dict[str, Any]:
    return {"API_KEYS": True, "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}, **extra}


def tenant_series(text: str) -> list[dict[str, str]]:
    """The label sets of ``bis_tenant_requests_total`` in a scrape."""
    return [s.labels for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "bis_tenant_requests_total"]


def serve_a_tenant(gw: Gateway) -> str:
    """One /run with a key of TENANT; the scrape (admin token) once it is counted."""
    resp = gw.post("/keys", {"TENANT": TENANT})
    assert resp.status_code == 201, resp.text
    key = resp.json()["KEY"]
    assert_ok(gw.post("/run", {"SIGNATURE": "echo"}, token=key))
    return str(wait_until(lambda: (text := gw.get("/metrics").text)
                          and any(s.get("endpoint") == "echo" for s in tenant_series(text))
                          and text, timeout=30, message="the tenant's request is in /metrics"))


def test_an_anonymous_scrape_is_401_and_names_no_tenant(gateways):
    gw = gateways(config())
    assert TENANT in serve_a_tenant(gw)
    for token in (None, "wrong", ""):
        resp = gw.get("/metrics", token=token)
        body = assert_error(resp, 401)
        assert body["ERROR_TYPE"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert TENANT not in resp.text and "bis_" not in resp.text


@pytest.mark.parametrize("how", ["value", "env", "file"])
def test_the_scrape_token_reads_metrics_and_nothing_else(gateways, tmp_path, how):
    env = gateway_env(**{SCRAPE_VAR: SCRAPE})
    secret = tmp_path / "metrics_token"
    secret.write_text(SCRAPE + "\n")
    setting = {"value": SCRAPE, "env": f"env:{SCRAPE_VAR}", "file": f"file:{secret}"}[how]
    gw = gateways(config(METRICS_TOKEN=setting), env=env)
    serve_a_tenant(gw)
    resp = gw.get("/metrics", token=SCRAPE)
    assert resp.status_code == 200 and TENANT in resp.text
    for path in ("/list_servers", "/usage/tenants", "/keys", "/system_status"):
        assert_error(gw.get(path, token=SCRAPE), 401)
    assert_error(gw.post("/kill_server", {"SIGNATURE": "echo"}, token=SCRAPE), 401)
    assert gw.state("echo") == "READY"
    assert gw.get("/metrics").status_code == 200  # the admin token reads it too
    if how != "value":
        # A reference keeps the token off every command line and out of the log.
        for proc in gw.tree():
            try:
                assert SCRAPE not in " ".join(proc.cmdline())
            except psutil.Error:
                pass
        assert SCRAPE not in gw.log_text()


def test_tenant_labels_off_name_no_tenant(gateways):
    gw = gateways(config(METRICS_TENANT_LABELS=False))
    text = serve_a_tenant(gw)
    series = tenant_series(text)
    assert series and all("tenant" not in labels for labels in series), series
    assert TENANT not in text
    # Metering itself still counts per tenant, for the admin API.
    rows = wait_until(lambda: assert_ok(gw.get("/usage/tenants"))["ROWS"], timeout=20,
                      message="the metering batch is written")
    assert {r["TENANT"] for r in rows} == {TENANT}


@pytest.mark.parametrize("value", ["has space", "x" * 1025])
def test_a_bad_scrape_token_stops_the_start_without_repeating_it(value):
    with pytest.raises(ConfigError) as info:
        parse_config({"METRICS_TOKEN": value})
    assert "METRICS_TOKEN" in str(info.value) and value not in str(info.value)


def test_a_scrape_token_reference_must_resolve():
    with pytest.raises(ConfigError, match="M6_NOT_SET_ANYWHERE"):
        parse_config({"METRICS_TOKEN": "env:M6_NOT_SET_ANYWHERE"})
