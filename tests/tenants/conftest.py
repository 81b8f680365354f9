"""Helpers of the tenant tests: gateways with API keys on, keys made through the admin API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import Gateway

# CUSTOMER_MODELS: the models an endpoint loads for a customer (the X-Customer-ID it gets).
POOL = {"SERVER_CLASS": "model_pool", "NR_WORKERS": 1,
        "MODELS": {"base": {"units": 4}, "globex_model": {"units": 4}},
        "REQUIRED_MODELS": ["base"], "CUSTOMER_MODELS": {"globex": ["globex_model"]}}


def store_overlay(store: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings that put the tenants store on ``store`` ("sqlite": the default, or
    "redis": the session's Redis under a prefix of its own)."""
    if store != "redis":
        return {}
    url = request.getfixturevalue("redis_url")
    return {"TENANTS_REDIS": f"{url}?prefix=bis-test-{os.urandom(4).hex()}"}


def keyed_config(**extra: Any) -> dict[str, Any]:
    return {"API_KEYS": True, "GATEWAY_WORKERS": 2,
            "CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "echo"}, "pool": POOL}, **extra}


def ready(gw: Gateway) -> Gateway:
    """Once every configured endpoint is READY."""
    gw.wait_ready(60)
    for name in gw.servers()["SERVERS"]:
        gw.wait_state(name, "READY", timeout=60)
    return gw


def make_key(gw: Gateway, **fields: Any) -> dict[str, Any]:
    resp = gw.post("/keys", {"TENANT": "acme", **fields})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def call(gw: Gateway, key: str | None, signature: str = "echo", *, header: str = "bearer",
         session: requests.Session | None = None, **extra: Any) -> requests.Response:
    """``POST /run`` with the key (a new connection unless ``session``); no admin token."""
    headers = extra.pop("headers", {})
    if key is not None:
        headers.update({"Authorization": f"Bearer {key}"} if header == "bearer"
                       else {"X-API-Key": key})
    http = session or requests
    return http.post(gw.url("/run"), json={"SIGNATURE": signature, **extra}, headers=headers,
                     timeout=30)


@pytest.fixture
def pg_dsn(postgres_url: str) -> Iterator[str]:
    """A database of the test's own on the session's PostgreSQL; dropped after."""
    from tests.services import create_database, drop_database

    url = create_database(postgres_url)
    yield url
    drop_database(url)
