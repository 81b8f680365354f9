"""Continuous batching through a live gateway: sequences join and leave the decode loop
between steps (basic_inference_server/generation/engine.py).

The endpoint is ``gen_steps`` (tests/fixtures/endpoints): each decode step takes 20 ms
whatever the batch, as on an accelerator, and every sequence's count of generated
tokens is logged on the server when it leaves the batch.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, wait_until
from tests.tenants.conftest import ready

STEP_MS = 20


@pytest.fixture(scope="module")
def log_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("steps") / "steps.jsonl"


@pytest.fixture(scope="module")
def gw(module_gateways, log_path) -> Gateway:
    return ready(module_gateways({"CONFIG_ENDPOINTS": {"gen": {
        "SERVER_CLASS": "gen_steps", "NR_WORKERS": 1, "STEP_DELAY_MS": STEP_MS,
        "STEPS_LOG": str(log_path), "MAX_SEQUENCES": 8}}}))


@pytest.fixture(scope="module")
def client(gw: Gateway):
    with openai.OpenAI(base_url=gw.url("/v1"), api_key="unused", max_retries=0, timeout=60) as made:
        yield made


def released(log_path: Path, max_tokens: int) -> dict[str, Any]:
    """The server's record of the sequence asked for ``max_tokens`` (each test its own)."""
    def found() -> dict[str, Any] | None:
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        return next((r for r in map(json.loads, lines) if r["max_tokens"] == max_tokens), None)
    wait_until(lambda: found() is not None, timeout=30, message=f"sequence {max_tokens} left")
    record = found()
    assert record is not None
    return record


def generate(client, max_tokens: int) -> tuple[int, float]:
    """A streamed completion of ``max_tokens`` tokens: its completion tokens, its end."""
    chunks = list(client.completions.create(model="gen", prompt="go", max_tokens=max_tokens,
                                            stream=True, stream_options={"include_usage": True}))
    return chunks[-1].usage.completion_tokens, time.monotonic()


def test_eight_streams_make_at_least_three_times_the_tokens_of_one(client):
    began = time.monotonic()
    tokens, ended = generate(client, 60)
    alone = tokens / (ended - began)
    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda n: generate(client, n), [61] * 8))
    together = sum(t for t, _ in done) / (max(e for _, e in done) - began)
    assert sum(t for t, _ in done) == 8 * 61
    assert together >= 3 * alone, (together, alone)


def test_a_short_request_joins_and_leaves_while_a_long_one_runs(client, log_path):
    began = threading.Event()
    long_end: list[tuple[int, float]] = []

    def long_one() -> None:
        stream = client.completions.create(
            model="gen", prompt="go", max_tokens=200, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            began.set()
        long_end.append((chunks[-1].usage.completion_tokens, time.monotonic()))

    runner = threading.Thread(target=long_one)
    runner.start()
    try:
        assert began.wait(30), "the long stream began"  # it needs 200 steps: 4 s
        short_tokens, short_end = generate(client, 10)
    finally:
        runner.join(timeout=60)
    long_tokens, long_ended = long_end[0]
    assert short_tokens == 10 and long_tokens == 200
    assert short_end < long_ended, "the 10-token request finished first"
    short, long = released(log_path, 10), released(log_path, 200)
    assert long["joined_step"] < short["joined_step"] < short["left_step"] < long["left_step"]


def test_a_dropped_stream_leaves_the_batch_within_a_step(client, log_path):
    stream = client.completions.create(model="gen", prompt="go", max_tokens=1000, stream=True)
    seen = 0
    for chunk in stream:
        seen += len((chunk.choices[0].text if chunk.choices else "").split())
        if seen >= 5:
            break
    stream.close()
    record = released(log_path, 1000)
    # The tokens read, the one in the making when the client left, and one step to see it.
    assert seen <= record["generated"] <= seen + 2, (seen, record)


def test_streams_sent_together_join_the_batch_together(client, log_path):
    """Nothing serialises requests before the decode loop (the job consumer's gate
    stays out of a generative endpoint's way): eight streams join within a few steps."""
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda n: generate(client, n), range(70, 78)))
    assert [t for t, _ in done] == list(range(70, 78))
    joined = [released(log_path, n)["joined_step"] for n in range(70, 78)]
    assert max(joined) - min(joined) <= 3, joined
