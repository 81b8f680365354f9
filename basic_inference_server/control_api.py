"""The manager's control commands, declared once: name, argument type, reply.

A command's arguments are a ``TypedDict``; bounds and rules ride on its fields as
``Annotated`` metadata (:class:`Range`, :class:`Length`, :class:`Rule`). From that one
type:

- the manager checks every request (:meth:`Command.check`), once, before its handler
  runs: a wrong argument is a 400 that names it;
- the API table writes the request's JSON Schema (:meth:`Command.schema`), which the
  OpenAPI document shows;
- mypy checks what each sender puts in and what each handler reads.

Every sender builds its request with :meth:`Command.request`, which mypy checks against
the command's type (the front's management
routes, the supervisor, the job runner, the front's traffic reports, the dashboard);
the manager finds the handler by the command, never by a string convention.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import (
    Annotated,
    Any,
    Generic,
    Literal,
    NotRequired,
    Required,
    TypedDict,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from .errors import BadRequest
from .ipc import PEER_ADDR, PEER_PORT
from .setting import MAX_SECONDS, MAX_WORKERS, NAME_RULE, NAME_RULE_TEXT

Schema = dict[str, Any]
# The arguments' type of a command (a TypedDict).
Args = TypeVar("Args", bound=Mapping[str, Any])

OBJECT: Schema = {"type": "object"}
_INTEGER = re.compile(r"-?[0-9]+")
STRING: Schema = {"type": "string"}


# -- the rules a field may carry -----------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """A number's bounds (``None``: unbounded); ``above`` makes ``low`` exclusive."""

    low: float | None = None
    high: float | None = None
    above: bool = False

    def problem(self, value: float) -> str | None:
        low_ok = self.low is None or (value > self.low if self.above else value >= self.low)
        high_ok = self.high is None or value <= self.high
        if low_ok and high_ok:
            return None
        parts = [f"{'>' if self.above else '>='} {self.low:g}" if self.low is not None else "",
                 f"<= {self.high:g}" if self.high is not None else ""]
        return "must be " + " and ".join(p for p in parts if p)

    def schema(self) -> Schema:
        out: Schema = {}
        if self.low is not None:
            out["exclusiveMinimum" if self.above else "minimum"] = self.low
        if self.high is not None:
            out["maximum"] = self.high
        return out


@dataclass(frozen=True)
class Length:
    """How many characters a string, or items a list, may have."""

    low: int = 0
    high: int | None = None

    def problem(self, value: str | list[Any]) -> str | None:
        if len(value) >= self.low and (self.high is None or len(value) <= self.high):
            return None
        return f"must have {self.low} to {self.high if self.high is not None else 'any'} items" \
            if isinstance(value, list) else \
            f"must be {self.low} to {self.high if self.high is not None else 'any'} characters"

    def schema(self, of: str) -> Schema:
        low, high = ("minItems", "maxItems") if of == "array" else ("minLength", "maxLength")
        return {low: self.low, **({high: self.high} if self.high is not None else {})}


@dataclass(frozen=True)
class Rule:
    """A string's pattern (matched whole), with what it means in words."""

    pattern: re.Pattern[str]
    text: str

    def problem(self, value: str) -> str | None:
        return None if self.pattern.fullmatch(value) else f"must be {self.text}"

    def schema(self) -> Schema:
        return {"pattern": f"^{self.pattern.pattern}$"}


@dataclass(frozen=True)
class Doc:
    """What a field is, for the API's documentation."""

    text: str


Name = Annotated[str, Rule(NAME_RULE, NAME_RULE_TEXT)]
Signature = Annotated[str, Length(1), Doc("the endpoint's name (its file name without .py)")]
Percent = Annotated[float, Range(0, 100)]
# An endpoint, or one version of one ("name@label": traffic.settings.VERSION_SEP).
Target = Annotated[str, Rule(re.compile(f"{NAME_RULE.pattern}(?:@{NAME_RULE.pattern})?"),
                             f"an endpoint name ({NAME_RULE_TEXT}), or name@version"),
                   Doc("the endpoint's name (its file name without .py), or name@version")]


# -- checking a value against a type -------------------------------------------------------
_KINDS: dict[type, str] = {str: "a string", bool: "true or false", int: "an integer",
                           float: "a number", dict: "an object", list: "an array"}


