"""The ``/run`` entry of an endpoint server worker process.

The event-loop worker hands each complete ``/run`` request to :meth:`RunEntry.answer`
(in its request thread): no WSGI environ, no routing. The job consumer runs jobs
through :meth:`RunEntry.execute`. Both run the worker's compute strategy (see
:mod:`.compute`) and shape what it gives into an answer: the endpoint's result with
the framework's metadata, an error, a file, or a streaming endpoint's chunks.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any
from urllib.parse import parse_qsl

from .. import protocol
from ..contracts import ServerSpec
from ..deadlines import MISSES, TypicalRun, deadline_at
from ..errors import BadRequest, DeadlineExceeded, MethodNotAllowed, ServingError
from ..models.setup import RequestModels
from ..names import split_target
from ..queues.base import Job
from ..streams import STREAM_HEADERS, Format, wanted
from ..tracing import MIN_STAGE_S, Trace, Tracer
from ..wire.message import Answer, Request, Streamed, threaded_chunks
from ..worker import CancelFlag, FileOutput, FlaskWorker, run_as
from . import timing
from .compute import Compute
from .stages import Chunks, StageError, decode_base64_fields, encode_base64_fields
from .streaming import ChunkStream, gathered, streamed
from .timing import StageTimes

log = logging.getLogger(__name__)

# Status, body (or a file to send) and extra headers of one /run answer.
Outcome = tuple[int, dict[str, Any] | FileOutput, list[tuple[str, str]]]
# Runs a /run request, given as a call, while the job consumer is kept off the model.
Guard = Callable[[Callable[[], Any]], Any]
# The answer of a file download (see app.py: Flask writes it).
FileAnswer = Callable[[Request, FileOutput], Answer]
RUN_METHODS = ("GET", "HEAD", "POST")


def log_failure(endpoint: str, err: ServingError, request_id: str | None) -> None:
    """Log a request the endpoint's code failed: once, with the traceback, when it is the
    code's fault (``_predict``, ``_post_process``: a 500); one line when ``_pre_process``
    refused the caller's input (a 400, the caller's fault)."""
    if not isinstance(err, StageError):
        return
    if err.status < 500:
        log.info("%s: request %s refused by %s: %s", endpoint, request_id or "-", err.stage,
                 err.message)
        return
    log.error("%s: request %s failed in %s", endpoint, request_id or "-", err.stage,
              exc_info=(type(err.cause), err.cause, err.cause.__traceback__))


class AnswerMeta:
    """Adds the framework's metadata to an endpoint's answer without losing its keys.

    The endpoint's own value of a key wins: the framework's value is dropped, with a
    warning logged once per key (and worker process).
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.warned: set[str] = set()

    def add(self, result: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        """``result`` with the server's metadata added; a key of the endpoint's own wins."""
        clash = meta.keys() & result.keys()
        if not clash:
            return {**result, **meta}
        for key in sorted(clash - self.warned):
            self.warned.add(key)
            log.warning("%s: the answer has its own %r, which the server's metadata of that "
                        "name would replace; the endpoint's value is kept and the metadata "
                        "dropped (logged once)", self.endpoint, key)
        return {**result, **{k: v for k, v in meta.items() if k not in clash}}


def _header(request: Request, name: bytes) -> str | None:
    """A request header's value (repeated ones joined by commas, as WSGI does)."""
    values = [v.decode("latin-1") for n, v in request.headers if n == name]
    return ",".join(values) if values else None


def traced_stages(trace: Trace, times: StageTimes, status: int,
                  server_timing: str | None = None) -> None:
    """The spans of a request's (or job's) stages that took :data:`..tracing.MIN_STAGE_S`
    or more, then its own span's end; with ``server_timing`` (its ``Server-Timing``
    value, when SERVER_TIMING made one) every stage in ``bis.server_timing``. (Formatting
    that value only for the span would cost a traced noop request a tenth of its CPU.)"""
    for name, started, ended in times.spans or ():
        if ended - started >= MIN_STAGE_S:
            trace.record(name, started, ended)
    attributes: dict[str, int | str] = {"http.response.status_code": status}
    if server_timing is not None:
        attributes["bis.server_timing"] = server_timing
    trace.end(attributes)


def _json(status: int, body: dict[str, Any], headers: Sequence[tuple[str, str]] = ()) -> Answer:
    return Answer(status, [("Content-Type", protocol.JSON), *headers], protocol.dumps(body))


class RunEntry:
    """``/run`` of one worker process: its worker, spec, answer metadata and strategy.

    ``guard``: set by the job consumer of the process, if any (see :mod:`.consumer`).
    ``files``: how a file download is answered.
    """

    def __init__(self, spec: ServerSpec, worker: FlaskWorker, compute: Compute,
                 files: FileAnswer, tracer: Tracer | None = None) -> None:
        self.spec = spec
        self.tracer = tracer  # TRACING: requests and jobs the front sampled are traced
        self.span_name = f"endpoint {spec.name}"
        self.worker = worker
        self.compute = compute
        self.files = files
        self.guard: Guard | None = None
        self.config = worker.config_data
        self.b64_in = list(self.config.get("BASE64_KEYS", []))
        self.b64_out = list(self.config.get("BASE64_OUTPUTS", []))
        self.worker_tag = f"{spec.name}:{worker.worker_id}"
        self.signature = f"{type(worker).__name__}:{worker.worker_id}"
        self.pid = os.getpid()
        self.models = RequestModels.for_worker(worker)
        self.own = AnswerMeta(spec.name)
        self.label = split_target(spec.name)[0]
        self.calls = itertools.count(1)
        self.typical = TypicalRun()  # for deadlines: a request that cannot end in time waits no more

    # -- the event loop's entry ----------------------------------------------------------
    def answer(self, request: Request, flag: CancelFlag | None = None,
               executor: Executor | None = None) -> Answer:
        """The answer to one complete ``/run`` request (blocking: call it off the loop).

        ``flag``: set by the caller when the client goes away. A streamed answer's chunks
        are each made in ``executor`` (without one, the chunks are gathered)."""
        trace = None if self.tracer is None else self.tracer.begin(
            self.span_name, request.headers, request.received, False)
        if not self.spec.server_timing and trace is None:
            return self._answer(request, flag, executor, None)
        times = timing.begin(request.received, spans=trace is not None)
        try:
            answer = self._answer(request, flag, executor, times)
        finally:
            timing.end()
        value = None
        if self.spec.server_timing:
            value = times.header()
            answer.headers.append(("Server-Timing", value))
        if trace is not None:
            traced_stages(trace, times, answer.status, value)
        return answer

    def traced_job(self, job: Job, run: Callable[[], Outcome]) -> Outcome:
        """Run a job (``run``), traced when its submit was sampled (its traceparent): a
        ``job`` span from its submit, its ``job queue`` wait, then its stages."""
        now = time.perf_counter()
        submitted = now - max(0.0, time.time() - job.submitted_at)
        trace = None if self.tracer is None else self.tracer.from_line(
            job.traceparent, f"job {self.spec.name}", submitted, **{"bis.job_id": job.id})
        if trace is None:
            return run()
        trace.record("job queue", submitted, now)
        times = timing.begin(now, spans=True)
        try:
            outcome = run()
        finally:
            timing.end()
        traced_stages(trace, times, outcome[0])
        return outcome

    def _answer(self, request: Request, flag: CancelFlag | None, executor: Executor | None,
                times: StageTimes | None) -> Answer:
        request_id = request.request_id
        try:
            deadline = deadline_at(request.headers, request.received)  # from our receipt
            if deadline is not None:
                flag = flag if flag is not None else CancelFlag()
                flag.deadline = deadline
            fields, fmt = self._fields(request)
            if times is not None:
                times.mark("decode")
            if executor is None:
                fmt = Format.GATHERED
            run = functools.partial(self._run, fields, _header(request, b"x-customer-id"),
                                    request_id, flag, fmt)
            result = run() if self.guard is None else self.guard(run)
            if times is not None:
                times.mark("compute")
        except ServingError as err:
            return _json(err.status, {**err.to_dict(), **self.meta(next(self.calls))},
                         err.headers())
        except Exception as exc:  # noqa: BLE001 - a bug of ours: a 500 that names it
            log.exception("%s: unexpected error while answering request %s", self.spec.name,
                          request_id or "-")
            failure = ServingError(f"{type(exc).__name__}: {exc}", EXCEPTION=type(exc).__name__)
            return _json(failure.status, failure.to_dict())
        if isinstance(result, Streamed):
            assert executor is not None
            return Answer(200, [("Content-Type", fmt.content_type), *STREAM_HEADERS],
                          stream=threaded_chunks(result, executor))
        status, body, headers = result
        if isinstance(body, FileOutput):
            return self.files(request, body)
        answer = _json(status, body, headers)
        if times is not None:
            times.mark("encode")
        return answer

    def _fields(self, request: Request) -> tuple[dict[str, Any], Format]:
        """The request's fields and the answer format it asks for; raises a 400 or 405.

        A GET's fields are its query's (first value of each); its answer is whole."""
        if request.method == "POST":
            fields = self.routed(protocol.parse_body(request.body))
            return fields, wanted(_header(request, b"accept"), fields.get("STREAM"))
        if request.method not in RUN_METHODS:
            raise MethodNotAllowed(f"{request.method} is not allowed on /run",
                                   allow=RUN_METHODS)
        fields = {}
        for key, value in parse_qsl(request.query, keep_blank_values=True):
            fields.setdefault(key, value)
        return self.routed(fields), Format.GATHERED

    def _run(self, inputs: dict[str, Any], customer: str | None, request_id: str | None,
             flag: CancelFlag | None, fmt: Format) -> Outcome | Streamed:
        status, body, headers, call_id = self.run_request(inputs, customer, request_id, flag)
        if isinstance(body, ChunkStream):
            return self.stream_answer(body, fmt, call_id, request_id)
        return status, body, headers

    # -- shared by requests and jobs -----------------------------------------------------
    def meta(self, call_id: int) -> dict[str, Any]:
        """The framework's metadata of answer ``call_id``."""
        out = protocol.base_meta(self.spec.server_name, self.spec.app_version)
        out.update(call_id=call_id, worker_id=self.worker_tag, worker_pid=self.pid,
                   signature=self.signature)
        return out

    def routed(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A ``/run``'s fields, unless their SIGNATURE names another endpoint (400).

        The front routes by the body's bytes; what runs is what they decode to, so a body
        decoding to another endpoint's SIGNATURE never runs here. Any version of this
        endpoint may be named (a shadow copy, a version's pinned request); a body without
        SIGNATURE runs (a direct call of a standalone server: the front always sends it)."""
        signature = inputs.get("SIGNATURE")
        if signature is not None and (not isinstance(signature, str)
                                      or split_target(signature)[0] != self.label):
            raise BadRequest(f"this server runs {self.spec.name}; the body's SIGNATURE is "
                             f"{repr(signature)[:80]}", SERVER_SIGNATURE=self.spec.name)
        return inputs

    def run_request(self, inputs: dict[str, Any], customer: str | None,
                    request_id: str | None, flag: CancelFlag | None
                    ) -> tuple[int, Any, list[tuple[str, str]], int]:
        """Run the strategy as the request of ``flag``: the answer's status, body (a dict,
        a :class:`FileOutput`, or the :class:`ChunkStream` of a streaming endpoint),
        extra headers and call id. The models the request needs are held while it runs
        (for a stream, until the stream is closed)."""
        call_id = next(self.calls)
        began = time.perf_counter()
        if flag is not None and flag.deadline is not None \
                and self.typical.too_late(flag.deadline, began):
            # It waited for a worker thread until it can no longer end in time.
            MISSES.labels(self.spec.name, "server").inc()
            return (*self.failed(call_id, request_id, DeadlineExceeded(
                f"the request's deadline is too close for it to end in time (runs take "
                f"about {self.typical.seconds * 1000:.0f} ms)", SIGNATURE=self.spec.name)),
                call_id)
        previous = run_as(flag)
        try:
            decode_base64_fields(inputs, self.b64_in)
            result = (self.compute.run(inputs) if self.models is None
                      else self._held(inputs, customer))
        except ServingError as err:
            return (*self.failed(call_id, request_id, err), call_id)
        finally:
            run_as(previous)
        if self.compute.concurrency == 1:  # its time is the run's (a batch's includes waiting)
            self.typical.add(time.perf_counter() - began)
        if not isinstance(result, dict):
            if isinstance(result, Chunks):
                return 200, ChunkStream(result, self.b64_out), [], call_id
            if isinstance(result, FileOutput):
                return 200, result, [], call_id
            result = {"result": result}
        encode_base64_fields(result, self.b64_out)
        return 200, self.own.add(result, self.meta(call_id)), [], call_id

    def _held(self, inputs: dict[str, Any], customer: str | None) -> Any:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.models.hold(inputs, customer))  # type: ignore[union-attr]
            result = self.compute.run(inputs)
            if isinstance(result, Chunks):
                result.release = stack.pop_all().close
            return result

    def failed(self, call_id: int, request_id: str | None, err: ServingError) -> Outcome:
        """The error answer of a request the endpoint failed (logged once)."""
        log_failure(self.spec.name, err, request_id)
        return err.status, {**err.to_dict(), **self.meta(call_id)}, err.headers()

    def execute(self, inputs: dict[str, Any], customer: str | None = None,
                request_id: str | None = None, flag: CancelFlag | None = None,
                each: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
        """What ``/run`` answers to a request's fields (a job's): a streaming endpoint's
        chunks gathered (see :mod:`.streaming`), each also given to ``each`` as it comes.
        ``flag``: the request's (a job's: it may be cancelled)."""
        status, body, headers, call_id = self.run_request(inputs, customer, request_id, flag)
        if isinstance(body, ChunkStream):
            return self.gather_answer(body, call_id, request_id, each)
        return status, body, headers

    def gather_answer(self, stream: ChunkStream, call_id: int, request_id: str | None,
                      each: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
        """A streaming endpoint's chunks in one answer (see :func:`.streaming.gathered`)."""
        try:
            return 200, gathered(stream, lambda: self.meta(call_id), each), []
        except ServingError as err:
            return self.failed(call_id, request_id, err)

    def stream_answer(self, stream: ChunkStream, fmt: Format, call_id: int,
                      request_id: str | None) -> Outcome | Streamed:
        """A streaming endpoint's answer: its first chunk taken here, in the request's
        thread (an error until then is a whole error answer), or all of them gathered."""
        if fmt is Format.GATHERED:
            return self.gather_answer(stream, call_id, request_id)
        try:
            first = stream.take()
        except BaseException as exc:
            stream.close()
            if isinstance(exc, ServingError):
                return self.failed(call_id, request_id, exc)
            raise
        return streamed(stream, fmt, first, lambda: self.meta(call_id),
                        lambda err: log_failure(self.spec.name, err, request_id))
