"""Streaming endpoints in one process: the endpoint server's ``/run`` entry called as the
event-loop worker calls it (chunks made in a thread pool), no sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from basic_inference_server import streams
from basic_inference_server.errors import ServingError
from basic_inference_server.queues import Job, JobsSpec, open_queue, open_results
from basic_inference_server.server.app import WorkerApp
from basic_inference_server.server.batching import Batcher
from basic_inference_server.server.consumer import JobConsumer
from basic_inference_server.server.stages import END, run_stages
from basic_inference_server.wire.message import Answer, Streamed
from basic_inference_server.worker import CancelFlag, FlaskWorker, run_as
from tests.conftest import FIXTURE_ENDPOINTS, ROOT, wait_until
from tests.unit import inprocess
from tests.unit.inprocess import build, header, request

META = ("ver", "app_ver", "time", "call_id", "worker_id", "worker_pid", "signature", "host",
        "server")


def make_app(module: str = "streamer", endpoints: Path = FIXTURE_ENDPOINTS,
             **worker_config: Any) -> WorkerApp:
    return build(module, endpoints, **worker_config)


def call(app: WorkerApp, fields: dict[str, Any], accept: str | None = None,
         flag: CancelFlag | None = None) -> tuple[Answer, list[bytes]]:
    return inprocess.call(app, request(fields, accept), flag)


def events(fmt: streams.Format, chunks: list[bytes]) -> list[tuple[str, int, dict[str, Any]]]:
    assert all(c.endswith(streams.end_of_event(fmt)) for c in chunks)  # one event a chunk
    return [streams.parse_event(fmt, c) for c in chunks]


@pytest.mark.parametrize("fields,accept,fmt", [
    ({"N": 4}, streams.SSE_TYPE, streams.Format.SSE),
    ({"N": 4, "STREAM": True}, None, streams.Format.SSE),
    ({"N": 4}, streams.NDJSON_TYPE, streams.Format.NDJSON),
    ({"N": 4, "ASYNC": True}, streams.NDJSON_TYPE, streams.Format.NDJSON),
])
def test_a_stream_is_its_chunks_in_order_then_done(fields, accept, fmt):
    answer, chunks = call(make_app(), fields, accept)
    assert answer.status == 200 and header(answer, "Content-Type") == fmt.content_type
    for name, value in streams.STREAM_HEADERS:
        assert header(answer, name) == value
    got = events(fmt, chunks)
    assert [(name, i) for name, i, _data in got] == [("chunk", i) for i in range(1, 5)] + [("done", 5)]
    assert [data["i"] for _n, _i, data in got[:4]] == [0, 1, 2, 3]
    done = got[-1][2]
    assert done["CHUNKS"] == 4 and "USAGE" not in done
    assert all(key in done for key in META) and done["worker_id"] == "streamer:0"


def test_usage_is_taken_out_of_the_chunks_and_the_last_one_given_is_the_streams():
    answer, chunks = call(make_app(), {"N": 3, "USAGE": True}, streams.SSE_TYPE)
    got = events(streams.Format.SSE, chunks)
    assert all("USAGE" not in data for name, _i, data in got if name == "chunk")
    assert got[-1][2]["USAGE"] == 3


def test_a_caller_that_asks_no_stream_gets_the_chunks_gathered():
    app = make_app(BASE64_OUTPUTS=["OUT"])
    answer, chunks = call(app, {"N": 3, "USAGE": True, "BYTES": True})
    assert not chunks and answer.status == 200
    assert header(answer, "Content-Type") == "application/json"
    body = json.loads(answer.body)
    assert [c["i"] for c in body["CHUNKS"]] == [0, 1, 2]
    assert [base64.b64decode(c["OUT"]) for c in body["CHUNKS"]] == [bytes([i, 255]) for i in range(3)]
    assert body["USAGE"] == 3 and all(key in body for key in META)
    assert all("USAGE" not in c for c in body["CHUNKS"])
    # Bare values are wrapped, as in a whole answer.
    body = json.loads(call(app, {"N": 2, "PLAIN": True, "ASYNC": True})[0].body)
    assert body["CHUNKS"] == [{"result": 0}, {"result": 1}]


def test_base64_outputs_apply_to_each_streamed_chunk():
    _answer, chunks = call(make_app(BASE64_OUTPUTS=["OUT"]), {"N": 2, "BYTES": True},
                           streams.NDJSON_TYPE)
    got = events(streams.Format.NDJSON, chunks)
    assert [base64.b64decode(d["OUT"]) for n, _i, d in got if n == "chunk"] == [b"\x00\xff", b"\x01\xff"]


@pytest.mark.parametrize("fields,status,kind", [
    ({"FAIL_AT": 0}, 500, "endpoint_error"),
    ({"FAIL_AT": 0, "ASYNC": True}, 500, "endpoint_error"),
    ({"BAD": True}, 400, "bad_request"),
])
def test_an_error_before_the_first_chunk_is_a_whole_error_answer(fields, status, kind):
    answer, chunks = call(make_app(), fields, streams.SSE_TYPE)
    body = json.loads(answer.body)
    assert not chunks and answer.status == status and body["ERROR_TYPE"] == kind
    assert header(answer, "Content-Type") == "application/json" and "call_id" in body


@pytest.mark.parametrize("accept", [streams.SSE_TYPE, None])
def test_an_error_after_the_first_chunk_is_an_error_event_logged_once(accept, caplog, tmp_path):
    counter = tmp_path / "counter"
    with caplog.at_level(logging.ERROR):
        answer, chunks = call(make_app(), {"N": 5, "FAIL_AT": 2, "COUNTER": str(counter)}, accept)
    failures = [r for r in caplog.records if "failed in _predict" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert counter.read_text() == "closed 2"
    if accept is None:  # gathered: the error answer, with its status
        assert answer.status == 500 and json.loads(answer.body)["EXCEPTION"] == "RuntimeError"
        return
    got = events(streams.Format.SSE, chunks)
    assert [(name, i) for name, i, _d in got] == [("chunk", 1), ("chunk", 2), ("error", 3)]
    error = got[-1][2]
    assert error["ERROR_TYPE"] == "endpoint_error" and error["EXCEPTION"] == "RuntimeError"
    assert "failed before chunk 2" in error["ERROR"] and "call_id" in error


def test_the_demo_endpoint_streams_the_words_and_bounds_its_input():
    app = make_app("words", ROOT / "endpoints")
    _answer, chunks = call(app, {"TEXT": "the quick  brown fox", "DELAY_MS": 1}, streams.SSE_TYPE)
    got = events(streams.Format.SSE, chunks)
    assert [d.get("word") for n, _i, d in got] == ["the", "quick", "brown", "fox", None]
    assert got[-1][2]["CHUNKS"] == 4 and got[-1][2]["USAGE"] == 4
    body = json.loads(call(app, {})[0].body)
    assert body["CHUNKS"] == [] and body["ver"]
    for fields in ({"TEXT": 5}, {"TEXT": "x" * 10_001}, {"TEXT": "a", "DELAY_MS": -1},
                   {"TEXT": "a", "DELAY_MS": True}, {"TEXT": "a " * 61, "DELAY_MS": 1000}):
        answer, chunks = call(app, fields, streams.SSE_TYPE)
        assert answer.status == 400 and not chunks, fields


def test_jobs_of_a_streaming_endpoint_get_the_gathered_answer():
    execute = make_app().entry.execute
    status, body, _headers = execute({"N": 2, "USAGE": True}, None, "job-1")
    assert status == 200 and [c["i"] for c in body["CHUNKS"]] == [0, 1] and body["USAGE"] == 2


@pytest.mark.parametrize("is_async", [False, True])
def test_a_client_that_leaves_closes_the_generator_after_the_chunk_in_making(is_async, tmp_path):
    counter = tmp_path / "counter"
    flag = CancelFlag()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(make_app().entry.answer, request(
            {"N": 1000, "DELAY_MS": 5, "ASYNC": is_async, "COUNTER": str(counter)},
            streams.SSE_TYPE), flag, pool).result()

        async def take_two_and_leave() -> list[bytes]:
            assert answer.stream is not None
            got = [await answer.stream.__anext__(), await answer.stream.__anext__()]
            await answer.stream.aclose()  # what the connection does when its client leaves
            return got

        got = asyncio.run(take_two_and_leave())
    # The pool is shut down: the close has run.
    assert [streams.parse_event(streams.Format.SSE, c)[1] for c in got] == [1, 2]
    assert flag.is_set
    assert counter.read_text() == "exit 2"


def test_no_chunk_is_made_once_the_client_left(tmp_path):
    counter = tmp_path / "counter"
    flag = CancelFlag()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(make_app().entry.answer, request(
            {"N": 10, "COUNTER": str(counter)}, streams.SSE_TYPE), flag, pool).result()

        async def main() -> list[bytes]:
            assert answer.stream is not None
            first = await answer.stream.__anext__()
            flag.set()  # the client left before the next chunk is asked for
            return [first, *[c async for c in answer.stream]]

        got = asyncio.run(main())
    assert [streams.parse_event(streams.Format.SSE, c)[:2] for c in got] == [("chunk", 1)]
    assert counter.read_text() == "exit 1"


class Watcher(FlaskWorker):
    def _pre_process(self, inputs: dict[str, Any]) -> None:
        return None

    def _predict(self, _prep: None) -> Any:
        yield self.cancelled()
        yield self.cancelled()

    def _post_process(self, pred: bool) -> dict[str, bool]:
        return {"cancelled": pred}


def test_a_streams_chunks_see_their_own_requests_flag_in_any_thread():
    flag = CancelFlag()
    run_as(flag)
    try:
        chunks = run_stages(Watcher(), {})
    finally:
        run_as(None)
    with ThreadPoolExecutor(1) as other:
        assert other.submit(chunks.take).result() == {"cancelled": False}
        flag.set()
        assert other.submit(chunks.take).result() == {"cancelled": True}
        assert other.submit(chunks.take).result() is END
    chunks.close()


def test_a_long_predict_sees_its_client_gone_through_cancelled(tmp_path):
    counter = tmp_path / "counter"
    flag = CancelFlag()
    with ThreadPoolExecutor(1) as pool:
        work = pool.submit(make_app().entry.answer, request(
            {"POLL_MS": 1, "COUNTER": str(counter)}), flag, pool)
        while not counter.exists():
            assert not work.done()
        flag.set()
        answer = work.result(timeout=10)
    assert json.loads(answer.body)["cancelled"] is True
    assert counter.read_text().startswith("stopped")


def test_cancelled_is_false_outside_a_request_and_per_thread():
    worker = FlaskWorker()
    assert worker.cancelled() is False
    flag = CancelFlag()
    flag.set()
    previous = run_as(flag)
    try:
        assert worker.cancelled() is True
        seen: list[bool] = []
        thread = threading.Thread(target=lambda: seen.append(worker.cancelled()))
        thread.start()
        thread.join()
        assert seen == [False]
    finally:
        run_as(previous)
    assert worker.cancelled() is False


class Tokens(FlaskWorker):
    """Batched: each request's result is its own stream; batch 1 is held until told."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(endpoint="unit", **kw)
        self.batches: list[list[int]] = []
        self.release = threading.Event()

    def _pre_process(self, inputs: dict[str, Any]) -> int:
        return int(inputs["n"])

    def _predict_batch(self, batch: list[int]) -> list[Any]:
        self.batches.append(list(batch))
        if len(self.batches) == 1:
            self.release.wait(10)
        return [iter(range(n)) for n in batch]

    def _post_process(self, pred: Any) -> Any:
        return {"token": pred}


