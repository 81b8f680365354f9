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

A pipeline answers one JSON object, unless its caller asks for a stream (``Accept:
text/event-stream`` or ``application/x-ndjson``, ``"STREAM": true``): then the steps
before the final one run as always, the final step (the last of STEPS, which no other
step may need) is asked for a stream, and its stream is relayed to the caller as it
comes (OUTPUT does not apply to it). A final step whose endpoint answers whole gives
the pipeline's usual JSON answer. Any other step that answers with a stream (its body
asked for one) fails the pipeline (502). A streaming endpoint called as a step without
asking gives its chunks gathered (``CHUNKS``), which later steps can use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .. import protocol, streams
from ..contracts import Route
from ..errors import BadRequest, ServingError, StepFailed, UpstreamTimeout
from ..tracing import restore
from ..traffic.pipeline import (
    BAD_GATEWAY,
    Execution,
    Pipeline,
    PipelineResult,
    Step,
    parse_pipeline,
    run_pipeline,
)
from ..wire.message import Request
from . import metrics
from .run_plan import wanted_format
from .upstream_conn import UpstreamResponse

if TYPE_CHECKING:
    from .run_flow import RunFlow

MAX_NESTING = 8
# Bodies this large are decoded off the event loop.
DECODE_OFF_LOOP = 1024 * 1024
# The pipelines running in this task, outermost first (steps' tasks inherit it).
_CHAIN: ContextVar[tuple[str, ...]] = ContextVar("bis_pipeline_chain", default=())
JSON_HEADERS = [(b"content-type", protocol.JSON.encode())]
# What a step that answered a stream where it may not counts as.
STREAMED = (BAD_GATEWAY, {"ERROR": "the step answered a stream: a pipeline passes whole JSON "
                                   "answers between steps (leave STREAM out of its body)",
                          "ERROR_TYPE": "internal_error"})


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


@dataclass
class StreamedPipeline(UpstreamResponse):
    """A pipeline's final step's stream, with the units its earlier steps reported."""

    units_before: float = 0.0


def _without_accept(req: Request) -> Request:
    """The request as its steps before the final one see it: no stream asked for."""
    return dataclasses.replace(req, headers=[(h, v) for h, v in req.headers if h != b"accept"])


