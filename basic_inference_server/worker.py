"""The user-facing base class: subclass :class:`FlaskWorker` in ``endpoints/<name>.py``.

The framework builds one instance per worker process (after the fork), calls
``_load_model()`` once (under the models' memory guard: what it loads is measured and
counted) and ``_warmup()`` once, then, the worker READY, for every request runs::

    _pre_process(inputs) -> _predict(prep) -> _post_process(pred) -> JSON answer

An exception in ``_pre_process`` is the caller's fault (HTTP 400); one in ``_predict``
or ``_post_process`` is the endpoint's (HTTP 500). The worker never sees HTTP.

With ``MAX_BATCH_SIZE`` above 1, requests arriving together are grouped: each runs
``_pre_process`` and ``_post_process`` in its own thread, and one thread calls
``_predict_batch`` with the list of their ``_pre_process`` results (see
:mod:`basic_inference_server.server.batching`).

**Streaming.** A ``_predict`` that returns an iterator (a generator) or an async
generator streams: each item it yields goes through ``_post_process`` and becomes one
chunk of the answer (see :mod:`basic_inference_server.server.streaming`). A long
``_predict`` can stop early when its caller went away: see :meth:`FlaskWorker.cancelled`;
a job reports its progress with :meth:`FlaskWorker.progress`.

``self.models`` is the worker's :class:`~basic_inference_server.models.manager.ModelManager`:
``with self.models.use(name) as model:`` loads (or reuses) a model declared in the
endpoint's ``MODELS`` through ``_build_model`` and holds it for the block.

Compatibility with the original project: the endpoint module's ``_CONFIG`` dict gives
defaults, overridden by the endpoint's section of ``config_gateway.json``; every key is
readable as ``self.cfg_<lower key>`` and the whole as ``self.config_data``.
``self.log.P(msg, color=...)`` logs and ``self._create_notification(notif=..., msg=...)``
publishes a notification readable through ``/notifications``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .events import Event
from .ipc import Notifier
from .logger import PrefixedLog

if TYPE_CHECKING:
    from .models.manager import ModelManager


class CancelFlag:
    """Set once a request's client went away; any thread may set or read it. With a
    ``deadline`` (``time.perf_counter()``, from ``X-Request-Deadline``), the request
    does not start once it passed."""

    __slots__ = ("is_set", "deadline")

    def __init__(self, deadline: float | None = None) -> None:
        self.is_set = False
        self.deadline = deadline

    def set(self) -> None:
        """Mark the request cancelled."""
        self.is_set = True

    def expired(self) -> bool:
        """Whether the request's deadline passed (False without one)."""
        return self.deadline is not None and time.perf_counter() >= self.deadline


# The flag of the request the calling thread runs: the framework sets it around each
# call of the endpoint's code (a stream's chunks may be made in any request thread).
_running = threading.local()


def run_as(flag: CancelFlag | None) -> CancelFlag | None:
    """Make ``flag`` the calling thread's current request's; returns the one it replaces."""
    previous: CancelFlag | None = getattr(_running, "flag", None)
    _running.flag = flag
    return previous


def running_flag() -> CancelFlag | None:
    """The flag of the request the calling thread runs (None outside a request)."""
    return getattr(_running, "flag", None)


@dataclass
class FileOutput:
    """Return this from ``_post_process`` to answer with a file download."""

    data: bytes | None = None
    path: str | None = None
    filename: str = "download.bin"
    mimetype: str = "application/octet-stream"


