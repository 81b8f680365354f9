"""The manager's control commands, declared once: name, argument type, reply.

A command's arguments are a ``TypedDict`` (:mod:`.typed_args`: bounds and rules ride on
its fields as ``Annotated`` metadata). From that one type:

- the manager checks every request (:meth:`Command.check`), once, before its handler
  runs: a wrong argument is a 400 that names it;
- the API table writes the request's JSON Schema (:meth:`Command.schema`), which the
  OpenAPI document shows;
- mypy checks what each sender puts in and what each handler reads.

Every sender builds its request with :meth:`Command.request` (the front's management
routes, the supervisor, the job runner, the front's traffic reports, the dashboard);
the manager finds the handler by the command, never by a string convention.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Literal, Required, TypedDict, TypeVar, get_args, get_origin

from .ipc import PEER_ADDR, PEER_PORT
from .names import NAME_RULE, NAME_RULE_TEXT, VERSION_SEP
from .setting import MAX_SECONDS, MAX_WORKERS
from .typed_args import (
    Doc,
    Length,
    Range,
    Rule,
    Schema,
    answer,
    check_fields,
    field_hints,
    fields_schema,
)

# The arguments' type of a command (a TypedDict).
Args = TypeVar("Args", bound=Mapping[str, Any])

OBJECT: Schema = {"type": "object"}
STRING: Schema = {"type": "string"}
_INTEGER = re.compile(r"-?[0-9]+")

Name = Annotated[str, Rule(NAME_RULE, NAME_RULE_TEXT)]
Signature = Annotated[str, Length(1), Doc("the endpoint's name (its file name without .py)")]
Percent = Annotated[float, Range(0, 100)]
# An endpoint, or one version of one ("name@label").
Target = Annotated[str, Rule(re.compile(f"{NAME_RULE.pattern}(?:{VERSION_SEP}{NAME_RULE.pattern})?"),
                             f"an endpoint name ({NAME_RULE_TEXT}), or name@version"),
                   Doc("the endpoint's name (its file name without .py), or name@version")]


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
        hints = field_hints(self.args)
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
    audit: Annotated[int, Doc("how many audit records, the newest")]


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


class IdleReport(TypedDict):
    """The front's: an endpoint with MIN_WORKERS 0 has had no request in flight, no new
    request and no job for ``idle_s`` seconds."""

    SIGNATURE: Signature
    idle_s: float


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
MODELS: Command[NoArgs] = Command("models", NoArgs, answer(
    ("REPOSITORY", "CACHE", "ENDPOINTS"), REPOSITORY={"type": ["string", "null"]},
    CACHE={"type": "array", "description": "each version in the box's cache: model, version, "
                                           "bytes, files, last_used, in_use"},
    ENDPOINTS={"type": "object", "description": "the MODEL of each endpoint that names one"}))
HISTORY: Command[HistoryArgs] = Command("history", HistoryArgs, answer(
    ("samples", "events", "audit"), samples={"type": "array"}, events={"type": "array"},
    audit={"type": "array", "description": "admin calls that change state, and refused "
           "attempts per address and minute, oldest first"}))
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
REPORT_IDLE: Command[IdleReport] = Command("report_idle", IdleReport, ENDPOINT_RESULT)
WAKE: Command[OnEndpoint] = Command("wake", OnEndpoint, ENDPOINT_RESULT)

COMMANDS: dict[str, Command[Any]] = {c.name: c for c in (
    LIST_SERVERS, SYSTEM_STATUS, HISTORY, NOTIFICATIONS, SUPPORT_STATUS, START_SERVER,
    KILL_SERVER, UPDATE_WORKERS, RELOAD_SERVER, SHUTDOWN, TRAFFIC, SET_WEIGHTS, ROLLOUT,
    ROLLOUT_STATE, ROLLOUT_PROMOTE, ROLLOUT_ABORT, METRICS, PING, SUPERVISION, JOB_TARGETS,
    REPORT_HUNG, HEALTH_SAMPLE, REMOTE_HEALTH, TRAFFIC_REPORT, REPORT_IDLE, WAKE, MODELS)}

__all__ = ["COMMANDS", "PEER_ADDR", "PEER_PORT", "Args", "Command"]
