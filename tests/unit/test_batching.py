"""The batcher in one process: grouping, per-request errors, the default _predict_batch."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from basic_inference_server.errors import DeadlineExceeded, ServingError
from basic_inference_server.server.batching import Batcher
from basic_inference_server.worker import CancelFlag, FlaskWorker, run_as
from tests.conftest import wait_until


class Doubler(FlaskWorker):
    """Implements only _predict: batching uses the default _predict_batch."""

    def __init__(self, **kw):
        super().__init__(endpoint="unit", **kw)
        self.calls: list[int] = []
        self.gate = threading.Event()

    def _pre_process(self, inputs):
        return inputs["x"]

    def _predict(self, x):
        self.gate.wait(10)  # hold the first batch until the rest have queued
        self.calls.append(x)
        if x == 3:
            raise ValueError("three is bad")
        return 2 * x

    def _post_process(self, y):
        return {"y": y}


def test_default_predict_batch_fails_only_the_bad_input_and_runs_each_once():
    worker = Doubler()
    batcher = Batcher(worker, max_size=8, max_delay_s=0.2)

    def call(x):
        try:
            return batcher.run({"x": x})
        except ServingError as err:
            return err

    with ThreadPoolExecutor(6) as ex:
        futures = [ex.submit(call, x) for x in range(6)]
        worker.gate.set()
        results = [f.result(timeout=10) for f in futures]
    for x, result in enumerate(results):
        if x == 3:
            assert isinstance(result, ServingError) and result.status == 500
            assert result.details["ERROR_STAGE"] == "_predict_batch"
            assert result.details["EXCEPTION"] == "ValueError"
        else:
            assert result == {"y": 2 * x}
    assert sorted(worker.calls) == list(range(6))  # nothing ran twice


def test_worker_with_only_predict_batch_serves_unbatched_too():
    class OnlyBatch(FlaskWorker):
        def _predict_batch(self, batch):
            return [ValueError("no") if b < 0 else b + 1 for b in batch]

    worker = OnlyBatch()
    assert worker._predict(1) == 2
    with pytest.raises(ValueError, match="no"):
        worker._predict(-1)
    with pytest.raises(NotImplementedError, match="_predict_batch"):
        FlaskWorker()._predict(1)


def test_batch_thread_survives_a_model_that_exits():
    class Exits(FlaskWorker):
        def _pre_process(self, inputs):
            return inputs["x"]

        def _predict(self, x):
            if x == 0:
                raise SystemExit("model code called sys.exit")
            return x

        def _post_process(self, y):
            return y

        def _predict_batch(self, batch):
            return [self._predict(x) for x in batch]  # lets SystemExit through

    batcher = Batcher(Exits(endpoint="unit"), max_size=4, max_delay_s=0)
    with pytest.raises(ServingError, match="SystemExit"):
        batcher.run({"x": 0})
    assert batcher.run({"x": 5}) == 5  # the batch thread is still there


def test_an_input_whose_deadline_passed_while_it_waited_never_runs():
    worker = Doubler()
    batcher = Batcher(worker, max_size=1, max_delay_s=0.0)

    def call(x, deadline):
        run_as(CancelFlag(deadline))
        try:
            return batcher.run({"x": x})
        except ServingError as err:
            return err

    with ThreadPoolExecutor(2) as ex:
        first = ex.submit(call, 10, None)  # holds the batch thread until the gate opens
        wait_until(lambda: worker.calls or batcher._active == 1, timeout=10)
        deadline = time.perf_counter() + 0.05
        late = ex.submit(call, 20, deadline)
        wait_until(lambda: batcher._active == 2, timeout=10)
        # Its deadline passes while it waits behind the first batch.
        wait_until(lambda: time.perf_counter() > deadline, timeout=10, interval=0.01)
        worker.gate.set()
        assert first.result(timeout=10) == {"y": 20}
        error = late.result(timeout=10)
    assert isinstance(error, DeadlineExceeded) and error.status == 504
    assert worker.calls == [10], "the late input never reached _predict"
