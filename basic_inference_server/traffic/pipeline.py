"""Pipelines: an endpoint whose steps call other endpoints (the ``PIPELINE`` setting).

::

    "PIPELINE": {"STEPS": [{"ID": "embed", "SIGNATURE": "embedding",
                            "INPUT": {"TEXT": "$input.TEXT"}},
                           {"ID": "rank", "SIGNATURE": "ranker",
                            "INPUT": {"VECTOR": "$steps.embed.EMBEDDING"}}],
                 "OUTPUT": {"SCORES": "$steps.rank.SCORES"}}

``INPUT`` and ``OUTPUT`` are templates: JSON values in which a string starting with
``$`` is a reference. ``$input`` is the pipeline's request body (without ``SIGNATURE``
and ``ASYNC``), ``$steps.<ID>`` a step's answer; a dotted path goes into either, a
number indexes a list. A string starting with ``$$`` is a literal starting with ``$``.
A step depends on the steps its ``INPUT`` references and starts as soon as they have
answered, so steps that do not depend on each other run at the same time.

This module validates the setting and runs a pipeline. How a step is called is the
caller's business: the front passes its own routing and forwarding, so weights,
breakers and versions apply to every step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest, ServingError, StepFailed
from ..names import NAME_RULE_TEXT, is_name, is_target

MAX_STEPS = 32
# Nesting of one template, and values in all of a pipeline's templates together.
MAX_DEPTH = 16
MAX_NODES = 4096
# Segments of a reference's path ($steps.a.X.0.Y has three).
MAX_PATH = 16
STEP_KEYS = ("ID", "SIGNATURE", "INPUT")
PIPELINE_KEYS = ("STEPS", "OUTPUT")
# Fields of the pipeline's request that are the pipeline's own, not its input; a step's
# INPUT may not set them either (the step's SIGNATURE is its own, and steps never queue).
RESERVED = ("SIGNATURE", "ASYNC")
# A failing step's status the pipeline answers with as it is (see failure_status).
PASSED_THROUGH = frozenset({400, 413, 429, 503, 504})
COME_BACK_LATER = frozenset({429, 503})
BAD_GATEWAY = 502

# call(signature, body) -> (HTTP status, decoded answer): how a step is run.
Call = Callable[[str, dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]


class PipelineError(ValueError):
    """A PIPELINE value that is not valid; the message says where."""


class Ref:
    """A reference in a template: ``step`` None for ``$input``."""

    __slots__ = ("path", "step", "text")

    def __init__(self, text: str, step: str | None, path: tuple[str, ...]) -> None:
        self.text = text
        self.step = step
        self.path = path


@dataclass(frozen=True)
class Step:
    """One step: the endpoint it calls, its compiled INPUT and the steps it waits for."""

    id: str
    signature: str
    input: Any
    needs: frozenset[str]


@dataclass(frozen=True)
class Pipeline:
    """A validated PIPELINE, its templates compiled (references parsed once)."""

    steps: tuple[Step, ...]
    output: Any

    def final_step(self) -> Step | None:
        """The step that runs last, which a stream may come from: the last of STEPS,
        when no other step needs its answer."""
        last = self.steps[-1]
        return None if any(last.id in s.needs for s in self.steps[:-1]) else last


def failure_status(step_status: int) -> int:
    """What the pipeline answers when a step answered ``step_status``.

    A refused input (400, 413) keeps its status: the caller's input, passed on by
    the templates, was refused, and running it again would not help. "Come back later"
    (429, 503) and a step's timeout (504) keep theirs too. Anything else (a 500, or a
    401/403/404/405/409 that the pipeline's own configuration caused) is 502 Bad
    Gateway: the pipeline, a gateway to its steps, got an unusable answer.
    """
    return step_status if step_status in PASSED_THROUGH else BAD_GATEWAY


# -- validation -------------------------------------------------------------------------
def _parse_ref(text: str) -> Ref:
    parts = text[1:].split(".")
    if parts[0] == "input":
        step, path = None, parts[1:]
    elif parts[0] == "steps" and len(parts) > 1:
        step, path = parts[1], parts[2:]
    else:
        raise PipelineError(f"{text!r} is not a reference: use $input[.path] or "
                            "$steps.<ID>[.path] ($$ starts a literal '$')")
    if step == "" or any(not p for p in path):
        raise PipelineError(f"{text!r} has an empty path segment")
    if len(path) > MAX_PATH:
        raise PipelineError(f"{text!r} has more than {MAX_PATH} path segments")
    return Ref(text, step, tuple(path))


class _Compiler:
    """Compiles templates, counting their values against the bounds."""

    def __init__(self) -> None:
        self.nodes = 0

    def compile(self, value: Any, where: str, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise PipelineError(f"has more than {MAX_NODES} values in its templates")
        if depth > MAX_DEPTH:
            raise PipelineError(f"{where} nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, str) and value.startswith("$"):
            if value.startswith("$$"):
                return value[1:]
            try:
                return _parse_ref(value)
            except PipelineError as exc:
                raise PipelineError(f"{where}: {exc}") from None
        if isinstance(value, dict):
            return {k: self.compile(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.compile(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        return value


def refs_in(node: Any) -> Iterator[Ref]:
    """Every reference in a compiled template."""
    if isinstance(node, Ref):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from refs_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs_in(value)


def _check_keys(value: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise PipelineError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))} "
                            f"(allowed: {', '.join(allowed)})")


def _object_template(template: Any, compiled: Any, where: str) -> None:
    """A template that must give an object: an object, or a reference (checked when run)."""
    if not isinstance(compiled, (dict, Ref)):
        raise PipelineError(f"{where} must be an object or a reference, "
                            f"not {type(template).__name__}")


def _step(raw: Any, where: str, compiler: _Compiler) -> Step:
    if not isinstance(raw, dict):
        raise PipelineError(f"{where} must be an object with ID and SIGNATURE")
    _check_keys(raw, STEP_KEYS, where)
    step_id, signature = raw.get("ID"), raw.get("SIGNATURE")
    if not is_name(step_id):
        raise PipelineError(f"{where}.ID must be {NAME_RULE_TEXT}, got {step_id!r}")
    if not is_target(signature):
        raise PipelineError(f"{where}.SIGNATURE must be an endpoint name ({NAME_RULE_TEXT}), "
                            f"optionally @<version label>, got {signature!r}")
    template = raw.get("INPUT", "$input")
    compiled = compiler.compile(template, f"{where}.INPUT")
    _object_template(template, compiled, f"{where}.INPUT")
    if isinstance(compiled, dict):
        reserved = [k for k in RESERVED if k in compiled]
        if reserved:
            raise PipelineError(f"{where}.INPUT may not set {', '.join(reserved)} (the step's "
                                "SIGNATURE is its own; steps always run at once)")
    needs = frozenset(r.step for r in refs_in(compiled) if r.step is not None)
    return Step(id=str(step_id), signature=str(signature), input=compiled, needs=needs)


def _check_graph(steps: list[Step], output: Any) -> None:
    """References name known steps, and no step waits on itself through others."""
    ids = [s.id for s in steps]
    known = ", ".join(ids)
    for step in steps:
        for ref in refs_in(step.input):
            if ref.step is not None and ref.step not in ids:
                raise PipelineError(f"step {step.id!r}: {ref.text!r} names no step "
                                    f"(steps: {known})")
    for ref in refs_in(output):
        if ref.step is not None and ref.step not in ids:
            raise PipelineError(f"OUTPUT: {ref.text!r} names no step (steps: {known})")
    done: set[str] = set()
    left = list(steps)
    while left:
        ready = [s for s in left if s.needs <= done]
        if not ready:
            cycle = ", ".join(sorted(s.id for s in left))
            raise PipelineError(f"steps {cycle} wait on each other (a cycle)")
        done.update(s.id for s in ready)
        left = [s for s in left if s.id not in done]


def parse_pipeline(value: Any) -> Pipeline:
    """The pipeline a PIPELINE value describes; :class:`PipelineError` when it is not valid."""
    if not isinstance(value, dict):
        raise PipelineError("must be an object with STEPS and optionally OUTPUT")
    _check_keys(value, PIPELINE_KEYS, "PIPELINE")
    raw_steps = value.get("STEPS")
    if not isinstance(raw_steps, list) or not 1 <= len(raw_steps) <= MAX_STEPS:
        raise PipelineError(f"STEPS must be a list of 1 to {MAX_STEPS} steps")
    compiler = _Compiler()
    steps = [_step(raw, f"STEPS[{i}]", compiler) for i, raw in enumerate(raw_steps)]
    seen: set[str] = set()
    for step in steps:
        if step.id in seen:
            raise PipelineError(f"step ID {step.id!r} is used twice")
        seen.add(step.id)
    if "OUTPUT" in value:
        output = compiler.compile(value["OUTPUT"], "OUTPUT")
        _object_template(value["OUTPUT"], output, "OUTPUT")
    else:
        output = Ref(f"$steps.{steps[-1].id}", steps[-1].id, ())
    _check_graph(steps, output)
    return Pipeline(steps=tuple(steps), output=output)


def validate_pipeline(value: Any) -> str | None:
    """Settings-table check of ``PIPELINE``: None when valid (or null), else the problem."""
    if value is None:
        return None
    try:
        parse_pipeline(value)
    except PipelineError as exc:
        return str(exc)
    return None


# -- running ------------------------------------------------------------------------------
class _Missing(Exception):
    """A reference whose target has no such field."""

    def __init__(self, ref: Ref, upto: int) -> None:
        super().__init__(ref.text)
        self.ref = ref
        self.upto = upto


def _lookup(ref: Ref, given: dict[str, Any], answers: dict[str, Any]) -> Any:
    value: Any = given if ref.step is None else answers[ref.step]
    for i, segment in enumerate(ref.path):
        if isinstance(value, dict) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            raise _Missing(ref, i)
    return value


def _resolve(node: Any, given: dict[str, Any], answers: dict[str, Any]) -> Any:
    if isinstance(node, Ref):
        return _lookup(node, given, answers)
    if isinstance(node, dict):
        return {k: _resolve(v, given, answers) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, given, answers) for v in node]
    return node


@dataclass
class PipelineResult:
    """A pipeline's resolved OUTPUT and when each step ran (milliseconds from its start)."""

    output: dict[str, Any]
    steps: list[dict[str, Any]]
    elapsed_ms: float

    def answer(self) -> dict[str, Any]:
        """The answer: OUTPUT, with ``PIPELINE`` holding the steps' timings."""
        return {**self.output, "PIPELINE": {"STEPS": self.steps,
                                            "ELAPSED_MS": self.elapsed_ms}}


