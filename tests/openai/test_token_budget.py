"""Token budgets (tenants/token_budget.py): a key's token bucket and TOKENS quota,
reserved at admission on the OpenAI routes and settled with what the answer used.

The bucket is hammered through two gateways sharing one Redis: what is admitted in any
window stays within the bucket, what is used within what was admitted, and every
refusal is a 429 with Retry-After.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from basic_inference_server.tenants.token_budget import prompt_bound
from tests.conftest import Gateway, wait_until
from tests.openai.conftest import openai_gateway
from tests.tenants.conftest import call, make_key

PROMPT = "one two three four five six seven eight"  # 8 tokens of toy_llm, 39 bytes
MAX_TOKENS = 8
# What a chat of PROMPT reserves: its bound, plus max_tokens.
RESERVED = prompt_bound([PROMPT], 1) + MAX_TOKENS


def chat(gw: Gateway, key: str, http: httpx.Client | None = None, **extra) -> httpx.Response:
    body = {"model": "toy_llm", "temperature": 0, "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": PROMPT}], **extra}
    return (http or httpx).post(gw.url("/v1/chat/completions"), json=body, timeout=30,
                                headers={"Authorization": f"Bearer {key}"})


@pytest.fixture(scope="module")
def pair(module_gateways, tmp_path_factory, redis_url) -> tuple[Gateway, Gateway]:
    """Two gateways, one Redis: the same keys and the same buckets."""
    shared = {"TENANTS_REDIS": f"{redis_url}?prefix=bis-budget-{os.urandom(4).hex()}"}
    return (openai_gateway(module_gateways, Path(tmp_path_factory.mktemp("a")), **shared),
            openai_gateway(module_gateways, Path(tmp_path_factory.mktemp("b")), **shared))


def test_the_bucket_admits_what_it_holds_across_two_gateways(pair):
    rate_per_minute, burst = 1200, 4 * RESERVED
    key = make_key(pair[0], TOKEN_RATE=f"{rate_per_minute}/minute", TOKEN_BURST=burst)["KEY"]
    admitted: list[tuple[float, int]] = []  # (when, tokens used)
    refused: list[httpx.Response] = []
    lock = threading.Lock()
    began = time.monotonic()
    deadline = began + 6

    def client(gw: Gateway) -> None:
        with httpx.Client() as http:
            while time.monotonic() < deadline:
                resp = chat(gw, key, http)
                with lock:
                    if resp.status_code == 200:
                        admitted.append((time.monotonic(), resp.json()["usage"]["total_tokens"]))
                    else:
                        refused.append(resp)

    threads = [threading.Thread(target=client, args=(pair[i % 2],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    assert admitted and refused
    # Reserved at admission: at most the burst and what refilled meanwhile.
    assert len(admitted) * RESERVED <= burst + elapsed * rate_per_minute / 60
    assert all(used <= RESERVED for _, used in admitted), "used within what was admitted"
    for resp in refused:
        assert resp.status_code == 429, resp.text
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.json()["error"]["code"] == "token_rate_limited"


def test_a_tokens_quota_is_never_overspent_and_gets_back_what_was_not_used(pair):
    quota = 10 * RESERVED
    key = make_key(pair[0], QUOTA={"TOKENS": quota, "PER": "day"})["KEY"]
    used, answered = 0, 0
    while True:
        resp = chat(pair[answered % 2], key)
        if resp.status_code != 200:
            break
        used += resp.json()["usage"]["total_tokens"]
        answered += 1
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "quota_exceeded"
    assert used <= quota
    # 8 + 8 tokens used of each reservation's RESERVED: the rest came back.
    assert answered > quota // RESERVED
    spent = httpx.get(pair[1].url("/usage"), headers={"Authorization": f"Bearer {key}"}).json()
    assert spent["USAGE"]["UNIT"] == "tokens" and spent["USAGE"]["SPENT"] == used


def test_a_request_larger_than_the_burst_is_400(pair):
    key = make_key(pair[0], TOKEN_RATE="100/minute", TOKEN_BURST=RESERVED - 1)["KEY"]
    resp = chat(pair[0], key)
    assert resp.status_code == 400 and "TOKEN_BURST" in resp.json()["error"]["message"]


def test_a_key_with_a_token_budget_is_for_the_openai_routes(pair):
    key = make_key(pair[0], TOKEN_RATE="6000/minute", TOKEN_BURST=5000)["KEY"]
    resp = call(pair[0], key, "toy_llm", PROMPT="a b")
    assert resp.status_code == 403 and "OpenAI routes" in resp.json()["ERROR"]
    assert chat(pair[0], key).status_code == 200


def test_tokens_are_metered_per_tenant(pair):
    key = make_key(pair[0], TENANT="metered")["KEY"]
    assert chat(pair[0], key).status_code == 200

    def counts() -> dict[str, float] | None:
        # Named once the tenant's requests are metered (the top tenants keep their name).
        lines = [ln for ln in pair[0].get("/metrics").text.splitlines()
                 if ln.startswith("bis_tenant_tokens_total{") and 'tenant="metered"' in ln]
        found = {("prompt" if 'kind="prompt"' in ln else "completion"): float(ln.split()[-1])
                 for ln in lines}
        return found if len(found) == 2 else None

    assert wait_until(counts, timeout=20, message="the tokens metered") == \
        {"prompt": 8.0, "completion": 8.0}
