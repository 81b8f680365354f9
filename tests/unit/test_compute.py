"""The compute strategies of an endpoint server worker process, built in-process, and the
``/run`` entry that runs them (no server started)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from basic_inference_server import streams
from basic_inference_server.contracts import ServerSpec
from basic_inference_server.server.batching import Batcher
from basic_inference_server.server.compute import SingleCompute, choose_compute
from basic_inference_server.server.entry import RunEntry
from basic_inference_server.server.stages import END, Chunks, StageError
from basic_inference_server.server.streaming import StreamingCompute
from basic_inference_server.wire.message import Answer, Request, Streamed
from basic_inference_server.worker import FileOutput, FlaskWorker
from tests.unit.inprocess import request


class Plain(FlaskWorker):
    def _pre_process(self, inputs: dict[str, Any]) -> Any:
        if inputs.get("BAD"):
            raise ValueError("bad input")
        return inputs.get("N", 0)

    def _predict(self, n: int) -> Any:
        # An iterator for some requests only: such a worker streams per prediction.
        return iter(range(n)) if n > 0 else n

    def _post_process(self, pred: Any) -> Any:
        return {"v": pred}


class Generator(Plain):
    def _predict(self, n: int) -> Iterator[int]:
        yield from range(n)


class AsyncGenerator(Plain):
    async def _predict(self, n: int) -> AsyncIterator[int]:  # type: ignore[override]
        for i in range(n):
            yield i


def taken(chunks: Chunks) -> list[Any]:
    items = []
    while (item := chunks.take()) is not END:
        items.append(item)
    chunks.close()
    return items


@pytest.mark.parametrize("worker,config,kind,concurrency", [
    (Plain, {}, SingleCompute, 1),
    (Generator, {}, StreamingCompute, 1),
    (AsyncGenerator, {}, StreamingCompute, 1),
    (Plain, {"MAX_BATCH_SIZE": 4}, Batcher, 4),
    (Generator, {"MAX_BATCH_SIZE": 1}, StreamingCompute, 1),
])
def test_the_strategy_is_chosen_once_from_the_settings_and_predict(worker, config, kind,
                                                                   concurrency):
    compute = choose_compute(worker(upstream_config=config))
    assert type(compute) is kind and compute.concurrency == concurrency


def test_single_streams_only_the_predictions_that_are_iterators():
    compute = SingleCompute(Plain())
    assert compute.run({"N": 0}) == {"v": 0}
    chunks = compute.run({"N": 3})
    assert isinstance(chunks, Chunks) and taken(chunks) == [{"v": 0}, {"v": 1}, {"v": 2}]


@pytest.mark.parametrize("worker", [Generator, AsyncGenerator])
def test_streaming_gives_the_chunks_of_every_request(worker):
    compute = StreamingCompute(worker())
    assert taken(compute.run({"N": 2})) == [{"v": 0}, {"v": 1}]
    assert taken(compute.run({})) == []


@pytest.mark.parametrize("kind", [SingleCompute, StreamingCompute])
def test_a_refused_input_is_a_stage_error_of_pre_process(kind):
    with pytest.raises(StageError) as refused:
        kind(Generator()).run({"BAD": True})
    assert refused.value.status == 400 and refused.value.stage == "_pre_process"


def test_batched_runs_each_request_through_predict_batch():
    batcher = Batcher(Plain(), 4, 0.001)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(batcher.run, [{"N": 0}, {"N": -1}, {"N": -2}]))
    assert got == [{"v": 0}, {"v": -1}, {"v": -2}]


class Fixed:
    """A strategy answering a fixed result: the entry needs nothing more of one."""

    concurrency = 1

    def __init__(self, result: Any) -> None:
        self.result = result
        self.runs: list[dict[str, Any]] = []

    def run(self, inputs: dict[str, Any]) -> Any:
        self.runs.append(inputs)
        return self.result


def entry(compute: Any, **config: Any) -> RunEntry:
    spec = ServerSpec(name="ep", module="ep", endpoints_dir="", host="127.0.0.1", port=0,
                      socket="", nr_workers=1, worker_config={}, server_name="unit-box")

    def files(_request: Request, out: FileOutput) -> Answer:
        return Answer(200, [("Content-Type", out.mimetype)], out.data or b"")

    return RunEntry(spec, Plain(upstream_config=config, endpoint="ep"), compute, files)


def test_the_entry_adds_metadata_to_any_strategys_result_and_counts_calls():
    compute = Fixed(7)
    run = entry(compute)
    first, second = (run.answer(request({"SIGNATURE": "ep", "A": 1})) for _ in range(2))
    assert compute.runs == [{"SIGNATURE": "ep", "A": 1}] * 2
    body = json.loads(first.body)
    assert first.status == 200 and body["result"] == 7 and body["worker_id"] == "ep:0"
    assert (body["call_id"], json.loads(second.body)["call_id"]) == (1, 2)


def test_the_entry_refuses_another_endpoints_body_before_any_strategy_runs():
    compute = Fixed({})
    answer = entry(compute).answer(request({"SIGNATURE": "other"}))
    assert answer.status == 400 and compute.runs == []


def test_the_entry_answers_a_file_through_its_file_writer():
    answer = entry(Fixed(FileOutput(data=b"abc", mimetype="text/plain"))).answer(request({}))
    assert (answer.status, answer.body, answer.headers) == (200, b"abc",
                                                            [("Content-Type", "text/plain")])


def test_a_guard_runs_each_request_and_sees_a_stream_as_streamed():
    run = entry(StreamingCompute(Generator()))
    guarded: list[Any] = []

    def guard(call: Any) -> Any:
        result = call()
        guarded.append(result)
        return result

    run.guard = guard
    with ThreadPoolExecutor(1) as pool:
        answer = run.answer(request({"N": 2}, streams.NDJSON_TYPE), None, pool)
        assert answer.stream is not None and isinstance(guarded[-1], Streamed)

        async def drain() -> list[bytes]:
            assert answer.stream is not None
            return [chunk async for chunk in answer.stream]

        got = [streams.parse_event(streams.Format.NDJSON, c)[0] for c in asyncio.run(drain())]
    assert got == ["chunk", "chunk", "done"]
    assert run.answer(request({"N": 2})).status == 200  # gathered: a whole answer
    assert len(guarded) == 2 and isinstance(guarded[-1], tuple)