def _fits(value: Any, kind: type) -> bool:
    """JSON's view of Python types: a bool is no number, an int is a float, and a float
    without a fraction (``2.0``) is an integer."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if kind is int and isinstance(value, float):
        return math.isfinite(value) and value.is_integer()
    return isinstance(value, kind)


def check_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` as a ``hint`` (an integer sent as ``2.0`` becomes ``2``); raise
    :class:`..errors.BadRequest` naming ``where`` when it is not one."""
    origin = get_origin(hint)
    if hint is Any or (value is None and hint is type(None)):
        return value
    if origin is Annotated:
        return _check_annotated(value, hint, where)
    if origin is Literal:
        if not any(value == v and type(value) is type(v) for v in get_args(hint)):
            raise BadRequest(f"{where} must be one of {list(get_args(hint))}, got {_shown(value)}")
        return value
    if origin in (Union, types.UnionType):
        return _check_union(value, hint, where)
    if is_typeddict(hint):
        return check_fields(value, hint, where)
    return _check_plain(value, hint, where)


def _check_annotated(value: Any, hint: Any, where: str) -> Any:
    base, *rules = get_args(hint)
    value = check_value(value, base, where)
    for rule in rules:
        problem = rule.problem(value) if hasattr(rule, "problem") else None
        if problem:
            raise BadRequest(f"{where} {problem}, got {_shown(value)}")
    return value


def _check_union(value: Any, hint: Any, where: str) -> Any:
    errors = []
    for option in get_args(hint):
        try:
            return check_value(value, option, where)
        except BadRequest as exc:
            errors.append(exc.message)
    raise BadRequest(" or ".join(errors))


def _check_plain(value: Any, hint: Any, where: str) -> Any:
    """A str, bool, int, float, or a list or dict (of typed items when the hint says)."""
    kind = get_origin(hint) or hint
    if not _fits(value, kind):
        raise BadRequest(f"{where} must be {_KINDS.get(kind, kind.__name__)}, got {_shown(value)}")
    if kind is int:
        return int(value)
    if kind is list and get_args(hint):
        return [check_value(item, get_args(hint)[0], f"{where}[{i}]")
                for i, item in enumerate(value)]
    if kind is dict and get_args(hint):
        keys, values = get_args(hint)
        return {check_value(key, keys, f"{where} key"):
                check_value(item, values, f"{where}.{str(key)[:100]}")
                for key, item in value.items()}
    return value


def check_fields(value: Any, typed: type, where: str = "") -> dict[str, Any]:
    """``value``, an object holding ``typed``'s required keys, each of its type; other
    keys are left to the handler (``/start_server``'s settings, a support report)."""
    if not isinstance(value, dict):
        raise BadRequest(f"{where or 'the arguments'} must be a JSON object")
    missing = sorted(required_keys(typed) - set(value))
    if missing:
        raise BadRequest(f"{where + ': ' if where else ''}{', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} required")
    prefix = f"{where}." if where else ""
    hints = _hints(typed)
    return {key: check_value(item, hints[key], prefix + key) if key in hints else item
            for key, item in value.items()}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def required_keys(typed: type) -> set[str]:
    """The keys ``typed`` requires. Read from its hints: with postponed annotations,
    Python 3.11's ``__required_keys__`` misses ``Required[...]``."""
    total = getattr(typed, "__total__", True)
    hints = get_type_hints(typed, include_extras=True)
    return {k for k, h in hints.items()
            if get_origin(h) is Required or (total and get_origin(h) is not NotRequired)}


def _hints(typed: type) -> dict[str, Any]:
    hints = get_type_hints(typed, include_extras=True)
    return {k: get_args(h)[0] if get_origin(h) in (Required, NotRequired) else h
            for k, h in hints.items()}


# -- the same type as JSON Schema ------------------------------------------------------------
def schema_of(hint: Any) -> Schema:
    """JSON Schema of a type as :func:`check_value` reads it."""
    origin = get_origin(hint)
    if hint is Any:
        return {}
    if origin is Annotated:
        return _annotated_schema(hint)
    if origin is Literal:
        values = list(get_args(hint))
        return {"const": values[0]} if len(values) == 1 else {"enum": values}
    if origin in (Union, types.UnionType):
        return {"anyOf": [schema_of(option) for option in get_args(hint)]}
    if hint is type(None):
        return {"type": "null"}
    if is_typeddict(hint):
        return fields_schema(hint)
    return _plain_schema(hint)


def _annotated_schema(hint: Any) -> Schema:
    base, *rules = get_args(hint)
    out = schema_of(base)
    for rule in rules:
        if isinstance(rule, Length):
            out.update(rule.schema(out.get("type", "string")))
        elif isinstance(rule, Doc):
            out["description"] = rule.text
        elif hasattr(rule, "schema"):
            out.update(rule.schema())
    return out


def _plain_schema(hint: Any) -> Schema:
    kind = get_origin(hint) or hint
    out: Schema = {"type": {str: "string", bool: "boolean", int: "integer", float: "number",
                            dict: "object", list: "array"}[kind]}
    if kind is list and get_args(hint):
        out["items"] = schema_of(get_args(hint)[0])
    elif kind is dict and get_args(hint):
        keys, values = get_args(hint)
        names = schema_of(keys)
        if names != {"type": "string"}:
            out["propertyNames"] = names
        if values is not Any:
            out["additionalProperties"] = schema_of(values)
    return out


