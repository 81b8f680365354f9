"""The WSGI app of one endpoint server worker process.

Built after the fork, in the worker: it imports the endpoint file, builds the user's
worker once and loads its model once. Each request then runs the pipeline.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, request, send_file

from .. import protocol
from ..config import endpoint_defaults, warn_near_misses
from ..contracts import ServerSpec
from ..discovery import load_worker_class
from ..errors import BadRequest, ServingError
from ..flask_errors import install_json_errors
from ..ipc import Notifier
from ..models.setup import RequestModels, build_manager
from ..serving.message import Streamed
from ..streams import STREAM_HEADERS, Format, wanted
from ..traffic.settings import split_target
from ..worker import CancelFlag, FileOutput, FlaskWorker, run_as
from .batching import Batcher
from .pipeline import Chunks, StageError, decode_base64_fields, encode_base64_fields, run_pipeline
from .streaming import ChunkStream, gathered, streamed

log = logging.getLogger(__name__)

# Status, body (or a file to send) and extra headers of one /run answer.
Outcome = tuple[int, dict[str, Any] | FileOutput, list[tuple[str, str]]]
_STATUS = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


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
        clash = meta.keys() & result.keys()
        if not clash:
            return {**result, **meta}
        for key in sorted(clash - self.warned):
            self.warned.add(key)
            log.warning("%s: the answer has its own %r, which the server's metadata of that "
                        "name would replace; the endpoint's value is kept and the metadata "
                        "dropped (logged once)", self.endpoint, key)
        return {**result, **{k: v for k, v in meta.items() if k not in clash}}



def build_worker(spec: ServerSpec, slot: int, notifier: Notifier,
                 source: bytes | None = None) -> FlaskWorker:
    """Import the endpoint, build its worker and load its model (timed and logged).

    Configuration layers, later wins: framework defaults, the module's ``_CONFIG``,
    the endpoint's section of the gateway configuration.
    """
    cls, module_config = load_worker_class(spec.endpoints_dir, spec.module, source)
    if slot == 0:  # once per server start, not once per worker
        warn_near_misses(spec.name, spec.worker_config, module_config)
    defaults = {**endpoint_defaults(), **module_config}
    worker = cls(default_config=defaults, upstream_config=spec.worker_config,
                 worker_id=slot, endpoint=spec.name, notifier=notifier)
    worker.models = build_manager(worker)
    started = time.perf_counter()
    log.info("%s worker %d: loading model (%s)", spec.name, slot, cls.__name__)
    worker._load_model()
    worker.models.preload(worker.config_data.get("PRELOAD_MODELS") or [])
    log.info("%s worker %d: model loaded in %.3f s", spec.name, slot,
             time.perf_counter() - started)
    return worker


def create_app(spec: ServerSpec, worker: FlaskWorker) -> Flask:
    """The Flask app serving ``/run`` and ``/health`` for one worker process."""
    app = Flask(f"bis-server-{spec.name}")
    counter = itertools.count(1)
    cfg = worker.config_data
    b64_in = list(cfg.get("BASE64_KEYS", []))
    b64_out = list(cfg.get("BASE64_OUTPUTS", []))
    worker_tag = f"{spec.name}:{worker.worker_id}"
    signature = f"{type(worker).__name__}:{worker.worker_id}"
    pid = os.getpid()
    models = RequestModels.for_worker(worker)
    own = AnswerMeta(spec.name)
    label = split_target(spec.name)[0]
    batch_size = int(cfg.get("MAX_BATCH_SIZE") or 1)
    if batch_size > 1:
        compute = Batcher(worker, batch_size, float(cfg.get("MAX_BATCH_DELAY_MS", 5)) / 1000).run
    else:
        def compute(inputs: dict[str, Any]) -> Any:
            return run_pipeline(worker, inputs)

    def meta(call_id: int) -> dict[str, Any]:
        out = protocol.base_meta(spec.server_name, spec.app_version)
        out.update(call_id=call_id, worker_id=worker_tag, worker_pid=pid, signature=signature)
        return out

    def answer(status: int, body: dict[str, Any], headers: list[tuple[str, str]] = ()) -> Response:  # type: ignore[assignment]
        return Response(protocol.dumps(body), status=status, headers=list(headers),
                        mimetype=protocol.JSON)

    def routed(inputs: dict[str, Any]) -> dict[str, Any]:
        """A ``/run``'s fields, unless their SIGNATURE names another endpoint (400).

        The front routes by the body's bytes; what runs is what they decode to, so a body
        decoding to another endpoint's SIGNATURE never runs here. Any version of this
        endpoint may be named (a shadow copy, a version's pinned request); a body without
        SIGNATURE runs (a direct call of a standalone server: the front always sends it)."""
        signature = inputs.get("SIGNATURE")
        if signature is not None and (not isinstance(signature, str)
                                      or split_target(signature)[0] != label):
            raise BadRequest(f"this server runs {spec.name}; the body's SIGNATURE is "
                             f"{repr(signature)[:80]}", SERVER_SIGNATURE=spec.name)
        return inputs

    def held(inputs: dict[str, Any], customer: str | None) -> Any:
        """``compute`` with the models the request needs held: until it is answered, or
        for a stream until the stream is closed."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(models.hold(inputs, customer))  # type: ignore[union-attr]
            result = compute(inputs)
            if isinstance(result, Chunks):
                result.release = stack.pop_all().close
            return result

    def run_request(inputs: dict[str, Any], customer: str | None, request_id: str | None,
                    flag: CancelFlag | None) -> tuple[int, Any, list[tuple[str, str]], int]:
        """Run the pipeline: the answer's status, body (a dict, a :class:`FileOutput`, or
        the :class:`ChunkStream` of a streaming endpoint), extra headers and call id."""
        call_id = next(counter)
        previous = run_as(flag)
        try:
            decode_base64_fields(inputs, b64_in)
            result = compute(inputs) if models is None else held(inputs, customer)
        except ServingError as err:
            return (*failed(call_id, request_id, err), call_id)
        finally:
            run_as(previous)
        if not isinstance(result, dict):
            if isinstance(result, Chunks):
                return 200, ChunkStream(result, b64_out), [], call_id
            if isinstance(result, FileOutput):
                return 200, result, [], call_id
            result = {"result": result}
        encode_base64_fields(result, b64_out)
        return 200, own.add(result, meta(call_id)), [], call_id

    def failed(call_id: int, request_id: str | None, err: ServingError) -> Outcome:
        """The error answer of a request the pipeline failed (logged once)."""
        log_failure(spec.name, err, request_id)
        return err.status, {**err.to_dict(), **meta(call_id)}, err.headers()

    def gather_answer(stream: ChunkStream, call_id: int, request_id: str | None,
                      each: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
        """A streaming endpoint's chunks in one answer (see :func:`.streaming.gathered`)."""
        try:
            return 200, gathered(stream, lambda: meta(call_id), each), []
        except ServingError as err:
            return failed(call_id, request_id, err)

    def execute(inputs: dict[str, Any], customer: str | None = None,
                request_id: str | None = None, flag: CancelFlag | None = None,
                each: Callable[[dict[str, Any]], None] | None = None) -> Outcome:
        """Run the pipeline on a request's fields: what ``/run`` answers (or a file); a
        streaming endpoint's chunks gathered (see :mod:`.streaming`), each also given to
        ``each`` as it comes. ``flag``: the request's (a job's: it may be cancelled).

        The models the request needs (see :mod:`..models`) are held while it runs.
        """
        status, body, headers, call_id = run_request(inputs, customer, request_id, flag)
        if isinstance(body, ChunkStream):
            return gather_answer(body, call_id, request_id, each)
        return status, body, headers

    def stream_answer(stream: ChunkStream, fmt: Format, call_id: int,
                      request_id: str | None) -> Outcome | Streamed:
        """A streaming endpoint's answer: its first chunk taken here, in the request's
        thread (an error until then is a whole error answer), or all of them gathered."""
        if fmt is Format.GATHERED:
            return gather_answer(stream, call_id, request_id)
        try:
            first = stream.take()
        except BaseException as exc:
            stream.close()
            if isinstance(exc, ServingError):
                return failed(call_id, request_id, exc)
            raise
        return streamed(stream, fmt, first, lambda: meta(call_id),
                        lambda err: log_failure(spec.name, err, request_id))

    @app.route("/run", methods=["GET", "POST"])
    def run() -> Response:
        try:
            if request.method == "GET":
                inputs: dict[str, Any] = routed(request.args.to_dict())
            else:
                inputs = routed(protocol.parse_body(request.get_data(cache=False)))
        except ServingError as err:
            return answer(err.status, {**err.to_dict(), **meta(next(counter))}, err.headers())
        status, body, headers = execute(inputs, request.headers.get("X-Customer-ID"),
                                        request.headers.get("X-Request-ID"))
        if isinstance(body, FileOutput):
            return _file_answer(body)
        return answer(status, body, headers)

    flask_wsgi = app.wsgi_app

    def plain_run(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """``POST /run`` ahead of Flask: it is on every request's path and needs no
        routing or request object. The body is decoded once (``protocol.parse_body``)."""
        if environ.get("PATH_INFO") != "/run" or environ["REQUEST_METHOD"] != "POST":
            return flask_wsgi(environ, start_response)  # type: ignore[no-any-return]
        request_id = environ.get("HTTP_X_REQUEST_ID")
        try:
            size = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(size) if size > 0 else b""
            inputs = routed(protocol.parse_body(raw))
            status, body, headers, call_id = run_request(
                inputs, environ.get("HTTP_X_CUSTOMER_ID"), request_id, environ.get("bis.cancel"))
            if isinstance(body, ChunkStream):
                fmt = wanted(environ.get("HTTP_ACCEPT"), inputs.get("STREAM"))
                answered = stream_answer(body, fmt, call_id, request_id)
                if isinstance(answered, Streamed):
                    start_response("200 OK", [("Content-Type", fmt.content_type),
                                              *STREAM_HEADERS])
                    return answered
                status, body, headers = answered
        except ServingError as err:
            status, body, headers = err.status, {**err.to_dict(), **meta(next(counter))}, \
                err.headers()
        except Exception as exc:  # noqa: BLE001 - a bug of ours: a 500 that names it
            log.exception("%s: unexpected error while answering request %s", spec.name,
                          request_id or "-")
            failure = ServingError(f"{type(exc).__name__}: {exc}", EXCEPTION=type(exc).__name__)
            status, body, headers = failure.status, failure.to_dict(), []
        if isinstance(body, FileOutput):
            with app.request_context(environ):
                return _file_answer(body)(environ, start_response)  # type: ignore[no-any-return]
        data = protocol.dumps(body)
        start_response(_STATUS.get(status) or f"{status} Unknown",
                       [("Content-Type", protocol.JSON), ("Content-Length", str(len(data))),
                        *headers])
        return [data]

    app.wsgi_app = plain_run  # type: ignore[method-assign]
    # The job consumer of this worker process runs jobs through the same pipeline.
    app.extensions["bis"] = {"execute": execute, "config": cfg}

    @app.get("/health")
    def health() -> Response:
        return answer(200, {"status": "ready", "endpoint": spec.name, "worker_id": worker_tag,
                            "pid": pid, "generation": spec.generation})

    install_json_errors(app, answer, f"on the {spec.name} endpoint server")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("%s: unexpected error while answering", spec.name)
        err = ServingError(f"{type(exc).__name__}: {exc}", EXCEPTION=type(exc).__name__)
        return answer(err.status, err.to_dict())

    return app


def _file_answer(out: FileOutput) -> Response:
    """A download; werkzeug writes Content-Disposition with RFC 6266 quoting and an
    RFC 5987 ``filename*`` for names outside ASCII. Control characters could only break
    the header, so they become ``_``."""
    name = "".join("_" if ord(c) < 32 or ord(c) == 127 else c for c in out.filename)
    source = out.path if out.path is not None else io.BytesIO(out.data or b"")
    return send_file(source, mimetype=out.mimetype, as_attachment=True, download_name=name)
