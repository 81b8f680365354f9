"""What the manager knows of each endpoint, and every change of its state.

Each transition is a method of :class:`Endpoint` that updates the record and returns a
:class:`Change`: what the manager must now do outside the record (stop children,
signal a server, publish the route table, close the listeners, log an event). The
methods do no I/O and take the time as an argument, so every transition is tested
without a process (tests/unit/test_manager_state.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache_settings import cache_of
from ..config import EndpointConfig
from ..contracts import EndpointState as State
from ..contracts import Route, RouteSnapshot, TrafficPolicy
from ..names import split_target
from .children import BACKOFF_FIRST, Child, backoff
from .remote_health import UrlHealth

# A server that ran this long before dying is not in a crash loop: restart at once.
STABLE_AFTER = 30.0
# Requests allowed to wait per worker slot by default (MAX_IN_FLIGHT).
IN_FLIGHT_FACTOR = 32
# Failures in a row that make a crash loop.
CRASHLOOP_AFTER = 3
# gunicorn's exit codes for "a worker could not load the app": not a crash.
LOAD_FAILURE_CODES = {3, 4}
# Loads that fail in a row before the endpoint stays FAILED (no more retries: a broken
# file or missing weights do not mend themselves; /start_server tries again).
LOAD_ATTEMPTS = 3


@dataclass
class Change:
    """What a transition asks of the manager; the empty Change asks nothing."""

    publish: bool = False  # the route table changed
    stop: list[Child] = field(default_factory=list)  # children to stop gracefully
    close_listeners: bool = False  # the endpoint is stopped for good: free its port
    signal: int | None = None  # to send to the serving server's master
    workers: int | None = None  # the worker count that signal steers the master to
    event: tuple[str, dict[str, Any]] | None = None  # for the history: kind, fields
    log: str | None = None  # an error worth a log line
    info: str | None = None  # news worth a log line


@dataclass
class Endpoint:
    """One configured endpoint (server or support process) and its lifecycle."""

    config: EndpointConfig
    port: int | None = None
    socket_path: str | None = None
    listeners: list[socket.socket] = field(default_factory=list)
    state: State = State.STOPPED
    child: Child | None = None
    draining: list[Child] = field(default_factory=list)
    pending: Child | None = None
    generation: int = 0
    ready_pids: set[int] = field(default_factory=set)
    worker_sockets: dict[int, str] = field(default_factory=dict)
    target_workers: int = 1
    reported_workers: int | None = None
    last_error: str | None = None
    # Why the server last died, kept after it recovers (last_error is cleared then).
    last_exit: dict[str, Any] | None = None
    # Why the last reload failed (the serving generation went on): not a last_error.
    reload_error: dict[str, Any] | None = None
    failures: int = 0
    restarts: int = 0
    restart_at: float | None = None
    ready_since: float | None = None
    spawned_at: float | None = None  # of the serving generation
    start_s: float | None = None  # its spawn to READY, in seconds
    support_status: dict[str, Any] | None = None
    remote: UrlHealth = field(default_factory=UrlHealth)  # a remote endpoint's URLs

    @property
    def name(self) -> str:
        """The endpoint's name (``<endpoint>@<label>`` for a version)."""
        return self.config.name

    @property
    def is_support(self) -> bool:
        """Whether the endpoint is a support process, not a server."""
        return self.config.is_support

    @property
    def is_virtual(self) -> bool:
        """A remote endpoint or a pipeline: routed by the front, no local process."""
        s = self.config.settings
        return bool(s["URLS"] or s["PIPELINE"])

    @property
    def version(self) -> str | None:
        """The version label of ``<endpoint>@<label>``; None for an unversioned endpoint."""
        return split_target(self.name)[1]

    def children(self) -> list[Child]:
        """Every live child of the endpoint: serving, loading and draining."""
        return [c for c in (self.child, self.pending) if c] + self.draining

    def backoff(self) -> float:
        """Delay before the next start, doubling with each failure in a row, capped at 60 s.

        A first crash restarts at once (0 s), a first failed load waits 1 s; the second
        failure in a row waits 2 s, the third 4 s, then 8 s ... (so 0, 2, 4, 8 s for a
        crash loop and 1, 2, 4, 8 s for a load that keeps failing; ``Service``, for the
        front and the supervisor, waits 0, 1, 2, 4 s).
        """
        if self.failures <= 1:
            return 0.0 if self.state == State.RESTARTING else BACKOFF_FIRST
        return backoff(self.failures - 1)

    def _forget_workers(self) -> None:
        self.ready_pids.clear()
        self.worker_sockets.clear()

    # -- starting ---------------------------------------------------------------------
    def next_generation(self) -> int:
        """The generation of the process about to be spawned (its events carry it)."""
        self.generation += 1
        return self.generation

    def started(self, child: Child, now: float) -> Change:
        """A server (or support process) was spawned; a server is READY once a worker is."""
        self.child = child
        self.reported_workers = None
        self.spawned_at = now
        self._forget_workers()
        if self.is_support:
            self.state, self.ready_since = State.READY, now
            return Change()
        self.state = State.STARTING
        return Change(publish=True)

    def virtual_started(self, now: float) -> Change:
        """A remote endpoint or a pipeline is routable at once: nothing to spawn."""
        self.state, self.ready_since, self.last_error = State.READY, now, None
        self.remote.reset()
        return Change(publish=True)

    def remote_checked(self, results: dict[str, Any], now: float, wall: float) -> Change:
        """The supervisor probed a remote endpoint's URLs: READY while one of them
        answers, UNREACHABLE (the front answers 503 at once) while none does."""
        if self.state not in (State.READY, State.UNREACHABLE):
            return Change()  # stopped meanwhile
        urls = self.config.settings["URLS"]
        results = {u: r for u, r in results.items() if u in urls and isinstance(r, dict)}
        if not self.remote.observe(results, self.config.settings["PING_MISSES"], wall):
            return Change()
        if self.remote.down(urls) != urls:
            if self.state == State.READY:
                return Change(publish=True)  # the front tries the URLs found down last
            self.state, self.ready_since, self.last_error = State.READY, now, None
            return Change(publish=True, info="is reachable again",
                          event=("remote_reachable", {"endpoint": self.name}))
        self.state, self.ready_since = State.UNREACHABLE, None
        self.last_error = self.remote.reason(urls)
        return Change(publish=True, log=self.last_error,
                      event=("remote_unreachable", {"endpoint": self.name,
                                                    "reason": self.last_error}))

    def start_failed(self, error: str) -> Change:
        """Nothing could be spawned (the port is taken, the script is gone)."""
        self.state, self.last_error = State.FAILED, error
        return Change(publish=True, log=error)

    def restart_due(self, now: float) -> bool:
        """True (and counted as a restart) when the backoff of a failure is over."""
        if self.restart_at is None or now < self.restart_at:
            return False
        self.restart_at = None
        self.restarts += 1
        return True

    def reset_failures(self) -> None:
        """An operator's start: the failures so far no longer count."""
        self.failures, self.restart_at, self.last_error = 0, None, None

    def reconfigure(self, config: EndpointConfig) -> Change:
        """New settings for a stopped endpoint; a new address frees the old one."""
        address = ("HOST", "PORT", "TCP_PORT")
        moved = [config.settings[k] for k in address] != [self.config.settings[k] for k in address]
        self.config, self.target_workers = config, config.settings["NR_WORKERS"]
        if moved:
            self.port = None
        return Change(close_listeners=moved)

    def reload_started(self, child: Child) -> None:
        """A new generation loads beside the serving one (see :meth:`switch_generation`)."""
        self.pending = child

    def cancel_restart(self) -> None:
        """Drop a scheduled restart."""
        self.restart_at = None

    # -- events of the serving server ----------------------------------------------------
    def serves(self, generation: Any) -> bool:
        """Whether ``generation`` is the one serving. Worker events count for it only,
        not for a reload still pending: while one loads, the serving server keeps
        scaling and respawning."""
        return generation is not None and self.child is not None \
            and generation == self.child.generation

    def worker_ready(self, generation: Any, pid: int, sock: str | None, now: float) -> Change:
        """A worker loaded its model and listens; the first one makes the endpoint READY,
        and the first one of a pending reload switches to that generation."""
        change = Change()
        if self.pending is not None and generation == self.pending.generation:
            change = self.switch_generation()
        if not self.serves(generation):
            return change
        self.ready_pids.add(pid)
        if sock:
            self.worker_sockets[pid] = sock
            change.publish = True
        if self.state != State.READY:
            self.state, self.ready_since, self.last_error = State.READY, now, None
            if self.spawned_at is not None:
                self.start_s = round(now - self.spawned_at, 4)
            change.publish, change.info = True, "ready" + (f" on port {self.port}"
                                                           if self.port else "")
        return change

    def switch_generation(self) -> Change:
        """The pending generation serves; the old one drains."""
        old, self.child, self.pending = self.child, self.pending, None
        self._forget_workers()
        # The new generation loaded: earlier failures are history.
        self.last_error = self.reload_error = None
        change = Change(event=("reload", {"endpoint": self.name, "generation": self.generation}),
                        info=f"reloaded: generation {self.generation} serving")
        if old is not None:
            self.draining.append(old)
            change.stop.append(old)
        return change

    def worker_exit(self, generation: Any, pid: int) -> Change:
        """A worker of the serving generation exited: no longer ready, its socket unrouted."""
        if not self.serves(generation):
            return Change()
        self.ready_pids.discard(pid)
        return Change(publish=self.worker_sockets.pop(pid, None) is not None)

    def load_failed(self, generation: Any, error: Any) -> Change:
        """A worker could not load; a reload's failure leaves the serving one's state."""
        text = str(error) if error is not None else None
        if self.pending is not None and generation == self.pending.generation:
            self.reload_error = {"error": text, "at": time.time()}
        else:
            self.last_error = text
        return Change(event=("load_failed", {"endpoint": self.name, "generation": generation,
                                             "error": text}))

    def workers_reported(self, generation: Any, count: int) -> Change:
        """gunicorn's worker count changed: steer on toward the target."""
        if not self.serves(generation):
            return Change()
        self.reported_workers = count
        return self.steer()

    def scale(self, count: int) -> Change:
        """A new target worker count: steer toward it."""
        self.target_workers = count
        return self.steer()

    def steer(self) -> Change:
        """Toward the target worker count, in one step: the master is told the count
        and signalled once (TTIN for more, TTOU for fewer), and forks or stops the whole
        difference. Signals that merge lose nothing: each means "go to the count". The
        master reports its new count, which ends the steering (or steers again, when
        the target moved meanwhile)."""
        if self.child is None or self.reported_workers is None \
                or self.reported_workers == self.target_workers:
            return Change()
        up = self.reported_workers < self.target_workers
        return Change(signal=signal.SIGTTIN if up else signal.SIGTTOU,
                      workers=self.target_workers)

    def hung(self, reason: str) -> Change:
        """The supervisor found the serving server stuck: it is killed, and its exit
        reports ``reason`` instead of the exit code."""
        assert self.child is not None
        self.child.kill_reason = reason
        return Change(log=f"{reason}; killing the server",
                      event=("server_hung", {"endpoint": self.name, "reason": reason}))

    # -- exits ---------------------------------------------------------------------------
    def exited(self, code: int | None, now: float, shutting_down: bool) -> Change:
        """The serving process exited: stopped, crashed, failed to load, or crash loop."""
        child = self.child
        assert child is not None
        self.child, self.ready_since = None, None
        self._forget_workers()
        if shutting_down or child.stop_deadline is not None:
            self.state = State.STOPPED
            return Change(publish=True)
        self.failures = 0 if now - child.started_at > STABLE_AFTER else self.failures + 1
        delay = self._failed(code, child)
        self.restart_at = None if delay is None else now + delay
        self.last_exit = {"reason": self.last_error, "exit_code": code, "at": time.time()}
        if delay is None:
            message = (f"{self.last_error}; FAILED after {self.failures} failed loads in a row, "
                       f"not retried: fix it, then POST /start_server")
        else:
            message = f"{self.last_error}; {self.state.value}, restart in {delay:.0f} s"
        return Change(publish=True, log=message, event=("server_exit", {
            "endpoint": self.name, "exit_code": code, "state": self.state.value,
            "reason": self.last_error, "restart_in_s": delay}))

    def _failed(self, code: int | None, child: Child) -> float | None:
        """Set the state and the error of an unplanned exit; returns the delay before
        the next start, None when a load failed too often to try again."""
        if code in LOAD_FAILURE_CODES and not self.is_support:
            self.state = State.FAILED
            self.last_error = self.last_error or f"model failed to load (exit code {code})"
            return None if self.failures >= LOAD_ATTEMPTS else self.backoff()
        self.state = State.CRASHLOOP if self.failures >= CRASHLOOP_AFTER else State.RESTARTING
        self.last_error = child.kill_reason or f"process exited with code {code}"
        return self.backoff()

    def reload_refused(self, error: str) -> Change:
        """A reload could not start (its workers fit on no GPU): the serving generation
        goes on, and the reason shows as ``reload_error``."""
        self.reload_error = {"error": error, "at": time.time()}
        return Change(log=f"reload not started ({error}); keeping the serving generation",
                      event=("reload_failed", {"endpoint": self.name, "error": error}))

    def pending_exited(self, code: int | None) -> Change:
        """A reload's new generation died before it served: keep the old one (READY
        as it was: the failure shows as ``reload_error``, not as ``last_error``)."""
        error = (self.reload_error or {}).get("error") or f"reload failed (exit code {code})"
        self.reload_error = {"error": error, "exit_code": code, "at": time.time()}
        self.pending = None
        if self.child is not None:
            # Events carry their generation: listen to the one still serving again.
            self.generation = self.child.generation
        return Change(log=f"reload failed ({error}); keeping the serving generation",
                      event=("reload_failed", {"endpoint": self.name, "exit_code": code,
                                               "reason": error}))

    def drained(self, child: Child, shutting_down: bool) -> Change:
        """A stopping child exited; the last one of a stop makes the endpoint STOPPED."""
        self.draining.remove(child)
        if self.state != State.STOPPING or self.draining:
            return Change()
        self.state = State.STOPPED
        return Change(publish=True, close_listeners=not shutting_down)

    # -- stopping ------------------------------------------------------------------------
    def stop(self) -> Change:
        """Stop serving: the serving and the loading generation drain."""
        self.restart_at = None
        stopping = [c for c in (self.child, self.pending) if c]
        self.draining += stopping
        self.child = self.pending = None
        self._forget_workers()
        self.state = State.STOPPING if self.draining else State.STOPPED
        # Stopped at once (nothing ran: IDLE, FAILED): its port is freed now, as a
        # drained stop frees it (:meth:`drained`).
        return Change(publish=True, stop=stopping, close_listeners=not self.draining)

    def scale_to_zero(self, idle_s: float) -> Change:
        """Idle for IDLE_TIMEOUT (MIN_WORKERS 0): the serving generation drains and
        stops; the listeners stay, and the next request starts a new one on them."""
        assert self.child is not None
        old = self.child
        self.draining.append(old)
        self.child, self.ready_since = None, None
        self._forget_workers()
        self.state = State.IDLE
        return Change(publish=True, stop=[old], info=f"idle for {idle_s:g} s: scaled to zero",
                      event=("scaled_to_zero", {"endpoint": self.name,
                                                "generation": old.generation,
                                                "idle_s": idle_s}))

    # -- what others see -------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The endpoint as /list_servers shows it."""
        s = self.config.settings
        return {
            "state": self.state.value,
            "kind": self.kind(),
            "version": self.version,
            "port": self.port,
            "host": s["HOST"],
            "nr_workers": self.target_workers,
            "workers_ready": len(self.ready_pids),
            "pid": self.child.pid if self.child else None,
            "worker_pids": sorted(self.ready_pids),
            "generation": self.generation,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_exit": self.last_exit,
            "reload_error": self.reload_error,
            "uptime_s": round(time.monotonic() - self.ready_since, 1) if self.ready_since else None,
            "start_s": self.start_s,
            "retry_in_s": (round(max(0.0, self.restart_at - time.monotonic()), 1)
                           if self.restart_at else None),
            "description": s["DESCRIPTION"],
            "module": self.config.module_name,
            **({"remote": {"urls": self.remote.describe(s["URLS"]),
                           "signature": s["REMOTE_SIGNATURE"] or split_target(self.name)[0]}}
               if s["URLS"] else {}),
        }

    def kind(self) -> str:
        """What the endpoint is: server, support, remote or pipeline."""
        s = self.config.settings
        if self.is_support:
            return "support"
        return "remote" if s["URLS"] else "pipeline" if s["PIPELINE"] else "server"

    def route(self) -> Route:
        """What the front needs to forward a request."""
        s = self.config.settings
        remote = None
        if s["URLS"]:
            remote = {"urls": s["URLS"], "signature": s["REMOTE_SIGNATURE"],
                      "api_key": s["REMOTE_API_KEY"], "down": self.remote.down(s["URLS"])}
        return Route(
            name=self.name, state=self.state, timeout=s["TIMEOUT"], version=self.version,
            breaker=s["BREAKER"], socket=self.socket_path,
            workers=tuple(sorted(self.worker_sockets.values())),
            retry_on_crash=s["RETRY_ON_CRASH"],
            stream={"first_chunk": s["STREAM_FIRST_CHUNK_TIMEOUT"],
                    "idle": s["STREAM_IDLE_TIMEOUT"], "total": s["STREAM_TIMEOUT"]},
            last_error=self.last_error, retry_after=self.retry_after(),
            max_queue_depth=s["MAX_QUEUE_DEPTH"], max_queue_bytes=s["MAX_QUEUE_BYTES"],
            max_in_flight=self.max_in_flight(), slots=self.slots(),
            backlog_ms=float(s["FAIR_BACKLOG_MS"]), remote=remote,
            pipeline=None if remote else s["PIPELINE"] or None,
            idle_timeout=s["IDLE_TIMEOUT"] if s["MIN_WORKERS"] == 0 else None,
            cold_start_timeout=s["COLD_START_TIMEOUT"], cache=cache_of(s["CACHE"]))

    def max_in_flight(self) -> int:
        """The front's bulkhead: ``MAX_IN_FLIGHT``, else what the live workers can hold
        (times ``MAX_BATCH_SIZE``) with room for 32 waiting per slot."""
        s = self.config.settings
        if s["MAX_IN_FLIGHT"] is not None:
            return int(s["MAX_IN_FLIGHT"])
        if self.is_virtual:
            # Its capacity is another's (a remote gateway, the steps' endpoints).
            return IN_FLIGHT_FACTOR * IN_FLIGHT_FACTOR
        return max(1, len(self.ready_pids)) * int(s["MAX_BATCH_SIZE"]) * IN_FLIGHT_FACTOR

    def slots(self) -> int:
        """Requests the fair queue lets each worker run at once (FAIR_SLOTS)."""
        s = self.config.settings
        given = s["FAIR_SLOTS"] or self.config.worker_config().get("MAX_SEQUENCES")
        return int(given) if isinstance(given, int) and given > 0 else int(s["MAX_BATCH_SIZE"])

    def retry_after(self) -> float:
        """Seconds a refused caller should wait before trying again."""
        if self.restart_at is not None:
            return max(1.0, self.restart_at - time.monotonic())
        if self.state == State.UNREACHABLE:  # the next probe may find it back
            return max(1.0, float(self.config.settings["PING_INTERVAL"]))
        return 1.0


def write_routes(path: Path, endpoints: dict[str, Endpoint], settings: dict[str, Any],
                 traffic: dict[str, Any]) -> None:
    """Publish the route table atomically (readers never see half a file); ``traffic``:
    the policy of each endpoint with versions."""
    table = RouteSnapshot(
        endpoints={n: e.route() for n, e in endpoints.items() if not e.config.is_support},
        traffic={n: TrafficPolicy.of(p) for n, p in traffic.items()},
        no_startup_wait=settings["NO_STARTUP_WAIT"], ready_policy=settings["READY_POLICY"],
        written_at=time.time())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table.to_json()))
    os.replace(tmp, path)
