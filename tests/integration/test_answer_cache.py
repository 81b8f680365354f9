"""The answer cache (gateway/answer_cache.py): an endpoint's CACHE answers a repeated
request from the front's memory, or from Redis (CACHE_REDIS), per tenant, within its TTL
and bounds; streams, sampled generations and errors are never kept. Every test runs
against both stores."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.conftest import Gateway, wait_until
from tests.openai.conftest import openai_endpoints
from tests.tenants.conftest import call, make_key, ready


@pytest.fixture(scope="module", params=["memory", "redis"])
def gw(request, module_gateways, tmp_path_factory) -> Gateway:
    shared = {}
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        shared = {"CACHE_REDIS": f"{url}?prefix=bis-test-{os.urandom(4).hex()}"}
    return ready(module_gateways({
        **shared, "API_KEYS": True, "GATEWAY_WORKERS": 1, "CONFIG_ENDPOINTS": {
            "echo": {"SERVER_CLASS": "echo", "NR_WORKERS": 1, "CACHE": {"TTL": 60, "MAX_ENTRIES": 3}},
            "short": {"SERVER_CLASS": "echo", "NR_WORKERS": 1, "CACHE": {"TTL": 1}},
            "plain": {"SERVER_CLASS": "echo", "NR_WORKERS": 1},
            "toy_llm": {"NR_WORKERS": 1, "CACHE": {}}}},
        endpoints=openai_endpoints(tmp_path_factory.mktemp("endpoints"))))


@pytest.fixture(scope="module")
def keys(gw: Gateway) -> tuple[str, str]:
    return make_key(gw, TENANT="acme")["KEY"], make_key(gw, TENANT="globex")["KEY"]


def runs(gw: Gateway, key: str, signature: str = "echo", **fields) -> int:
    """The endpoint's call counter in its answer (one worker: one counter)."""
    resp = call(gw, key, signature, **fields)
    assert resp.status_code == 200, resp.text
    return int(resp.json()["call_id"])


def cache_count(gw: Gateway, endpoint: str, outcome: str) -> float:
    for line in gw.get("/metrics").text.splitlines():
        if line.startswith("bis_answer_cache_total{") and f'endpoint="{endpoint}"' in line \
                and f'outcome="{outcome}"' in line:
            return float(line.split()[-1])
    return 0.0


def test_a_repeated_request_is_answered_without_the_endpoint(gw, keys):
    acme, globex = keys
    first = runs(gw, acme, INPUT_VALUE="repeat me")
    assert [runs(gw, acme, INPUT_VALUE="repeat me") for _ in range(5)] == [first] * 5
    assert runs(gw, acme, INPUT_VALUE="something else") == first + 1, "the endpoint ran once more"
    assert cache_count(gw, "echo", "hit") >= 5


def test_tenants_never_share_an_entry(gw, keys):
    acme, globex = keys
    mine = runs(gw, acme, INPUT_VALUE="shared words")
    theirs = runs(gw, globex, INPUT_VALUE="shared words")
    assert theirs == mine + 1, "another tenant's identical request is a miss"
    assert runs(gw, globex, INPUT_VALUE="shared words") == theirs


def test_entries_expire_after_their_ttl(gw, keys):
    first = runs(gw, keys[0], "short", INPUT_VALUE="soon stale")
    assert runs(gw, keys[0], "short", INPUT_VALUE="soon stale") == first
    wait_until(lambda: runs(gw, keys[0], "short", INPUT_VALUE="soon stale") != first, timeout=10,
               message="the entry expired")


def test_the_least_recently_used_goes_past_max_entries(gw, keys):
    ids = {v: runs(gw, keys[0], INPUT_VALUE=v) for v in ("a1", "a2", "a3")}
    assert runs(gw, keys[0], INPUT_VALUE="a1") == ids["a1"], "kept: 3 entries at most"
    runs(gw, keys[0], INPUT_VALUE="a4")  # a2 is now the least recently used: it goes
    assert runs(gw, keys[0], INPUT_VALUE="a1") == ids["a1"]
    assert runs(gw, keys[0], INPUT_VALUE="a2") > ids["a3"], "a2 was dropped: the endpoint ran"


def test_an_endpoint_without_cache_runs_every_time(gw, keys):
    first = runs(gw, keys[0], "plain", INPUT_VALUE="x")
    assert runs(gw, keys[0], "plain", INPUT_VALUE="x") == first + 1


def test_a_request_asking_for_a_stream_is_not_kept(gw, keys):
    acme = keys[0]
    body = {"SIGNATURE": "echo", "INPUT_VALUE": "asked as a stream"}
    headers = {"Authorization": f"Bearer {acme}", "Accept": "text/event-stream"}
    skipped = cache_count(gw, "echo", "skipped")
    httpx.post(gw.url("/run"), json=body, headers=headers, timeout=30)
    assert cache_count(gw, "echo", "skipped") == skipped + 1


def openai_chat(gw: Gateway, key: str, temperature: float) -> httpx.Response:
    return httpx.post(gw.url("/v1/chat/completions"), timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "toy_llm", "temperature": temperature,
                            "messages": [{"role": "user", "content": "cache this answer"}]})


def test_a_deterministic_generation_is_kept_a_sampled_one_is_not(gw, keys):
    acme = keys[0]
    hits = cache_count(gw, "toy_llm", "hit")
    answers = [openai_chat(gw, acme, 0).json() for _ in range(3)]
    assert {a["choices"][0]["message"]["content"] for a in answers} == {"cache this answer"}
    assert all(a["usage"]["total_tokens"] == 6 for a in answers)
    assert cache_count(gw, "toy_llm", "hit") == hits + 2
    skipped = cache_count(gw, "toy_llm", "skipped")
    openai_chat(gw, acme, 1)
    assert cache_count(gw, "toy_llm", "skipped") == skipped + 1
