"""An endpoint server worker process's app built in-process: no gunicorn, no sockets.

``/run`` is answered by :meth:`RunEntry.answer`, as the event-loop worker calls it;
other paths by the Flask app (its test client)."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from basic_inference_server.contracts import ServerSpec
from basic_inference_server.ipc import Notifier
from basic_inference_server.server.app import WorkerApp, build_app, build_worker
from basic_inference_server.wire.message import Answer, Request
from basic_inference_server.worker import CancelFlag
from tests.conftest import FIXTURE_ENDPOINTS


def build(module: str, endpoints: Path = FIXTURE_ENDPOINTS, name: str | None = None,
          **worker_config: Any) -> WorkerApp:
    """The app of endpoint ``name`` (default: the module's name) running ``module``."""
    spec = ServerSpec(name=name or module, module=module, endpoints_dir=str(endpoints),
                      host="127.0.0.1", port=0, socket="", nr_workers=1,
                      worker_config=worker_config, server_name="unit-box", app_version="9.9")
    return build_app(spec, build_worker(spec, 0, Notifier(None)))


def request(fields: dict[str, Any] | None = None, accept: str | None = None,
            method: str = "POST", query: str = "", body: bytes | None = None) -> Request:
    headers = [(b"content-type", b"application/json")]
    if accept:
        headers.append((b"accept", accept.encode()))
    if body is None:
        body = json.dumps(fields).encode() if fields is not None else b""
    return Request(method, "/run", query, headers, body, "rid-1", True, ("127.0.0.1", 1))


def call(app: WorkerApp, req: Request, flag: CancelFlag | None = None
         ) -> tuple[Answer, list[bytes]]:
    """The answer and, for a stream, every chunk of it (the stream then closed)."""
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(app.entry.answer, req, flag, pool).result()
        chunks: list[bytes] = []
        if answer.stream is not None:
            async def drain() -> None:
                assert answer.stream is not None
                chunks.extend([c async for c in answer.stream])
            asyncio.run(drain())
    return answer, chunks


def post(app: WorkerApp, fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of a ``POST /run``."""
    answer, _chunks = call(app, request(fields))
    return answer.status, json.loads(answer.body)


def header(answer: Answer, name: str) -> str | None:
    return next((v for k, v in answer.headers if k.lower() == name.lower()), None)