class Execution:
    """One run of a pipeline: the answers so far and the steps' timings."""

    def __init__(self, pipeline: Pipeline, body: dict[str, Any], call: Call,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.pipeline = pipeline
        self.given = {k: v for k, v in body.items() if k not in RESERVED}
        self.call = call
        self.clock = clock
        self.started = clock()
        self.answers: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, dict[str, Any]] = {}

    def _ms(self, at: float) -> float:
        return round((at - self.started) * 1000, 3)

    def report(self) -> list[dict[str, Any]]:
        """The timings of the steps that ran, in STEPS order."""
        return [self.timings[s.id] for s in self.pipeline.steps if s.id in self.timings]

    def input_of(self, step: Step) -> dict[str, Any]:
        """The body ``step`` is called with, from the request and the answers so far."""
        return self._object(step.input, step)

    def _object(self, node: Any, step: Step | None) -> dict[str, Any]:
        """A template resolved to an object, or the error that names what is missing."""
        where = f"pipeline step {step.id!r} (SIGNATURE {step.signature})" if step else \
            "the pipeline's OUTPUT"
        details: dict[str, Any] = {"STEPS": self.report()}
        if step is not None:
            details["STEP"] = {"ID": step.id, "SIGNATURE": step.signature}
        try:
            value = _resolve(node, self.given, self.answers)
        except _Missing as missing:
            ref = missing.ref
            field = ".".join(ref.path[:missing.upto + 1])
            if ref.step is None:
                raise BadRequest(f"{where} needs {ref.text}: the request has no {field}",
                                 **details) from None
            raise StepFailed(f"{where} needs {ref.text}: step {ref.step!r} answered without "
                             f"{field}", status=BAD_GATEWAY, **details) from None
        if not isinstance(value, dict):
            text = f"{where}: {getattr(node, 'text', 'the template')} is a " \
                   f"{type(value).__name__}, not an object"
            if isinstance(node, Ref) and node.step is None:
                raise BadRequest(text, **details)
            raise StepFailed(text, status=BAD_GATEWAY, **details)
        return value

    async def _call(self, step: Step, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        began = self.clock()
        try:
            status, answer = await self.call(step.signature, body)
        except ServingError as err:
            status, answer = err.status, err.to_dict()
        self.timed(step, status, began)
        return status, answer

    def timed(self, step: Step, status: int, began: float) -> None:
        """Note when ``step`` ran (it started at ``began``) and how it answered."""
        self.timings[step.id] = {"ID": step.id, "SIGNATURE": step.signature, "STATUS": status,
                                 "STARTED_MS": self._ms(began),
                                 "ELAPSED_MS": round((self.clock() - began) * 1000, 3)}

    def answered(self, step: Step, status: int, answer: dict[str, Any]) -> None:
        """Keep a step's answer; a status other than 200 fails the pipeline."""
        if status != 200:
            raise self.failure(step, status, answer)
        self.answers[step.id] = answer

    def failure(self, step: Step, status: int, answer: dict[str, Any]) -> StepFailed:
        """The error that fails the pipeline when ``step`` answered ``status``."""
        error, kind = answer.get("ERROR"), answer.get("ERROR_TYPE")
        code = failure_status(status)
        return StepFailed(
            f"pipeline step {step.id!r} (SIGNATURE {step.signature}) failed with {status}"
            + (f" {kind}" if kind else "") + (f": {error}" if error else ""),
            status=code, retry_after=1 if code in COME_BACK_LATER else None,
            STEP={"ID": step.id, "SIGNATURE": step.signature, "STATUS": status,
                  "ERROR_TYPE": kind, "ERROR": error},
            STEPS=self.report())

    async def run(self) -> PipelineResult:
        """Run every step; the pipeline's answer."""
        await self.run_steps(self.pipeline.steps)
        return self.result()

    async def run_steps(self, steps: tuple[Step, ...]) -> None:
        """Run ``steps`` (each as soon as the steps it needs have answered)."""
        order = {s.id: i for i, s in enumerate(self.pipeline.steps)}
        waiting = list(steps)
        running: dict[asyncio.Future[tuple[int, dict[str, Any]]], Step] = {}
        try:
            while waiting or running:
                for step in [s for s in waiting if s.needs <= self.answers.keys()]:
                    waiting.remove(step)
                    body = self._object(step.input, step)
                    running[asyncio.ensure_future(self._call(step, body))] = step
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: order[running[t].id]):
                    step = running.pop(task)
                    self.answered(step, *task.result())
        finally:
            # A failed step (or a cancelled pipeline) stops the steps still running.
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    def result(self) -> PipelineResult:
        """The resolved OUTPUT and the steps' timings, once every step answered."""
        output = self._object(self.pipeline.output, None)
        return PipelineResult(output=output, steps=self.report(),
                              elapsed_ms=self._ms(self.clock()))


async def run_pipeline(spec: dict[str, Any] | Pipeline, body: dict[str, Any], call: Call, *,
                       clock: Callable[[], float] = time.perf_counter) -> PipelineResult:
    """Run a pipeline on a request ``body``; each step through ``call``.

    Raises :class:`..errors.StepFailed` naming the step that failed (or
    :class:`..errors.BadRequest` when the request lacks a field a template needs).
    """
    pipeline = spec if isinstance(spec, Pipeline) else parse_pipeline(spec)
    return await Execution(pipeline, body, call, clock).run()