def test_a_batched_endpoint_streams_per_request_and_drops_requests_whose_client_left():
    worker = Tokens()
    batcher = Batcher(worker, max_size=8, max_delay_s=0.05)
    flags = {n: CancelFlag() for n in (1, 2, 3, 4)}

    def run(n: int) -> list[Any]:
        run_as(flags[n])
        try:
            chunks = batcher.run({"n": n})
            items = []
            while (item := chunks.take()) is not END:
                items.append(item)
            chunks.close()
            return items
        finally:
            run_as(None)

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(run, 1)
        wait_until(lambda: worker.batches, message="the first batch runs")
        others = {n: pool.submit(run, n) for n in (2, 3, 4)}
        wait_until(lambda: len(batcher._queue) == 3, message="three wait for the next batch")
        flags[3].set()  # its client leaves while it waits for the next batch
        worker.release.set()
        assert first.result(10) == [{"token": 0}]
        assert others[2].result(10) == [{"token": 0}, {"token": 1}]
        assert others[4].result(10) == [{"token": t} for t in range(4)]
        with pytest.raises(ServingError, match="went away"):
            others[3].result(10)
    assert worker.batches == [[1], [2, 4]] and batcher.dropped == 1


def test_the_job_gate_is_held_for_each_chunk_and_in_flight_until_the_stream_closes(tmp_path):
    url = f"sqlite://{tmp_path / 'jobs.sqlite3'}"
    ran: list[dict[str, Any]] = []

    def execute(inputs: dict[str, Any], *_ids: Any) -> tuple[int, dict[str, Any], list[Any]]:
        ran.append(inputs)
        return 200, {}, []

    consumer = JobConsumer("ep", execute, JobsSpec(queue=url, results=url, ttl=60),
                           {"MAX_ATTEMPTS": 1, "RETRY_BACKOFF": 0, "VISIBILITY_TIMEOUT": 30})
    consumer.queue, consumer.results = open_queue(url), open_results(url)
    job = Job(endpoint="ep", body={"SIGNATURE": "ep"})
    consumer.results.create(job)
    assert consumer.queue.enqueue(job)
    held: list[bool] = []
    closed: list[bool] = []

    def produce():
        for i in range(3):
            held.append(consumer.gate.locked())  # type: ignore[attr-defined]
            yield b"%d" % i

    def run():
        return Streamed(produce(), close=lambda: closed.append(consumer.gate.locked()))  # type: ignore[attr-defined]

    try:
        result = consumer.guard(run)
        assert isinstance(result, Streamed) and consumer.in_flight == 1
        assert next(result.chunks) == b"0" and held == [True]
        # Between chunks the gate is free, but no job is claimed while the stream is open.
        assert not consumer.run_once(wait=0.05) and ran == []
        result.close()
        assert closed == [True] and consumer.in_flight == 0
        assert consumer.run_once(wait=1) and len(ran) == 1
    finally:
        consumer.queue.close()
