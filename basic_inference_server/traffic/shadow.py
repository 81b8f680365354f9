"""Shadow traffic: mirror a share of a version's requests to a shadow version, off the
request path, and compare the answers (``SHADOW``, docs/traffic.md).

The front calls :meth:`Shadow.maybe_mirror` once the primary's answer is ready, just
before returning it: the mirror is an asyncio task of the front's event loop, so the
caller's answer is never delayed and never sees the shadow's errors. Each front process
holds at most :data:`MAX_IN_FLIGHT` mirrors per endpoint; past it, a request is not
mirrored (``dropped``), so a slow shadow cannot pile requests up. The shadow version's
own ``MAX_IN_FLIGHT`` applies too (its refusal also counts as ``dropped``).

Which requests are mirrored: those served by ``FROM`` (null: by any version but the
shadow), a ``FRACTION`` of them chosen by a hash of the request id, so one request id is
mirrored in every process or in none. Every mirror ends as one :class:`.compare.Result`,
handed to the ``record`` function with the shadow's latency.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import Overloaded, ServingError
from ..tracing import restore
from .compare import Result, judge, with_defaults
from .hooks import Hooks
from .router import point

if TYPE_CHECKING:
    from ..contracts import TrafficPolicy

log = logging.getLogger("bis.shadow")
# Mirrors in flight per endpoint and front process.
MAX_IN_FLIGHT = 16


class Reply(Protocol):
    """An answer as the front's forwarding gives it."""

    status: int
    body: bytes


# (target, body, the caller's request) -> the target's answer; raises ServingError. The
# front forwards the copy as it forwards any request (same headers, MAX_IN_FLIGHT).
Forward = Callable[[str, bytes, Any], Awaitable[Reply]]
# (endpoint, shadow version label, result, the shadow's latency in seconds or None).
Record = Callable[[str, str, Result, float | None], None]
OffLoop = Callable[..., Awaitable[Any]]


def sampled(request_id: str | None, fraction: float) -> bool:
    """Whether a request is in the mirrored ``fraction``: by its id when it has one."""
    if fraction >= 1:
        return True
    return fraction > 0 and point(request_id or None) < fraction


def wanted(policy: dict[str, Any] | None, source_version: str | None) -> bool:
    """Whether requests served by ``source_version`` are mirrored under ``policy``."""
    if not policy or source_version is None or source_version == policy["VERSION"]:
        return False
    return policy.get("FROM") in (None, source_version)