class PipelineRun:
    """One pipeline request: runs its steps through ``flow`` and adds up their units."""

    def __init__(self, flow: RunFlow, req: Request, streams: bool = False) -> None:
        self.flow = flow
        self.req = req
        self.streams = streams  # its steps may answer with a stream (the final one)
        self.units: float | None = None

    async def step(self, signature: str, body: dict[str, Any]) -> UpstreamResponse | None:
        """Run one step as a ``/run`` runs (pick the version, resolve, forward) and count
        it; its answer, whole or (where :attr:`streams`) a stream; None: a stream where
        it may not answer one."""
        raw = protocol.dumps({**body, "SIGNATURE": signature})
        started = time.perf_counter()
        plan = self.flow.plan(signature, raw, self.req)
        trace = self.req.trace
        span = token = None
        if trace is not None:  # the step's calls are its span's children
            span = trace.start(f"step {signature}")
            token = trace.within(span)
        try:
            resp = await self.flow.send(plan, raw, self.req)
        except ServingError as err:
            metrics.count_request(plan.label, plan.version, err.status)
            raise
        finally:
            if trace is not None and span is not None:
                restore(token)
                trace.stop(span)
        if resp.stream is not None and not self.streams:
            await resp.stream.aclose()  # closes the step's connection: its work stops
            metrics.count_request(plan.label, plan.version, BAD_GATEWAY)
            return None
        metrics.count_request(plan.label, plan.version, resp.status)
        if resp.stream is None:
            metrics.time_request(plan.label, plan.version, time.perf_counter() - started)
        self.flow.mirror(plan, raw, self.req, resp)
        return resp

    async def call(self, signature: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Run one step that must answer whole: its status and decoded answer."""
        try:
            resp = await self.step(signature, body)
        except ServingError as err:
            return err.status, err.to_dict()
        return STREAMED if resp is None else self.took(resp)

    def took(self, resp: UpstreamResponse) -> tuple[int, dict[str, Any]]:
        """A whole answer's status and decoded answer; its units added up."""
        status, answer = _answer_of(resp)
        units = answer.pop("USAGE", None) if status == 200 else None
        if isinstance(units, (int, float)) and not isinstance(units, bool) and units >= 0:
            self.units = (self.units or 0.0) + units
        return status, answer

    def answer(self, result: PipelineResult) -> UpstreamResponse:
        """The pipeline's whole answer: OUTPUT, the steps' timings and units."""
        answer = result.answer()
        if self.units is not None:
            answer["USAGE"] = self.units
        return UpstreamResponse(status=200, headers=list(JSON_HEADERS),
                                body=protocol.dumps(answer), worker="pipeline")


class Pipelines:
    """Answers the ``/run`` of a pipeline route, each step through the run flow."""

    def __init__(self, flow: RunFlow) -> None:
        self.flow = flow

    async def run(self, route: Route, raw: bytes, req: Request) -> UpstreamResponse:
        """Answer a ``/run`` of the pipeline ``route``."""
        name = route.name
        chain = _CHAIN.get()
        if name in chain or len(chain) >= MAX_NESTING:
            path = " -> ".join((*chain, name))
            raise StepFailed(f"pipeline {name} is called by its own steps, or pipelines nest "
                             f"deeper than {MAX_NESTING}: {path}", status=BAD_GATEWAY,
                             CHAIN=[*chain, name])
        body = await self.flow.off_loop(protocol.parse_body, raw) \
            if len(raw) > DECODE_OFF_LOOP else protocol.parse_body(raw)
        assert route.pipeline is not None
        pipeline = parse_pipeline(route.pipeline)
        final = None
        if wanted_format(req, body.get("STREAM")) is not streams.Format.GATHERED:
            final = pipeline.final_step()
            if final is None:
                raise BadRequest(f"pipeline {name} cannot stream: its last step's answer is "
                                 "needed by another step", SIGNATURE=name)
        token = _CHAIN.set((*chain, name))
        try:
            return await asyncio.wait_for(self._run(pipeline, body, req, final), route.timeout)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"pipeline {name} did not finish within its TIMEOUT of "
                                  f"{route.timeout:g} s", SIGNATURE=name,
                                  TIMEOUT=route.timeout) from None
        finally:
            _CHAIN.reset(token)

    async def _run(self, pipeline: Pipeline, body: dict[str, Any], req: Request,
                   final: Step | None) -> UpstreamResponse:
        """Run the steps; with a ``final`` step to stream, the others first, then it."""
        if final is None:
            run = PipelineRun(self.flow, req)
            return run.answer(await run_pipeline(pipeline, body, run.call))
        run = PipelineRun(self.flow, _without_accept(req))
        execution = Execution(pipeline, body, run.call)
        await execution.run_steps(pipeline.steps[:-1])
        return await self._final(run, execution, final, req)

    async def _final(self, run: PipelineRun, execution: Execution, final: Step,
                     req: Request) -> UpstreamResponse:
        """Call the final step asking for a stream: its stream, passed on, or (an
        endpoint that answers whole) the pipeline's usual answer."""
        began = execution.clock()
        step_body = {**execution.input_of(final), "STREAM": True}
        try:
            resp = await PipelineRun(self.flow, req, streams=True).step(final.signature,
                                                                        step_body)
        except ServingError as err:
            execution.timed(final, err.status, began)
            raise execution.failure(final, err.status, err.to_dict()) from None
        assert resp is not None  # (a final step may stream)
        execution.timed(final, resp.status, began)
        if resp.stream is not None:
            return StreamedPipeline(resp.status, resp.headers, resp.body, resp.worker,
                                    resp.stream, run.units or 0.0)
        execution.answered(final, *run.took(resp))
        return run.answer(execution.result())
