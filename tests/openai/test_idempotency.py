"""Idempotency-Key on the OpenAI routes (gateway/idempotent_calls.py): a repeat gets the
first call's answer without running again; another request with the key is a 409."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Gateway
from tests.openai.conftest import openai_gateway
from tests.tenants.conftest import make_key

SAMPLED = {"model": "toy_llm", "temperature": 1, "max_tokens": 12,
           "messages": [{"role": "user", "content": "one two three four five six"}]}


@pytest.fixture(scope="module")
def gw(module_gateways, tmp_path_factory) -> Gateway:
    return openai_gateway(module_gateways, tmp_path_factory.mktemp("endpoints"))


def post(gw: Gateway, key: str, body: dict, idem: str | None, path: str = "/v1/chat/completions"):
    headers = {"Authorization": f"Bearer {key}"}
    if idem is not None:
        headers["Idempotency-Key"] = idem
    return httpx.post(gw.url(path), json=body, headers=headers, timeout=30)


def test_a_repeat_gets_the_first_answer(gw):
    key = make_key(gw)["KEY"]
    first = post(gw, key, SAMPLED, "k-1")
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    again = post(gw, key, SAMPLED, "k-1")
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json(), "the same answer: the same id, the same sample"
    fresh = post(gw, key, SAMPLED, "k-2")
    assert fresh.json()["id"] != first.json()["id"]


def test_another_request_with_the_key_is_409(gw):
    key = make_key(gw)["KEY"]
    assert post(gw, key, SAMPLED, "k-3").status_code == 200
    other = post(gw, key, {**SAMPLED, "max_tokens": 3}, "k-3")
    assert other.status_code == 409 and other.json()["error"]["type"] == "conflict_error"


def test_keys_are_per_tenant(gw):
    mine, theirs = make_key(gw, TENANT="one")["KEY"], make_key(gw, TENANT="two")["KEY"]
    first = post(gw, mine, SAMPLED, "shared")
    second = post(gw, theirs, SAMPLED, "shared")
    assert "idempotent-replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]


def test_a_failed_call_is_not_kept(gw):
    key = make_key(gw)["KEY"]
    refused = {**SAMPLED, "max_tokens": 10 ** 6}
    assert post(gw, key, refused, "k-4").status_code == 400
    again = post(gw, key, refused, "k-4")
    assert again.status_code == 400 and "idempotent-replayed" not in again.headers


def test_a_stream_runs_each_time_and_a_bad_key_is_400(gw):
    key = make_key(gw)["KEY"]
    for _ in range(2):
        streamed = post(gw, key, {**SAMPLED, "stream": True}, "k-5")
        assert streamed.status_code == 200 and "idempotent-replayed" not in streamed.headers
        assert streamed.text.endswith("data: [DONE]\n\n")
    assert post(gw, key, SAMPLED, "x" * 256).status_code == 400


def test_embeddings_take_a_key_too(gw):
    key = make_key(gw)["KEY"]
    body = {"model": "echo", "input": "hello"}
    first = post(gw, key, body, "k-6", "/v1/embeddings")
    assert first.status_code == 502, "echo has no embeddings: not kept"
    assert "idempotent-replayed" not in post(gw, key, body, "k-6", "/v1/embeddings").headers
