"""What one endpoint server worker process serves.

Built after the fork, in the worker: it imports the endpoint file, builds the user's
worker once and loads its model once. ``/run`` is the :class:`.entry.RunEntry`, called
by the event-loop worker directly; Flask serves the other routes (``/health``, the
JSON errors of unknown paths) and writes file downloads.
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, send_file

from .. import protocol
from ..artifacts import ModelIntegrityError, ModelRef, ModelRefError, artifact_cache
from ..config import endpoint_defaults, warn_near_misses
from ..contracts import ServerSpec
from ..discovery import load_worker_class
from ..errors import ServingError
from ..flask_errors import install_json_errors
from ..ipc import Notifier
from ..models.memory import MB
from ..models.setup import build_manager
from ..tracing import Tracer, TracingSpec
from ..wire.message import Answer, Request, call_wsgi
from ..worker import FileOutput, FlaskWorker
from .compute import choose_compute
from .entry import FileAnswer, RunEntry
from .timing import time_hooks

log = logging.getLogger(__name__)


@dataclass
class WorkerApp:
    """What a worker process serves: ``/run`` (``entry``) and the rest (``flask``)."""

    entry: RunEntry
    flask: Flask


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
    if spec.worker_config.get("MODEL"):
        worker.model_path = fetch_model(spec, worker)
    log.info("%s worker %d: loading model (%s)", spec.name, slot, cls.__name__)
    size = 0
    if type(worker)._load_model is not FlaskWorker._load_model:  # the default loads nothing
        size = worker.models.load_endpoint_model(worker._load_model, worker)
    worker.models.preload(worker.config_data.get("PRELOAD_MODELS") or [])
    loaded = time.perf_counter()
    log.info("%s worker %d: model loaded in %.3f s (%.1f MB)", spec.name, slot,
             loaded - started, size / MB)
    worker._warmup()
    if type(worker)._warmup is not FlaskWorker._warmup:
        log.info("%s worker %d: warmed up in %.3f s", spec.name, slot,
                 time.perf_counter() - loaded)
    return worker


def fetch_model(spec: ServerSpec, worker: FlaskWorker) -> Path:
    """The endpoint's MODEL in the box's cache (downloaded once per box), verified.

    A missing or corrupt artifact raises ModelIntegrityError (the load fails with
    ``model_integrity``) after a notification says which file and why.
    """
    ref = ModelRef.parse(spec.worker_config["MODEL"])
    if spec.models is None:
        raise ModelRefError(f"{spec.name}: MODEL {ref} needs a MODEL_REPOSITORY")
    started = time.perf_counter()
    try:
        path = artifact_cache(spec.models).path(ref)
    except ModelIntegrityError as exc:
        worker._create_notification(notif="model_integrity", msg=str(exc), model=str(ref))
        raise
    log.info("%s worker %d: model %s ready at %s in %.3f s", spec.name, worker.worker_id, ref,
             path, time.perf_counter() - started)
    return path


def build_app(spec: ServerSpec, worker: FlaskWorker) -> WorkerApp:
    """The ``/run`` entry, its strategy chosen now, and the Flask app of ``worker``."""
    flask = create_app(spec, worker)
    compute = choose_compute(worker)
    # (Built here, in the worker after the fork: the exporter's thread is this process's.)
    tracer = Tracer(TracingSpec(**spec.tracing), "server") if spec.tracing else None
    if spec.server_timing or tracer is not None:
        time_hooks(worker)
    return WorkerApp(RunEntry(spec, worker, compute, file_answers(flask), tracer), flask)


def create_app(spec: ServerSpec, worker: FlaskWorker) -> Flask:
    """The Flask app serving ``/health`` (and JSON errors) for one worker process."""
    app = Flask(f"bis-server-{spec.name}")
    worker_tag = f"{spec.name}:{worker.worker_id}"
    pid = os.getpid()

    def answer(status: int, body: dict[str, Any], headers: list[tuple[str, str]] = ()) -> Response:  # type: ignore[assignment]
        return Response(protocol.dumps(body), status=status, headers=list(headers),
                        mimetype=protocol.JSON)

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


def file_answers(app: Flask) -> FileAnswer:
    """File downloads written by Flask (``send_file``: conditional requests, ranges)."""

    def answer(request: Request, out: FileOutput) -> Answer:
        def send(environ: dict[str, Any], start_response: Any) -> Any:
            with app.request_context(environ):
                return _file_answer(out)(environ, start_response)

        return call_wsgi(send, request)

    return answer


def _file_answer(out: FileOutput) -> Response:
    """A download; werkzeug writes Content-Disposition with RFC 6266 quoting and an
    RFC 5987 ``filename*`` for names outside ASCII. Control characters could only break
    the header, so they become ``_``."""
    name = "".join("_" if ord(c) < 32 or ord(c) == 127 else c for c in out.filename)
    source = out.path if out.path is not None else io.BytesIO(out.data or b"")
    return send_file(source, mimetype=out.mimetype, as_attachment=True, download_name=name)
