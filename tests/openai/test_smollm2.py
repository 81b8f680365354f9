"""The demo chat endpoint (endpoints/chat.py): SmolLM2-135M-Instruct from its GGUF
file, behind the OpenAI routes, its sequences batched continuously. One gateway for the
module (the model takes about 30 s to load)."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.conftest import ROOT, Gateway

pytestmark = pytest.mark.slow
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gw(module_gateways, tmp_path_factory) -> Gateway:
    endpoints = tmp_path_factory.mktemp("endpoints")
    shutil.copy(ROOT / "endpoints" / "chat.py", endpoints)
    return module_gateways({"CONFIG_ENDPOINTS": {"chat": {"NR_WORKERS": 1, "LOAD_TIMEOUT": 300}}},
                           endpoints=endpoints, timeout=300)


@pytest.fixture(scope="module")
def client(gw: Gateway):
    with openai.OpenAI(base_url=gw.url("/v1"), api_key="unused", max_retries=0, timeout=120) as made:
        yield made


def stream_tokens(client, max_tokens: int) -> tuple[int, float]:
    """A streamed chat that generates ``max_tokens`` tokens: its count, and when it ended."""
    chunks = list(client.chat.completions.create(
        model="chat", messages=CAPITAL, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    return chunks[-1].usage.completion_tokens, time.monotonic()


def test_it_knows_the_capital_of_france(client):
    done = client.chat.completions.create(model="chat", messages=CAPITAL, temperature=0)
    assert "Paris" in done.choices[0].message.content
    assert done.choices[0].finish_reason == "stop"
    assert done.usage.prompt_tokens > 10 and 0 < done.usage.completion_tokens < 30


def test_the_stream_says_what_the_whole_answer_says(client):
    whole = client.chat.completions.create(model="chat", messages=CAPITAL, temperature=0,
                                           max_tokens=12)
    chunks = list(client.chat.completions.create(model="chat", messages=CAPITAL, temperature=0,
                                                 max_tokens=12, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        whole.choices[0].message.content


def test_a_seed_repeats_a_sampled_answer(client):
    def sampled(seed: int) -> str:
        return client.completions.create(model="chat", prompt="Once upon a time", max_tokens=16,
                                         temperature=1.0, seed=seed).choices[0].text
    assert sampled(3) == sampled(3)


def decode_counts(gw: Gateway) -> tuple[float, float]:
    """The chat endpoint's decode steps so far, and the tokens they made (its metrics)."""
    found = {}
    for line in gw.get("/metrics").text.splitlines():
        name, _, rest = line.partition("{")
        if name in ("bis_decode_steps_total", "bis_decode_tokens_total") \
                and 'endpoint="chat"' in rest:
            found[name] = float(line.split()[-1])
    return found.get("bis_decode_steps_total", 0.0), found.get("bis_decode_tokens_total", 0.0)


def test_eight_streams_decode_together(gw, client):
    # Counted, not timed: how much faster eight streams go than one depends on the cores
    # the box leaves the model (3x and more on a quiet 2-core machine:
    # bench/bench_generation.py), how many steps their tokens took does not.
    before = decode_counts(gw)
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda _: stream_tokens(client, 24), range(8)))
    assert [t for t, _ in done] == [24] * 8
    steps, tokens = (after - was for after, was in zip(decode_counts(gw), before, strict=True))
    assert tokens == 8 * 24
    # One stream after another would take 192 steps; together, about 24 (a late
    # request joins at the next step).
    assert steps <= 8 * 24 / 4, f"{tokens:g} tokens in {steps:g} steps"


def test_ten_tokens_sent_during_two_hundred_finish_first(client):
    began = threading.Event()
    long_end: list[tuple[int, float]] = []

    def long_one() -> None:
        chunks = []
        for chunk in client.chat.completions.create(
                model="chat", messages=CAPITAL, max_tokens=200, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True}):
            chunks.append(chunk)
            began.set()
        long_end.append((chunks[-1].usage.completion_tokens, time.monotonic()))

    runner = threading.Thread(target=long_one)
    runner.start()
    try:
        assert began.wait(120)
        short_tokens, short_end = stream_tokens(client, 10)
    finally:
        runner.join(timeout=300)
    assert short_tokens == 10 and long_end[0][0] == 200
    assert short_end < long_end[0][1]


def test_sequences_joining_and_leaving_the_batch_get_their_answers_alone(client):
    # Each one joins after the one before sent its first token, and they end at different
    # steps: rows join a batch with a longer cache (left-padded), and leave from the middle.
    asks = [("Tell me about the sea.", 40), ("Name a colour.", 6),
            ("Write a poem about trees.", 30), ("What is two plus two?", 12)]

    def chat(prompt: str, max_tokens: int, started: threading.Event | None = None) -> str:
        text = []
        for chunk in client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": prompt}], temperature=0,
                max_tokens=max_tokens, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
                if started is not None:
                    started.set()
        if started is not None:
            started.set()
        return "".join(text)

    alone = [chat(prompt, n) for prompt, n in asks]
    with ThreadPoolExecutor(len(asks)) as pool:
        futures = []
        for prompt, n in asks:
            started = threading.Event()
            futures.append(pool.submit(chat, prompt, n, started))
            assert started.wait(120)
        together = [f.result(timeout=300) for f in futures]
    assert together == alone
