"""A live gateway for the client tests, started with a known admin token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from basic_inference_server.client import Client
from tests import conftest
from tests.conftest import Gateway, GatewayPool, gateway_env

# The token tests/conftest.py gives every gateway where it does (its helpers send it).
TOKEN = getattr(conftest, "ADMIN_TOKEN", "test-admin-token-0123456789")
ENDPOINTS = {
    "echo": {},
    "slow": {"TIMEOUT": 0.5},
}


def token_env() -> dict[str, str]:
    return gateway_env(BIS_ADMIN_TOKEN=TOKEN)


@pytest.fixture(scope="module")
def live(module_gateways: GatewayPool) -> Gateway:
    """A gateway shared by a module's tests that leave its endpoints as they found them."""
    return module_gateways({"CONFIG_ENDPOINTS": ENDPOINTS}, env=token_env())


@pytest.fixture
def client(live: Gateway) -> Iterator[Client]:
    with Client(live.base, admin_token=TOKEN) as bis:
        yield bis
