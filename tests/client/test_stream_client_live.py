"""Client streams against a live gateway: chunks in order through the front, the done
data, error events and error answers typed, ``bis run --stream``, and a client that
leaves stopping the endpoint's generator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from basic_inference_server.client import (
    AsyncClient,
    Client,
    InternalError,
    NotFound,
)
from tests.client.conftest import TOKEN, token_env
from tests.client.test_cli import bis
from tests.conftest import Gateway, GatewayPool, wait_until


@pytest.fixture(scope="module")
def gw(module_gateways: GatewayPool) -> Gateway:
    """``streamer`` (tests/fixtures/endpoints/streamer.py) streams; ``echo`` does not."""
    return module_gateways({"CONFIG_ENDPOINTS": {"streamer": {"NR_WORKERS": 2}, "echo": {}}},
                           env=token_env())


@pytest.fixture
def client(gw: Gateway) -> Iterator[Client]:
    with Client(gw.base, admin_token=TOKEN) as bis_client:
        yield bis_client


def closed_after(counter: Path) -> int | None:
    """How many chunks the endpoint made once its generator was closed (None before)."""
    text = counter.read_text() if counter.exists() else ""
    return int(text.split()[1]) if text.startswith("exit ") else None


def test_the_chunks_come_in_order_then_done_with_usage_and_metadata(client):
    stream = client.stream("streamer", N=20, USAGE=True)
    assert [chunk["i"] for chunk in stream] == list(range(20))
    assert stream.done is not None
    assert stream.done["CHUNKS"] == 20 and stream.usage == 20
    assert {"ver", "time", "signature"} <= set(stream.done)
    assert stream.status == 200


def test_async_streams_run_together_each_in_order(gw):
    async def one(bis_client: AsyncClient, n: int) -> tuple[list[int], Any]:
        stream = bis_client.stream("streamer", {"N": n})
        return [chunk["i"] async for chunk in stream], stream.done

    async def main() -> list[tuple[list[int], Any]]:
        async with AsyncClient(gw.base, admin_token=TOKEN) as bis_client:
            return await asyncio.gather(*(one(bis_client, 40 + k) for k in range(8)))

    for k, (seen, done) in enumerate(asyncio.run(main())):
        assert seen == list(range(40 + k)) and done["CHUNKS"] == 40 + k


def test_an_error_after_the_first_chunk_is_a_typed_error_event(client):
    got = []
    with pytest.raises(InternalError) as caught:
        for chunk in client.stream("streamer", N=5, FAIL_AT=2):
            got.append(chunk["i"])
    assert got == [0, 1]
    assert caught.value.body["ERROR_TYPE"] == "endpoint_error"
    assert "failed before chunk 2" in caught.value.message and caught.value.status is None


def test_an_error_before_the_first_chunk_is_an_error_answer(client):
    with pytest.raises(InternalError) as caught:
        list(client.stream("streamer", N=5, FAIL_AT=0))
    assert caught.value.status == 500 and caught.value.body["ERROR_TYPE"] == "endpoint_error"
    with pytest.raises(NotFound):
        list(client.stream("no_such_endpoint"))


def test_an_endpoint_that_does_not_stream_is_one_chunk_and_ticker_gathers_without_accept(
        gw, client):
    stream = client.stream("echo", text="hi")
    (answer,) = list(stream)
    assert answer["echo"] == {"text": "hi"} and stream.done == {"CHUNKS": 1}
    gathered = gw.run("streamer", N=3, USAGE=True)
    assert gathered.status_code == 200, gathered.text
    body = gathered.json()
    assert [c["i"] for c in body["CHUNKS"]] == [0, 1, 2] and body["USAGE"] == 3


def test_leaving_a_stream_closes_the_endpoints_generator_within_two_chunks(client, tmp_path):
    counter = tmp_path / "counter"
    with client.stream("streamer", N=10_000, DELAY_MS=50, COUNTER=str(counter)) as stream:
        for chunk in stream:
            assert chunk["i"] == 0
            break
    made = wait_until(lambda: closed_after(counter), timeout=30,
                      message="the generator was closed after the client left")
    assert 1 <= made <= 1 + 2, f"{made} chunks made for 1 read"


def test_leaving_an_async_stream_closes_the_generator_too(gw, tmp_path):
    counter = tmp_path / "counter"

    async def main() -> None:
        async with AsyncClient(gw.base, admin_token=TOKEN) as bis_client:
            async with bis_client.stream("streamer", N=10_000, DELAY_MS=50,
                                         COUNTER=str(counter)) as stream:
                seen = [chunk["i"] async for chunk in _first(stream, 3)]
                assert seen == [0, 1, 2]

    asyncio.run(main())
    made = wait_until(lambda: closed_after(counter), timeout=30,
                      message="the generator was closed after the client left")
    assert 3 <= made <= 3 + 2, f"{made} chunks made for 3 read"


async def _first(stream: Any, n: int) -> Any:
    """The first ``n`` chunks of an async stream, leaving it open."""
    async for chunk in stream:
        yield chunk
        n -= 1
        if n == 0:
            return


def test_bis_run_stream_prints_json_lines_and_exits_1_on_an_error_event(gw):
    env = {"BIS_URL": gw.base, "BIS_ADMIN_TOKEN": TOKEN}
    ok = bis("run", "--stream", "streamer", "N=4", "USAGE=true", env=env)
    assert ok.returncode == 0, ok.stderr
    assert [json.loads(line)["i"] for line in ok.stdout.splitlines()] == [0, 1, 2, 3]
    done = json.loads(ok.stderr)
    assert done["CHUNKS"] == 4 and done["USAGE"] == 4
    failed = bis("run", "--stream", "streamer", "N=4", "FAIL_AT=1", env=env)
    assert failed.returncode == 1
    assert [json.loads(line)["i"] for line in failed.stdout.splitlines()] == [0]
    error = json.loads(failed.stderr)
    assert error["ERROR_TYPE"] == "internal_error" and "failed before chunk 1" in error["ERROR"]
