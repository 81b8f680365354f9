"""Pipelines in the front: a pipeline route runs here, each step through the front's own
routing and forwarding (:mod:`..traffic.pipeline` does the running).

A step is a request like any other to its endpoint: the traffic policy picks its
version (sticky by the caller's tenant, or the step body's ``STICKY_FIELD``), its
``MAX_IN_FLIGHT`` and ``TIMEOUT`` apply, its shadow (if any) gets a copy, and it is
counted in the metrics under its own endpoint. It carries the pipeline request's
``X-Request-ID`` and tenant. The caller's API key is checked (scope, limits, quota)
once, for the pipeline; units the steps report (``USAGE``) add up to the pipeline's.

A pipeline may call another pipeline, but not itself: a chain of nested pipelines
that comes back to one already running, or goes deeper than ``MAX_NESTING``, fails.

A pipeline answers one JSON object: a caller that asks it for a stream (``Accept:
text/event-stream`` or ``application/x-ndjson``, ``"STREAM": true``) gets 400, and a
step that answers with a stream (its body asked for one) fails the pipeline (502). A
streaming endpoint called as a step without asking gives its chunks gathered
(``CHUNKS``), which later steps can use.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import orjson

from .. import protocol, streams
from ..errors import BadRequest, ServingError, StepFailed, UpstreamTimeout
from ..serving.connection import Request
from ..traffic.pipeline import BAD_GATEWAY, run_pipeline
from ..traffic.settings import split_target
from . import metrics
from .upstream import UpstreamResponse

if TYPE_CHECKING:
    from .app import Front

MAX_NESTING = 8
# Bodies this large are decoded off the event loop.
DECODE_OFF_LOOP = 1024 * 1024
# The pipelines running in this task, outermost first (steps' tasks inherit it).
_CHAIN: ContextVar[tuple[str, ...]] = ContextVar("bis_pipeline_chain", default=())
JSON_HEADERS = [(b"content-type", protocol.JSON.encode())]


def _answer_of(resp: UpstreamResponse) -> tuple[int, dict[str, Any]]:
    """A step's status and decoded answer; a 200 that is not a JSON object, or holds more
    values than a request may (:data:`..protocol.MAX_JSON_ELEMENTS`), is a 502."""
    if protocol.json_elements_over(resp.body):
        return BAD_GATEWAY, {"ERROR": f"the step answered more than {protocol.MAX_JSON_ELEMENTS} "
                                      "values, more than a pipeline decodes",
                             "ERROR_TYPE": "internal_error",
                             "MAX_JSON_ELEMENTS": protocol.MAX_JSON_ELEMENTS}
    try:
        answer = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        answer = None
    if isinstance(answer, dict):
        return resp.status, answer
    if resp.status == 200:
        return BAD_GATEWAY, {"ERROR": "the step answered something other than a JSON object "
                                      "(a file?): a pipeline passes JSON between steps",
                             "ERROR_TYPE": "internal_error"}
    return resp.status, {"ERROR": f"HTTP {resp.status} without a JSON error",
                         "ERROR_TYPE": "internal_error"}


class PipelineRun:
    """One pipeline request: runs its steps through ``front`` and adds up their units."""

    def __init__(self, front: Front, req: Request) -> None:
        self.front = front
        self.req = req
        self.units: float | None = None

    async def call(self, signature: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Run one step as the front runs a ``/run``: pick the version, resolve, forward."""
        raw = protocol.dumps({**body, "SIGNATURE": signature})
        label, version = split_target(signature)
        started = time.perf_counter()
        try:
            target = self.front._pick(signature, version, raw, self.req)
            version = split_target(target)[1]
            resp = await self.front.dispatch(target, raw, self.req)
        except ServingError as err:
            metrics.count_request(label, version, err.status)
            return err.status, err.to_dict()
        if resp.stream is not None:
            await resp.stream.aclose()  # closes the step's connection: its work stops
            metrics.count_request(label, version, BAD_GATEWAY)
            return BAD_GATEWAY, {"ERROR": "the step answered a stream: a pipeline passes whole "
                                          "JSON answers between steps (leave STREAM out of its "
                                          "body)", "ERROR_TYPE": "internal_error"}
        metrics.count_request(label, version, resp.status)
        metrics.time_request(label, version, time.perf_counter() - started)
        self.front._mirror(label, version, raw, self.req, resp)
        status, answer = _answer_of(resp)
        units = answer.pop("USAGE", None) if status == 200 else None
        if isinstance(units, (int, float)) and not isinstance(units, bool) and units >= 0:
            self.units = (self.units or 0.0) + units
        return status, answer


async def run_route(front: Front, route: dict[str, Any], name: str, raw: bytes,
                    req: Request) -> UpstreamResponse:
    """Answer a ``/run`` of the pipeline ``name`` (its route holds the PIPELINE)."""
    chain = _CHAIN.get()
    if name in chain or len(chain) >= MAX_NESTING:
        path = " -> ".join((*chain, name))
        raise StepFailed(f"pipeline {name} is called by its own steps, or pipelines nest deeper "
                         f"than {MAX_NESTING}: {path}", status=BAD_GATEWAY, CHAIN=[*chain, name])
    body = await front.off_loop(protocol.parse_body, raw) if len(raw) > DECODE_OFF_LOOP \
        else protocol.parse_body(raw)
    accept = next((v.decode("latin-1") for h, v in req.headers if h == b"accept"), None)
    if streams.wanted(accept, body.get("STREAM")) is not streams.Format.GATHERED:
        raise BadRequest(f"pipeline {name} answers one JSON object, not a stream: ask without "
                         "Accept: text/event-stream or application/x-ndjson and without "
                         '"STREAM": true', SIGNATURE=name)
    run = PipelineRun(front, req)
    timeout = float(route["timeout"])
    token = _CHAIN.set((*chain, name))
    try:
        result = await asyncio.wait_for(run_pipeline(route["pipeline"], body, run.call), timeout)
    except asyncio.TimeoutError:
        raise UpstreamTimeout(f"pipeline {name} did not finish within its TIMEOUT of "
                              f"{timeout:g} s", SIGNATURE=name, TIMEOUT=timeout) from None
    finally:
        _CHAIN.reset(token)
    answer = result.answer()
    if run.units is not None:
        answer["USAGE"] = run.units
    return UpstreamResponse(status=200, headers=list(JSON_HEADERS),
                            body=protocol.dumps(answer), worker="pipeline")
