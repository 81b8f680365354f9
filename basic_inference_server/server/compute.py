"""How a worker process computes a request's result: one strategy, chosen at start.

Every strategy takes a request's fields (base64 fields already decoded) and gives what
``_post_process`` made of them: a JSON-able value, a :class:`~..worker.FileOutput`, or
the :class:`.stages.Chunks` of a stream. It raises :class:`~..errors.ServingError`
(a :class:`.stages.StageError` for the endpoint's own code).

- :class:`SingleCompute`: one request, ``_pre_process -> _predict -> _post_process``;
  a ``_predict`` that returns an iterator streams (checked on each prediction: such a
  ``_predict`` may stream for one request and not for another).
- :class:`.streaming.StreamingCompute`: a ``_predict`` that is a generator (or async
  generator) function always streams: no check per prediction.
- :class:`.batching.Batcher`: ``MAX_BATCH_SIZE`` > 1, concurrent requests share
  ``_predict_batch`` calls.
- A :class:`~..generation.GenerativeWorker` streams with ``MAX_SEQUENCES`` request
  threads: its sequences share the decode steps of its loop (continuous batching).
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

from ..generation.worker import GenerativeWorker
from ..worker import FlaskWorker
from .batching import Batcher
from .stages import run_stages
from .streaming import StreamingCompute


class Compute(Protocol):
    """What the ``/run`` entry asks of a strategy."""

    # Requests the strategy takes at once in one process: the request threads.
    concurrency: int

    def run(self, inputs: dict[str, Any]) -> Any:
        """The result of one request's fields (see the module's docstring)."""
        ...


class SingleCompute:
    """One request at a time through the worker's three hooks."""

    concurrency = 1

    def __init__(self, worker: FlaskWorker) -> None:
        self.worker = worker

    def run(self, inputs: dict[str, Any]) -> Any:
        """The result of one request's fields (see the module's docstring)."""
        return run_stages(self.worker, inputs)


def choose_compute(worker: FlaskWorker) -> Compute:
    """The strategy of ``worker``, from its settings and its ``_predict``."""
    cfg = worker.config_data
    if isinstance(worker, GenerativeWorker):  # batched by its decode loop, not by requests
        return StreamingCompute(worker, worker.setting("MAX_SEQUENCES"))
    batch_size = int(cfg.get("MAX_BATCH_SIZE") or 1)
    if batch_size > 1:
        return Batcher(worker, batch_size, float(cfg.get("MAX_BATCH_DELAY_MS", 5)) / 1000)
    predict = worker._predict
    if inspect.isgeneratorfunction(predict) or inspect.isasyncgenfunction(predict):
        return StreamingCompute(worker)
    return SingleCompute(worker)
