"""The official ``openai`` package, unchanged, against a live gateway's /v1 routes.

Each test is one case of the conformance list (chat, streams, usage, completions, the
model list, errors with their statuses and types, the async client); the same cases
run against a peer's OpenAI server in bench/openai_conformance_peer.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.tenants.conftest import make_key

HELLO = [{"role": "user", "content": "the quick brown fox jumps"}]


@pytest.fixture(scope="module")
def client(gw: Gateway, key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.url("/v1"), api_key=key, max_retries=0, timeout=30) as made:
        yield made


@pytest.fixture
def aclient(gw: Gateway, key: str) -> Callable[[], openai.AsyncOpenAI]:
    """A client per call of a test: each ``asyncio.run`` has its own loop."""
    return lambda: openai.AsyncOpenAI(base_url=gw.url("/v1"), api_key=key, max_retries=0,
                                      timeout=30)


def chat(client: openai.OpenAI, **kw):
    return client.chat.completions.create(model=kw.pop("model", "toy_llm"),
                                          messages=kw.pop("messages", HELLO), **kw)


# -- chat --------------------------------------------------------------------------------
def test_chat_answers_the_prompt_with_usage(client):
    done = chat(client, temperature=0)
    assert done.object == "chat.completion" and done.model == "toy_llm"
    assert done.id.startswith("chatcmpl-")
    assert len(done.choices) == 1
    choice = done.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "the quick brown fox jumps"
    assert choice.finish_reason == "stop"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (5, 5, 10)


def test_max_tokens_ends_with_length(client):
    done = chat(client, temperature=0, max_tokens=2)
    assert done.choices[0].message.content == "the quick"
    assert done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 2


def test_max_completion_tokens_is_taken_too(client):
    done = chat(client, temperature=0, max_completion_tokens=3)
    assert done.choices[0].message.content == "the quick brown"
    assert done.choices[0].finish_reason == "length"


def test_every_message_counts_in_the_prompt(client):
    messages = [{"role": "system", "content": "be brief"}, *HELLO]
    done = chat(client, messages=messages, temperature=0)
    assert done.usage.prompt_tokens == 8, "2 + 5 words, one token between the messages"
    assert done.choices[0].message.content == "the quick brown fox jumps", "the last message"


def test_content_parts_are_joined(client):
    messages = [{"role": "user", "content": [{"type": "text", "text": "one two "},
                                             {"type": "text", "text": "three"}]}]
    assert chat(client, messages=messages, temperature=0).choices[0].message.content == "one two three"


def test_stop_sequence_ends_the_answer(client):
    done = chat(client, temperature=0, stop=["fox"])
    assert done.choices[0].message.content == "the quick brown ", "what came before the stop"
    assert done.choices[0].finish_reason == "stop"


def test_seed_repeats_a_sampled_answer(client):
    first = chat(client, temperature=1, seed=7, max_tokens=20, extra_body={"ignore_eos": True})
    again = chat(client, temperature=1, seed=7, max_tokens=20, extra_body={"ignore_eos": True})
    other = chat(client, temperature=1, seed=8, max_tokens=20, extra_body={"ignore_eos": True})
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    assert first.usage.completion_tokens == 20


def test_ignore_eos_generates_max_tokens(client):
    done = chat(client, temperature=0, max_tokens=12, extra_body={"ignore_eos": True})
    assert done.usage.completion_tokens == 12 and done.choices[0].finish_reason == "length"


def test_alias_names_the_endpoint(client):
    done = chat(client, model="toy", temperature=0)
    assert done.model == "toy" and done.choices[0].message.content == "the quick brown fox jumps"


def test_raw_answer_carries_the_request_id(client):
    raw = client.chat.completions.with_raw_response.create(model="toy_llm", messages=HELLO)
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.parse().id == "chatcmpl-" + raw.headers["x-request-id"]


# -- streams -----------------------------------------------------------------------------
def test_stream_deltas_make_the_answer(client):
    chunks = list(chat(client, temperature=0, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "the quick brown fox jumps"
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert all(c.usage is None for c in chunks), "no usage chunk unless asked"
    assert len({c.id for c in chunks}) == 1


def test_stream_chunks_hold_whole_tokens(client):
    """A reader that lags gets the tokens made meanwhile in one chunk, never part of one."""
    chunks = list(chat(client, temperature=0, stream=True, max_tokens=4))
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(contents) == "the quick brown fox"
    assert all(part.strip() and not part.endswith(" ") for part in contents), contents
    assert chunks[-1].choices[0].finish_reason == "length"


def test_include_usage_ends_with_a_usage_chunk(client):
    chunks = list(chat(client, temperature=0, stream=True,
                       stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (5, 5)
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_closed_early_is_fine_for_the_next_call(client):
    with chat(client, temperature=0, stream=True, max_tokens=200,
              extra_body={"ignore_eos": True}) as stream:
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
    assert chat(client, temperature=0).choices[0].message.content == "the quick brown fox jumps"


# -- completions and models ----------------------------------------------------------------
def test_completion_answers_text(client):
    done = client.completions.create(model="toy_llm", prompt="alpha beta gamma", temperature=0)
    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    assert done.choices[0].text == "alpha beta gamma"
    assert done.usage.prompt_tokens == 3 and done.usage.completion_tokens == 3


def test_completion_streams(client):
    chunks = list(client.completions.create(model="toy_llm", prompt="alpha beta gamma",
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "alpha beta gamma"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completion_stream_usage(client):
    chunks = list(client.completions.create(model="toy_llm", prompt="alpha beta", temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.total_tokens == 4 and chunks[-1].choices == []


def test_models_list_endpoints_and_aliases(client):
    ids = {m.id for m in client.models.list()}
    assert {"toy_llm", "toy", "echo"} <= ids


def test_models_list_only_what_a_key_may_call(gw):
    scoped = make_key(gw, ENDPOINTS=["toy_llm"])["KEY"]
    with openai.OpenAI(base_url=gw.url("/v1"), api_key=scoped, max_retries=0) as mine:
        assert {m.id for m in mine.models.list()} == {"toy_llm", "toy"}


# -- errors --------------------------------------------------------------------------------
def test_no_key_is_401(gw):
    with openai.OpenAI(base_url=gw.url("/v1"), api_key="unused", max_retries=0) as nobody:
        with pytest.raises(openai.AuthenticationError) as caught:
            nobody.chat.completions.create(model="toy_llm", messages=HELLO,
                                           extra_headers={"Authorization": openai.omit})
    assert caught.value.status_code == 401
    assert caught.value.body["type"] == "authentication_error"


def test_wrong_key_is_401(gw):
    with openai.OpenAI(base_url=gw.url("/v1"), api_key="bis_wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        chat(client, model="no-such-model")
    assert caught.value.code == "model_not_found"
    assert caught.value.body["param"] == "model"


def test_out_of_range_temperature_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, temperature=5)
    assert caught.value.body["param"] == "temperature"
    assert caught.value.body["type"] == "invalid_request_error"


def test_more_than_one_choice_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, n=2)
    assert caught.value.body["param"] == "n"


def test_no_messages_is_400(client):
    with pytest.raises(openai.BadRequestError):
        chat(client, messages=[])


def test_endpoint_refusal_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, max_tokens=10 ** 6)
    assert "MAX_TOKENS" in caught.value.message and caught.value.code == "bad_request"


def test_key_outside_its_scope_is_403(gw):
    echo_only = make_key(gw, ENDPOINTS=["echo"])["KEY"]
    with openai.OpenAI(base_url=gw.url("/v1"), api_key=echo_only, max_retries=0) as mine:
        with pytest.raises(openai.PermissionDeniedError):
            chat(mine)


def test_rate_limited_key_is_429_with_retry_after(gw):
    slow = make_key(gw, RATE="1/minute", BURST=1)["KEY"]
    with openai.OpenAI(base_url=gw.url("/v1"), api_key=slow, max_retries=0) as mine:
        chat(mine)
        with pytest.raises(openai.RateLimitError) as caught:
            chat(mine)
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.body["type"] == "rate_limit_error"


def test_endpoint_without_embeddings_is_502(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model="echo", input="hello")
    assert caught.value.status_code == 502


def test_get_on_a_post_route_is_405(gw, key):
    resp = httpx.get(gw.url("/v1/chat/completions"), headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    assert resp.json()["error"]["type"] == "invalid_request_error"


# -- the async client ------------------------------------------------------------------------
def test_async_chat(aclient):
    async def go():
        async with aclient() as ai:
            return await ai.chat.completions.create(model="toy_llm", messages=HELLO, temperature=0)
    assert asyncio.run(go()).choices[0].message.content == "the quick brown fox jumps"


def test_async_stream(aclient):
    async def go():
        async with aclient() as ai:
            stream = await ai.chat.completions.create(model="toy_llm", messages=HELLO,
                                                      temperature=0, stream=True)
            return [c async for c in stream]
    chunks = asyncio.run(go())
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "the quick brown fox jumps"


def test_async_calls_at_once(aclient):
    async def go():
        async with aclient() as ai:
            return await asyncio.gather(*[
                ai.completions.create(model="toy_llm", prompt=f"word{i} next", temperature=0)
                for i in range(8)])
    answers = asyncio.run(go())
    assert [a.choices[0].text for a in answers] == [f"word{i} next" for i in range(8)]


def test_async_errors(aclient):
    async def go():
        async with aclient() as ai:
            await ai.chat.completions.create(model="nope", messages=HELLO)
    with pytest.raises(openai.NotFoundError):
        asyncio.run(go())
