"""The OpenAI routes on an endpoint with versions: ``model`` names the endpoint (its
traffic policy chooses) or one version (``endpoint@label``), as SIGNATURE does on /run."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Gateway
from tests.openai.conftest import openai_endpoints
from tests.tenants.conftest import ready


@pytest.fixture(scope="module")
def gw(module_gateways, tmp_path_factory) -> Gateway:
    return ready(module_gateways({"CONFIG_ENDPOINTS": {"toy_llm": {
        "NR_WORKERS": 1, "VERSIONS": {"v1": {}, "v2": {}}, "TRAFFIC": {"v1": 100, "v2": 0}}}},
        endpoints=openai_endpoints(tmp_path_factory.mktemp("endpoints"))))


def chat(gw: Gateway, model: str) -> httpx.Response:
    return httpx.post(gw.url("/v1/chat/completions"), timeout=30, json={
        "model": model, "temperature": 0, "messages": [{"role": "user", "content": "hi there"}]})


def test_the_endpoint_follows_its_weights_and_a_version_is_named(gw):
    assert {chat(gw, "toy_llm").headers["x-endpoint-version"] for _ in range(5)} == {"v1"}
    pinned = chat(gw, "toy_llm@v2")
    assert pinned.status_code == 200 and pinned.headers["x-endpoint-version"] == "v2"
    assert pinned.json()["choices"][0]["message"]["content"] == "hi there"
    assert chat(gw, "toy_llm@v9").status_code == 404


def test_the_model_list_has_the_endpoint_and_its_versions(gw):
    ids = {m["id"] for m in httpx.get(gw.url("/v1/models")).json()["data"]}
    assert {"toy_llm", "toy_llm@v1", "toy_llm@v2"} <= ids
