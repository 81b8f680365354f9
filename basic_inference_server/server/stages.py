"""The stages of one request: one place calls the worker's hooks and classifies errors.

A ``_predict`` that returns an iterator or an async iterator streams: the stages then
give :class:`Chunks`, whose items go through ``_post_process`` one by one as they are
taken.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ..errors import BadRequest, ServingError
from ..worker import FlaskWorker, run_as, running_flag

log = logging.getLogger(__name__)
# What a streaming _predict returns.
STREAMS = (Iterator, AsyncIterator)
END = object()  # Chunks.take's answer once the producer is exhausted
# Whether the values of a type stream, by type: a dict lookup on each prediction, not
# an ABC check (which costs ten times more). Bounded: types are few.
_STREAMING: dict[type, bool] = {}
_MAX_TYPES = 256


def is_stream(pred: Any) -> bool:
    """Whether a prediction is a stream: an iterator or an async iterator."""
    kind = type(pred)
    streaming = _STREAMING.get(kind)
    if streaming is None:
        streaming = isinstance(pred, STREAMS)
        if len(_STREAMING) < _MAX_TYPES:
            _STREAMING[kind] = streaming
    return streaming


def _nothing() -> None:
    pass


class StageError(ServingError):
    """An exception raised by one of the worker's hooks, with where it happened."""

    def __init__(self, stage: str, exc: BaseException) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        last = frames[-1] if frames else None
        super().__init__(
            f"{type(exc).__name__} in {stage}: {exc}",
            EXCEPTION=type(exc).__name__,
            ERROR_MESSAGE=str(exc),
            ERROR_STAGE=stage,
            ERROR_FILE=last.filename if last else None,
            ERROR_LINE=last.lineno if last else None,
        )
        self.stage = stage
        self.cause = exc  # its traceback is logged by the server (the caller gets the summary)
        # _pre_process checks the caller's input: its failures are the caller's fault.
        self.status = 400 if stage == "_pre_process" else 500
        self.kind = "bad_request" if self.status == 400 else "endpoint_error"


def decode_base64_fields(inputs: dict[str, Any], keys: list[str]) -> None:
    """Decode the configured base64 input fields in place (400 on bad base64)."""
    for key in keys:
        if key in inputs and isinstance(inputs[key], str):
            try:
                inputs[key] = base64.b64decode(inputs[key], validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(f"field {key} is not valid base64", FIELD=key) from None


def encode_base64_fields(result: dict[str, Any], keys: list[str]) -> None:
    """Base64-encode the bytes of ``result``'s fields ``keys`` (BASE64_OUTPUTS), in place."""
    for key in keys:
        value = result.get(key)
        if isinstance(value, (bytes, bytearray)):
            result[key] = base64.b64encode(value).decode("ascii")


def run_stages(worker: FlaskWorker, inputs: dict[str, Any]) -> Any:
    """``_pre_process -> _predict -> _post_process``; raises :class:`StageError`.

    :class:`Chunks` when ``_predict`` streams."""
    stage = "_pre_process"
    try:
        prep = worker._pre_process(inputs)
        stage = "_predict"
        pred = worker._predict(prep)
        if is_stream(pred):
            return Chunks(worker, pred)
        stage = "_post_process"
        return worker._post_process(pred)
    except ServingError:
        raise  # already an answer (a model the request needs is unavailable: 429)
    except Exception as exc:
        raise StageError(stage, exc) from exc


def pre_process(worker: FlaskWorker, inputs: dict[str, Any]) -> Any:
    """``_pre_process`` of one request's fields; raises :class:`StageError` (a 400)."""
    return _in_stage("_pre_process", worker._pre_process, inputs)


def post_process(worker: FlaskWorker, pred: Any) -> Any:
    """``_post_process`` of one prediction (:class:`Chunks` for a stream); raises
    :class:`StageError`."""
    if is_stream(pred):
        return Chunks(worker, pred)
    return _in_stage("_post_process", worker._post_process, pred)


def _in_stage(stage: str, hook: Callable[[Any], Any], value: Any) -> Any:
    """``hook(value)``, an exception of endpoint code becoming the stage's
    :class:`StageError` (a :class:`ServingError` is already an answer)."""
    try:
        return hook(value)
    except ServingError:
        raise
    except Exception as exc:
        raise StageError(stage, exc) from exc


class Chunks:
    """The items of a streaming ``_predict``, each through ``_post_process`` when taken.

    Taken one at a time from any request thread, as the request they belong to (the one
    running when the stream was made: :meth:`FlaskWorker.cancelled` reads its flag). An
    async iterator is stepped on a private event loop, closed (``aclose``) on it too.
    ``release`` lets go of what the request held for the stream's life (its models).
    """

    def __init__(self, worker: FlaskWorker, produced: Iterator[Any] | AsyncIterator[Any]) -> None:
        self.worker = worker
        self.produced = produced
        self.flag = running_flag()
        self.loop = asyncio.new_event_loop() if isinstance(produced, AsyncIterator) else None
        self.closed = False
        self.release: Callable[[], Any] = _nothing

    def take(self) -> Any:
        """The next item after ``_post_process``, or :data:`END`; raises :class:`StageError`."""
        previous = run_as(self.flag)
        try:
            item = self._step()
            if item is END:
                return END
            return post_process(self.worker, item)
        finally:
            run_as(previous)

    def _step(self) -> Any:
        try:
            if self.loop is None:
                return next(self.produced)  # type: ignore[arg-type]
            return self.loop.run_until_complete(self.produced.__anext__())  # type: ignore[union-attr]
        except (StopIteration, StopAsyncIteration):
            return END
        except ServingError:
            raise
        except Exception as exc:
            raise StageError("_predict", exc) from exc

    def close(self) -> None:
        """Close the producer (``GeneratorExit`` at its ``yield``); once, errors logged."""
        if self.closed:
            return
        self.closed = True
        previous = run_as(self.flag)
        try:
            if self.loop is None:
                getattr(self.produced, "close", lambda: None)()
            else:
                self._close_async(self.loop)
        except Exception:  # noqa: BLE001 - the endpoint's cleanup failing ends nothing else
            log.exception("%s: closing a stream's producer failed", self.worker.endpoint)
        finally:
            run_as(previous)
            self.release()

    def _close_async(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            aclose = getattr(self.produced, "aclose", None)
            if aclose is not None:
                loop.run_until_complete(aclose())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
