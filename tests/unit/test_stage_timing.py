"""server/timing.py: a wrapped hook is timed for the request of its own thread only, and
costs no timing at all while no request of the process is timed."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from basic_inference_server.server import timing


def hooks() -> SimpleNamespace:
    worker = SimpleNamespace(_pre_process=lambda v: v, _post_process=lambda v: v,
                             _predict=lambda v: time.sleep(0.002) or v)
    timing.time_hooks(worker)  # type: ignore[arg-type]
    return worker


def test_a_hook_is_timed_for_its_own_threads_request_only():
    worker = hooks()
    times = timing.begin(time.perf_counter(), spans=True)

    def untimed() -> None:  # another thread, no request of its own timed
        worker._predict(1)

    thread = threading.Thread(target=untimed)
    thread.start()
    thread.join()
    assert worker._pre_process(1) == 1 and worker._predict(2) == 2
    timing.end()
    assert set(times.stages) == {"queue", "pre", "predict"}
    assert times.stages["predict"] >= 0.002
    # Each call a span: the other thread's call is not among them.
    assert [name for name, _, _ in times.spans or ()] == ["queue", "pre", "predict"]


def test_nothing_is_timed_once_the_request_ends():
    worker = hooks()
    times = timing.begin(time.perf_counter())
    timing.end()
    worker._predict(1)
    assert set(times.stages) == {"queue"}
    assert not timing._requests