def fields_schema(typed: type) -> Schema:
    """An object with ``typed``'s fields (others are allowed)."""
    out: Schema = {"type": "object",
                   "properties": {k: schema_of(h) for k, h in _hints(typed).items()}}
    required = [k for k in _hints(typed) if k in required_keys(typed)]
    if required:
        out["required"] = required
    return out


def answer(required: tuple[str, ...] = (), **props: Schema) -> Schema:
    """A reply: a JSON object with these properties (others are allowed)."""
    schema: Schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


# -- the commands ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Command(Generic[Args]):
    """One control command: its name, the type of its arguments, its reply's schema.

    ``peer``: the front adds the HTTP caller's address to the arguments (``PEER_ADDR``,
    ``PEER_PORT``), which the handler checks.
    """

    name: str
    args: type[Args]
    reply: Schema = field(default_factory=lambda: dict(OBJECT))
    peer: bool = False

    def request(self, args: Args) -> dict[str, Any]:
        """The wire form of a call with ``args``."""
        return {"cmd": self.name, "args": args}

    def check(self, args: Any) -> Args:
        """``args`` as the command's type; else :class:`..errors.BadRequest`."""
        return check_fields(args, self.args)  # type: ignore[return-value]

    def schema(self) -> Schema:
        """The arguments as JSON Schema: the body of the command's POST route (without
        the caller's address, which the front adds)."""
        out = fields_schema(self.args)
        for key in (PEER_ADDR, PEER_PORT):
            out["properties"].pop(key, None)
        return out

    def from_query(self, query: Mapping[str, str]) -> dict[str, Any]:
        """A GET's query fields, an integer field's digits read as the integer (the
        check that follows says what else is wrong)."""
        hints = _hints(self.args)
        return {k: _integer(v) if _base(hints.get(k)) is int else v for k, v in query.items()}


def _integer(text: str) -> int | str:
    """``text`` as an integer when it is one (digits, within Python's limit on them)."""
    if _INTEGER.fullmatch(text):
        try:
            return int(text)
        except ValueError:
            pass
    return text


def _base(hint: Any) -> Any:
    return get_args(hint)[0] if get_origin(hint) is Annotated else hint


class NoArgs(TypedDict):
    """A command that takes nothing."""


class OnEndpoint(TypedDict):
    SIGNATURE: Signature


class StartArgs(TypedDict):
    """The endpoint (a version of one: ``name@label``), and settings to start it with
    (checked as the configuration's)."""

    SIGNATURE: Target


class ScaleArgs(TypedDict):
    SIGNATURE: Signature
    NR_WORKERS: Annotated[int, Range(1, MAX_WORKERS)]


class ShutdownArgs(TypedDict):
    SIGNATURE: Literal["SAFE_KILL_SERVER_CMD"]


class HistoryArgs(TypedDict, total=False):
    samples: Annotated[int, Doc("how many samples, the newest")]


class SupportReport(TypedDict, total=False):
    """A support process's status (its own keys besides), and who sent it (the front).
    A name of no endpoint is taken for the support process's."""

    SIGNATURE: Required[str | None]
    __peer_addr__: str | None
    __peer_port__: int | str | None


class TrafficQuery(TypedDict, total=False):
    SIGNATURE: Signature


class WeightsArgs(TypedDict):
    SIGNATURE: Signature
    WEIGHTS: dict[Name, Percent]


class RolloutPlan(TypedDict, total=False):
    SIGNATURE: Required[Signature]
    CANARY: Required[Name]
    STABLE: Name
    STEPS: Annotated[list[Annotated[float, Range(0, 100, above=True)]], Length(1, 20)]
    DWELL_S: Annotated[float, Range(0, MAX_SECONDS)]
    MIN_REQUESTS: Annotated[int, Range(1, 10**9)]
    MAX_ERROR_RATE_DELTA: Annotated[float, Range(0, 1)]
    MAX_P99_RATIO: Annotated[float, Range(1, 1000)]
    P99_MARGIN_MS: Annotated[float, Range(0, 3_600_000)]


class RolloutEnd(TypedDict, total=False):
    SIGNATURE: Required[Signature]
    REASON: str


class HungReport(TypedDict, total=False):
    """The supervisor's: a server (``server``) or some of its workers (``pids``) stuck."""

    SIGNATURE: Required[str]
    generation: Required[int]
    server: bool
    pids: list[int]
    reason: str