class FlaskWorker:
    """Base class of every endpoint worker. Override the four ``_`` hooks."""

    def __init__(self, log: Any = None, default_config: dict[str, Any] | None = None,
                 upstream_config: dict[str, Any] | None = None, worker_id: int = 0,
                 prefix_log: str = "", endpoint: str = "", notifier: Notifier | None = None,
                 **_ignored: Any) -> None:
        self.endpoint = endpoint
        self.worker_id = worker_id
        self.log = log if log is not None else PrefixedLog(f"bis.endpoint.{endpoint}", prefix_log)
        if isinstance(self.log, PrefixedLog) and prefix_log:
            self.log.prefix = prefix_log
        self.config_data: dict[str, Any] = {**(default_config or {}), **(upstream_config or {})}
        self._notifier = notifier or Notifier(None)
        self.models: ModelManager  # set by the framework before _load_model
        # MODEL's version in the box's cache, verified (set before _load_model).
        self.model_path: Path | None = None

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: serves cfg_<key> from config_data.
        if name.startswith("cfg_"):
            config = self.__dict__.get("config_data", {})
            key = name[4:].upper()
            if key in config:
                return config[key]
            raise AttributeError(
                f"{type(self).__name__} has no setting {key!r} for {name}: add it to the "
                f"endpoint's _CONFIG or to its section in config_gateway.json"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- hooks the endpoint overrides -------------------------------------------------
    def _load_model(self) -> None:
        """Load the model once per worker process. Default: nothing to load."""

    def _warmup(self) -> None:
        """Run once after ``_load_model`` (and ``PRELOAD_MODELS``), before the worker
        counts as READY and takes requests: a first inference, CUDA kernels compiled,
        caches filled, so the first request is not the slow one. Default: nothing.

        It counts toward ``LOAD_TIMEOUT``; raising fails the worker's start as a failed
        ``_load_model`` does.
        """

    def _pre_process(self, inputs: dict[str, Any]) -> Any:
        """Check and parse the request fields; raise to answer 400."""
        raise NotImplementedError(f"{type(self).__name__} must implement _pre_process")

    def _predict(self, prep_inputs: Any) -> Any:
        """Run the model on what ``_pre_process`` returned.

        Default, for workers that only implement ``_predict_batch``: a batch of one.
        """
        if type(self)._predict_batch is FlaskWorker._predict_batch:
            raise NotImplementedError(f"{type(self).__name__} must implement _predict "
                                      f"(or _predict_batch)")
        result = self._predict_batch([prep_inputs])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def _predict_batch(self, batch: list[Any]) -> list[Any]:
        """Run the model on several ``_pre_process`` results at once; one result each, in order.

        A result that is an ``Exception`` instance fails only its own request. Default:
        ``_predict`` on each item, an exception it raises becoming that item's result.
        """
        results: list[Any] = []
        for item in batch:
            try:
                results.append(self._predict(item))
            except Exception as exc:  # noqa: BLE001 - it fails its own request, not the batch
                results.append(exc)
        return results

    def _build_model(self, name: str, spec: dict[str, Any]) -> Any:
        """Build model ``name`` of ``MODELS`` from its spec (``self.models`` calls it)."""
        raise NotImplementedError(f"{type(self).__name__} declares MODELS but does not implement "
                                  f"_build_model(name, spec) to build {name!r}")

    def _post_process(self, pred: Any) -> Any:
        """Turn the prediction into a JSON-able dict (or a :class:`FileOutput`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _post_process")

    # -- services for the endpoint ----------------------------------------------------
    def cancelled(self) -> bool:
        """True once the client of the request being run went away.

        A long ``_predict`` may poll it and stop early (return or raise: nobody reads the
        answer). A streaming ``_predict`` need not: its generator is closed
        (``GeneratorExit`` at its ``yield``) after the chunk in the making. Always False
        outside a request's own thread, in ``_predict_batch`` for one (a request whose
        client left before its batch formed is dropped from the batch instead).
        """
        flag: CancelFlag | None = getattr(_running, "flag", None)
        return flag is not None and flag.is_set

    def progress(self, data: dict[str, Any]) -> None:
        """Report how far a job got: a ``progress`` event of ``GET /jobs/<id>/events``
        with ``data`` (a dict, at most 64 KiB of JSON). Call it from ``_predict`` (or a
        streaming ``_predict``'s generator) while a job runs; it does nothing for a
        ``/run`` request or in ``_predict_batch``."""
        report = getattr(getattr(_running, "flag", None), "progress", None)
        if report is not None:
            report(data)

    def _create_notification(self, notif: str = "log", msg: str = "", **info: Any) -> None:
        """Publish a notification; the gateway lists recent ones at ``/notifications``."""
        self._notifier.send(Event.NOTIFICATION, endpoint=self.endpoint, worker_id=self.worker_id,
                            notif=notif, msg=str(msg), info=info, time=time.time())

    @staticmethod
    def file_response(data: bytes | None = None, path: str | None = None,
                      filename: str = "download.bin",
                      mimetype: str = "application/octet-stream") -> FileOutput:
        """Build a file download answer for ``_post_process`` to return."""
        if (data is None) == (path is None):
            raise ValueError("file_response needs exactly one of data= or path=")
        return FileOutput(data=data, path=path, filename=filename, mimetype=mimetype)