class Shadow:
    """The mirrors of one front process (one event loop)."""

    def __init__(self, forward: Forward, record: Record, *, hooks: Hooks | None = None,
                 off_loop: OffLoop | None = None, limit: int = MAX_IN_FLIGHT) -> None:
        self.forward = forward
        self.record = record
        self.hooks = hooks or Hooks(None)
        # Comparing decodes both answers: the front runs it in its thread pool.
        self.off_loop = off_loop
        self.limit = limit
        self.busy: dict[str, int] = {}
        # The running mirrors: asyncio keeps only weak references to tasks.
        self.tasks: set[asyncio.Task[None]] = set()

    def maybe_mirror(self, endpoint: str, traffic: TrafficPolicy, source_version: str | None,
                     raw: bytes, request: Any, request_id: str | None, primary: Reply) -> bool:
        """Mirror one request of ``endpoint`` (its traffic policy) served by
        ``source_version`` with answer ``primary``, if the policy says so; never waits.
        ``request`` is handed to the forwarding function as it is."""
        policy = traffic.shadow
        if not wanted(policy, source_version):
            return False
        policy = with_defaults(policy)  # type: ignore[arg-type]
        if not sampled(request_id, float(policy["FRACTION"])):
            return False
        label = policy["VERSION"]
        if self.busy.get(endpoint, 0) >= self.limit:
            self.record(endpoint, label, Result.DROPPED, None)
            return False
        target = traffic.versions.get(label) or f"{endpoint}@{label}"
        self.busy[endpoint] = self.busy.get(endpoint, 0) + 1
        # The answer as it is now: the front may still rewrite the response object.
        task = asyncio.get_running_loop().create_task(self._mirror(
            endpoint, policy, target, raw, request, (primary.status, primary.body)))
        self.tasks.add(task)
        task.add_done_callback(lambda done: self._done(endpoint, done))
        return True

    def _done(self, endpoint: str, task: asyncio.Task[None]) -> None:
        # Here, not in the task: a task cancelled before it ran still gives its place back.
        self.tasks.discard(task)
        self.busy[endpoint] -= 1

    async def drain(self) -> None:
        """Wait for the mirrors in flight."""
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _mirror(self, endpoint: str, policy: dict[str, Any], target: str, raw: bytes,
                      request: Any, primary: tuple[int, bytes]) -> None:
        latency: float | None = None
        started = time.perf_counter()
        # A traced request's copy: a span of its own, the copy's call its child.
        trace = getattr(request, "trace", None)
        span = trace.start(f"shadow {target}") if trace is not None else None
        token = trace.within(span) if trace is not None else None
        result = Result.ERROR
        try:
            reply = await self.forward(target, raw, request)
            latency = time.perf_counter() - started
            result = await self._compare(policy, primary, (reply.status, reply.body))
        except Overloaded:
            result = Result.DROPPED
        except ServingError as err:
            log.debug("shadow %s did not answer: %s", target, err.message)
            result = Result.ERROR
        except Exception:  # noqa: BLE001 - a bug of ours must not go unseen, nor reach a caller
            log.exception("shadow %s: mirroring failed", target)
            result = Result.ERROR
        finally:
            if trace is not None:
                restore(token)
                trace.stop(span, {"bis.shadow": result.value})
        self.record(endpoint, policy["VERSION"], result, latency)

    async def _compare(self, policy: dict[str, Any], primary: tuple[int, bytes],
                       shadow: tuple[int, bytes]) -> Result:
        if self.off_loop is None:
            return self._judge(policy, primary, shadow)
        result: Result = await self.off_loop(self._judge, policy, primary, shadow)
        return result

    def _judge(self, policy: dict[str, Any], primary: tuple[int, bytes],
               shadow: tuple[int, bytes]) -> Result:
        hook = None
        if policy["COMPARE"] == "hook" and primary[0] == shadow[0]:
            try:
                hook = self.hooks.get(policy["HOOK"])
            except Exception as exc:  # noqa: BLE001 - a hook that cannot load is a comparator error
                log.debug("shadow hook %s: %s", policy["HOOK"], exc)
                return Result.ERROR
        return judge(policy, primary, shadow, hook)


# -- the summary /list_servers shows ------------------------------------------------------
def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram's cumulative ``(upper bound, count)`` buckets,
    interpolated within a bucket as Prometheus's ``histogram_quantile`` does."""
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return None
    rank = q * total
    lower = below = 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # past the last finite bucket: its bound is all that is known
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def summarize(counts: dict[tuple[str, str, str], float],
              buckets: dict[tuple[str, str], list[tuple[float, float]]]) -> dict[str, Any]:
    """``{endpoint: {version: summary}}`` of the shadow counters (by endpoint, version
    and result) and latency histograms (by endpoint and version)."""
    out: dict[str, Any] = {}
    for (endpoint, version, result), value in counts.items():
        stats = out.setdefault(endpoint, {}).setdefault(
            version, {r.value: 0 for r in Result})
        stats[result] = int(value)
    for endpoint, versions in out.items():
        for version, stats in versions.items():
            compared = stats["agree"] + stats["disagree"]
            latency = sorted(buckets.get((endpoint, version), []))
            stats.update(mirrored=compared + stats["error"],
                         disagreement_rate=stats["disagree"] / compared if compared else None,
                         latency_p50_s=quantile(0.5, latency),
                         latency_p99_s=quantile(0.99, latency))
    return out