class HealthSample(TypedDict, total=False):
    """The supervisor's sample (:func:`..health.sampler.collect_sample`)."""

    system: Required[dict[str, Any]]
    gpu: Required[dict[str, Any]]
    trees: Required[dict[str, int]]
    taken_at: float


class RemoteHealth(TypedDict):
    SIGNATURE: str
    URLS: dict[str, dict[str, Any]]


class TrafficReport(TypedDict, total=False):
    """A front process's counts since its last report, and its breakers' states."""

    pid: Required[int]
    stats: dict[str, Any]
    breakers: dict[str, dict[str, Any]]


RESULT = answer(("RESULT",), RESULT=STRING)
ENDPOINT_RESULT = answer(("RESULT",), RESULT=STRING, state=STRING)
ROLLOUT_ENDED = answer(("RESULT", "state", "weights", "history"), RESULT=STRING, state=STRING,
                       weights=OBJECT, history={"type": "array"})

# What the front's management routes forward (api_table.py names them) ...
LIST_SERVERS: Command[NoArgs] = Command("list_servers", NoArgs, answer(
    ("AVAIL_SERVERS", "SERVERS"), AVAIL_SERVERS={"type": "array", "items": STRING},
    SERVERS=OBJECT))
SYSTEM_STATUS: Command[NoArgs] = Command("system_status", NoArgs, answer(("SYSTEM_STATUS",),
                                                        SYSTEM_STATUS=OBJECT))
HISTORY: Command[HistoryArgs] = Command("history", HistoryArgs, answer(("samples",), samples={"type": "array"}))
NOTIFICATIONS: Command[NoArgs] = Command("notifications", NoArgs, answer(("NOTIFICATIONS",),
                                                        NOTIFICATIONS={"type": "array"}))
SUPPORT_STATUS: Command[SupportReport] = Command("support_update_status", SupportReport, RESULT, peer=True)
START_SERVER: Command[StartArgs] = Command("start_server", StartArgs, ENDPOINT_RESULT)
KILL_SERVER: Command[OnEndpoint] = Command("kill_server", OnEndpoint, ENDPOINT_RESULT)
UPDATE_WORKERS: Command[ScaleArgs] = Command("update_workers", ScaleArgs, ENDPOINT_RESULT)
RELOAD_SERVER: Command[OnEndpoint] = Command("reload_server", OnEndpoint, RESULT)
SHUTDOWN: Command[ShutdownArgs] = Command("shutdown", ShutdownArgs, RESULT)
TRAFFIC: Command[TrafficQuery] = Command("traffic", TrafficQuery)
SET_WEIGHTS: Command[WeightsArgs] = Command("traffic_weights", WeightsArgs)
ROLLOUT: Command[RolloutPlan] = Command("rollout", RolloutPlan)
ROLLOUT_STATE: Command[TrafficQuery] = Command("rollout_state", TrafficQuery)
ROLLOUT_PROMOTE: Command[RolloutEnd] = Command("rollout_promote", RolloutEnd, ROLLOUT_ENDED)
ROLLOUT_ABORT: Command[RolloutEnd] = Command("rollout_abort", RolloutEnd, ROLLOUT_ENDED)
# ... and what processes of the tree send themselves.
METRICS: Command[NoArgs] = Command("metrics", NoArgs)
PING: Command[NoArgs] = Command("ping", NoArgs, RESULT)
SUPERVISION: Command[NoArgs] = Command("supervision", NoArgs)
JOB_TARGETS: Command[NoArgs] = Command("job_targets", NoArgs)
REPORT_HUNG: Command[HungReport] = Command("report_hung", HungReport, RESULT)
HEALTH_SAMPLE: Command[HealthSample] = Command("health_sample", HealthSample, RESULT)
REMOTE_HEALTH: Command[RemoteHealth] = Command("remote_health", RemoteHealth, RESULT)
TRAFFIC_REPORT: Command[TrafficReport] = Command("traffic_report", TrafficReport, RESULT)

COMMANDS: dict[str, Command[Any]] = {c.name: c for c in (
    LIST_SERVERS, SYSTEM_STATUS, HISTORY, NOTIFICATIONS, SUPPORT_STATUS, START_SERVER,
    KILL_SERVER, UPDATE_WORKERS, RELOAD_SERVER, SHUTDOWN, TRAFFIC, SET_WEIGHTS, ROLLOUT,
    ROLLOUT_STATE, ROLLOUT_PROMOTE, ROLLOUT_ABORT, METRICS, PING, SUPERVISION, JOB_TARGETS,
    REPORT_HUNG, HEALTH_SAMPLE, REMOTE_HEALTH, TRAFFIC_REPORT)}

__all__ = ["COMMANDS", "PEER_ADDR", "PEER_PORT", "Args", "Command"]
