"""Dynamic batching: requests arriving together at a worker share one model call.

With ``MAX_BATCH_SIZE`` n > 1 the server runs n request threads per worker process.
Each request thread runs ``_pre_process`` (a failure is a 400 for that request only),
hands the result to the worker's one batch thread and waits. The batch thread takes
the first waiting input, then waits up to ``MAX_BATCH_DELAY_MS`` for more while other
requests are inside the worker (a lone request runs at once), and calls
``_predict_batch(list)`` once for up to n inputs. Each result goes back to its request
thread, which runs ``_post_process``.

Errors stay per request: a result that is an ``Exception`` instance fails its own
request; if ``_predict_batch`` raises for a batch of several, each input is run again
alone so that only the ones that fail by themselves get a 500.

Streams: a result that is an iterator (or an async iterator) streams its own request's
chunks, stepped in that request's thread (see :mod:`.streaming`). A request whose
client went away, or whose deadline passed (``X-Request-Deadline``: a 504
``deadline_exceeded``), before its batch formed is dropped from the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from prometheus_client import Histogram

from ..deadlines import MISSES
from ..errors import DeadlineExceeded, ServingError
from ..worker import CancelFlag, FlaskWorker, running_flag
from .stages import StageError, post_process, pre_process

log = logging.getLogger(__name__)
BATCH_SIZE = Histogram("bis_batch_size", "Inputs per _predict_batch call", ["endpoint"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))


class _Item:
    __slots__ = ("prep", "flag", "result", "error", "done")

    def __init__(self, prep: Any, flag: CancelFlag | None) -> None:
        self.prep = prep
        self.flag = flag  # set when the request's client went away
        self.result: Any = None
        self.error: ServingError | None = None
        self.done = threading.Event()

    def ended(self) -> ServingError | None:
        """Why it must not run: its client went away, or its deadline passed."""
        flag = self.flag
        if flag is None:
            return None
        if flag.is_set:  # its request's answer, which nobody reads
            return ServingError("the client went away before the batch formed")
        if flag.expired():
            return DeadlineExceeded("the request's deadline passed before its batch formed")
        return None


class Batcher:
    """Groups the inputs of concurrent requests into ``_predict_batch`` calls: the batched
    compute strategy (see :mod:`.compute`), taking ``max_size`` requests at once."""

    def __init__(self, worker: FlaskWorker, max_size: int, max_delay_s: float) -> None:
        self.worker = worker
        self.max_size = self.concurrency = max_size
        self.max_delay_s = max_delay_s
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._active = 0  # requests inside run(), queued or not
        self._last = 1  # size of the last batch
        self.dropped = 0  # inputs whose client went away (or deadline passed) before their batch
        self._sizes = BATCH_SIZE.labels(worker.endpoint)
        self._thread = threading.Thread(target=self._loop, name="bis-batcher", daemon=True)
        self._thread.start()

    def run(self, inputs: dict[str, Any]) -> Any:
        """The stages of one request, its ``_predict`` done in a batch."""
        with self._cond:
            self._active += 1
        try:
            prep = pre_process(self.worker, inputs)
            item = _Item(prep, running_flag())
            with self._cond:
                self._queue.append(item)
                self._cond.notify_all()
            item.done.wait()
            if item.error is not None:
                raise item.error
            return post_process(self.worker, item.result)
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def _next_batch(self) -> list[_Item]:
        with self._cond:
            while not self._drop_gone():
                self._cond.wait()
            deadline = time.monotonic() + self.max_delay_s
            # Wait for more while more are likely: other requests are in the worker (pre-
            # or post-processing), or the last batch was not alone (under load, the
            # answers to the last batch come back as new requests). A lone request on an
            # idle worker does not wait.
            while len(self._queue) < self.max_size and (
                    self._active > len(self._queue) or self._last > 1):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._drop_gone()
            n = min(self.max_size, len(self._queue))
            self._last = n
            return [self._queue.popleft() for _ in range(n)]

    def _drop_gone(self) -> int:
        """Answer the waiting inputs whose client went away, or whose deadline passed,
        without running them; how many are left. Called with the lock held."""
        ended = [(item, item.ended()) for item in self._queue if item.flag is not None]
        for item, error in ended:
            if error is None:
                continue
            self._queue.remove(item)
            item.error = error
            item.done.set()
            self.dropped += 1
            if isinstance(error, DeadlineExceeded):
                MISSES.labels(self.worker.endpoint, "server").inc()
        return len(self._queue)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                continue
            self._sizes.observe(len(batch))
            try:
                self._predict(batch)
            except BaseException as exc:  # noqa: BLE001 - this thread must outlive any batch
                log.exception("%s: batch thread caught %s", self.worker.endpoint, type(exc).__name__)
                for item in batch:
                    if item.error is None:
                        item.error = StageError("_predict_batch", exc)
            finally:
                for item in batch:
                    item.done.set()

    def _predict(self, batch: list[_Item]) -> None:
        try:
            results = self.worker._predict_batch([item.prep for item in batch])
            if not isinstance(results, list) or len(results) != len(batch):
                got = len(results) if isinstance(results, list) else type(results).__name__
                raise TypeError(f"_predict_batch must return a list of {len(batch)} results, got {got}")
        except ServingError as err:
            for item in batch:
                item.error = err
            return
        except Exception as exc:  # noqa: BLE001 - user code: any error fails its batch only
            if len(batch) == 1:
                batch[0].error = StageError("_predict_batch", exc)
                return
            log.warning("%s: a batch of %d failed (%s: %s); running its inputs one by one",
                        self.worker.endpoint, len(batch), type(exc).__name__, exc)
            for item in batch:
                self._predict([item])
            return
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                item.error = StageError("_predict_batch", result)
            else:
                item.result = result
