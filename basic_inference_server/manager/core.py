"""The manager's loop and its I/O: spawn, stop, signal, publish.

One loop owns everything: it spawns the gateway front, the supervisor, one server per
endpoint and the support processes, reaps them the moment they exit, restarts them with
backoff, publishes the route table, and answers management commands on a Unix socket.
What changes an endpoint's state is decided by :class:`.state.Endpoint`; this loop
carries out the :class:`.state.Change` each transition returns. Signal handlers only
wake the loop (``signal.set_wakeup_fd``); the loop acts.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import EndpointConfig, GatewayConfig, warn_near_misses
from ..contracts import FRONT_MODULE, JOBRUNNER_MODULE, SERVER_MODULE, SUPERVISOR_MODULE, Event
from ..discovery import endpoint_file
from ..errors import ConfigError, DiscoveryError
from ..health.alerts import AlertTracker, Thresholds
from ..health.history import History
from ..health.memory import GATEWAY_TREE
from ..ipc import MAX_MESSAGE
from ..privfiles import private_dir
from ..procutil import free_port
from ..queues import jobs_spec
from ..tenants import tenants_spec
from ..traffic.versions import expand
from .children import Child, Service, spawn, spawn_script
from .control import LOOKUPS_PER_S, REFUSALS_PER_S, Budget, ControlServer, json_depth
from .listeners import (
    admin_token,
    close_server_listeners,
    listen_tcp,
    open_server_listeners,
    reach_address,
    sweep_stale_run_dirs,
)
from .rollouts import RolloutController
from .specs import (
    Paths,
    front_spec,
    front_url,
    jobrunner_spec,
    server_spec,
    supervisor_spec,
    support_launcher,
    support_payload,
)
from .state import STABLE_AFTER, Change, Endpoint, State, write_routes
from .traffic import TrafficTable

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 78  # EX_CONFIG: the configuration is wrong, restarting will not help
# A worker's notification is kept and shown by /notifications: bounded, so that
# nothing stored can break a later answer (orjson writes at most 254 levels).
NOTIFICATION_MAX_DEPTH = 32

# The notify socket's events about one endpoint -> the transition each one is.
EndpointEvent = Callable[[Endpoint, dict[str, Any], float], Change]
ENDPOINT_EVENTS: dict[Event, EndpointEvent] = {
    Event.WORKER_READY: lambda ep, msg, now: ep.worker_ready(
        msg.get("generation"), int(msg["pid"]), msg.get("socket"), now),
    Event.WORKER_EXIT: lambda ep, msg, _now: ep.worker_exit(msg.get("generation"),
                                                            int(msg["pid"])),
    Event.LOAD_FAILED: lambda ep, msg, _now: ep.load_failed(msg.get("generation"),
                                                            msg.get("error")),
    Event.NWORKERS: lambda ep, msg, _now: ep.workers_reported(msg.get("generation"),
                                                             int(msg["value"])),
}


def warn_unchecked_keys(cfg: EndpointConfig) -> None:
    """Near misses among the keys of a section whose code the manager never sees imported
    (support scripts, remote and pipeline endpoints: the settings only). An endpoint
    server's worker checks its own against the settings and its ``_CONFIG``."""
    if cfg.is_support or cfg.settings["URLS"] or cfg.settings["PIPELINE"]:
        warn_near_misses(cfg.name, cfg.extra)


class Core:
    """Owns the process tree of one gateway: the loop, the children and the endpoints."""

    def __init__(self, config: GatewayConfig, endpoints_dir: str | Path, host: str = "0.0.0.0",
                 port: int = 5002, cache_dir: str | Path = "_cache",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        # Checked before anything is written there: a folder of another user (an older
        # image ran as root) is an error that says how to fix it.
        self.cache_dir = private_dir(cache_dir).resolve()
        self.admin_token = admin_token(config, self.cache_dir)
        # The job runner's credential for the front's /run (never on disk or argv).
        self.internal_token = secrets.token_urlsafe(32)
        self.host = host
        self.port = port
        sweep_stale_run_dirs()
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"bis-{os.getpid()}-"))
        self.paths = Paths(routes=str(self.run_dir / "routes.json"),
                           control=str(self.run_dir / "control.sock"),
                           notify=str(self.run_dir / "notify.sock"),
                           endpoints_dir=str(Path(endpoints_dir).resolve()))
        # Endpoint servers' metrics (model manager), merged into the front's /metrics.
        self.server_metrics = self.run_dir / "metrics-servers"
        self.server_metrics.mkdir()
        # An endpoint with VERSIONS runs one server per version ("name@label").
        self.endpoints: dict[str, Endpoint] = {
            name: Endpoint(config=cfg, target_workers=cfg.settings["NR_WORKERS"])
            for section in config.endpoints.values()
            for name, cfg in expand(section, config.source).items()}
        for cfg in config.endpoints.values():
            warn_unchecked_keys(cfg)
        self.traffic = TrafficTable(config.endpoints, self.cache_dir)
        self.rollouts = RolloutController(self.traffic, self.cache_dir)
        self.front_listener: socket.socket | None = None
        self.control_server: ControlServer | None = None
        # Where processes of this box reach the front (set once it listens).
        self.local_address: str | None = None
        self.refusals = Budget(REFUSALS_PER_S, 2 * REFUSALS_PER_S, clock())
        self.lookups = Budget(LOOKUPS_PER_S, 2 * LOOKUPS_PER_S, clock())
        self.front = Service("gateway front", self._spawn_front, STABLE_AFTER)
        self.supervisor = Service("supervisor", self._spawn_supervisor, STABLE_AFTER)
        # Started once an endpoint has no server of its own to run its jobs.
        self.jobrunner = Service("job runner", self._spawn_jobrunner, STABLE_AFTER)
        self.notifications: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self.alerts = AlertTracker(Thresholds(
            mem_avail_pct_min=config["ALERT_MEM_AVAIL_PCT"],
            disk_free_pct_min=config["ALERT_DISK_FREE_PCT"],
            gpu_mem_used_pct_max=config["ALERT_GPU_MEM_PCT"],
            restarts_max=config["ALERT_RESTARTS"]))
        self.history = History(cache_dir)
        # The supervisor's latest sample, with the status and alerts computed from it.
        self.health: dict[str, Any] | None = None
        self.jobs = jobs_spec(config["QUEUE"], config["RESULTS"], config["JOB_TTL"], cache_dir)
        self.sel = selectors.DefaultSelector()
        self.shutting_down = False
        self.exit_code = EXIT_OK
        self.done = False
        first = config["FIRST_SERVER_PORT"]
        self._next_port = port + 1 if first is None else first
        self._wake_r, self._wake_w = socket.socketpair()

    # -- set-up -------------------------------------------------------------------
    def _setup(self) -> None:
        self.front_listener = listen_tcp(self.host, self.port)
        if self.port == 0:
            self.port = self.front_listener.getsockname()[1]
        self.local_address = reach_address(self.front_listener)
        control = socket.socket(socket.AF_UNIX)
        control.bind(self.paths.control)
        control.listen(64)
        control.setblocking(False)
        self.control_server = ControlServer(self, self.sel)
        self.sel.register(control, selectors.EVENT_READ, self.control_server.accept)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(self.paths.notify)
        notify.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        notify.setblocking(False)
        self.sel.register(notify, selectors.EVENT_READ, self._read_notify)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._read_signals)
        signal.set_wakeup_fd(self._wake_w.fileno())
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # The handler does nothing: the wakeup fd carries the signal number to the loop.
            signal.signal(sig, lambda _s, _f: None)

    # -- main loop ------------------------------------------------------------------
    def run(self) -> int:
        """Start everything and serve until shut down; returns the process exit code."""
        try:
            self._setup()
        except ConfigError:
            self._cleanup()
            raise
        log.info("gateway on %s:%d, %d endpoint(s), run dir %s", self.host, self.port,
                 len(self.endpoints), self.run_dir)
        self.history.add_event("startup", port=self.port, pid=os.getpid(),
                               endpoints=sorted(self.endpoints))
        for ep in self.endpoints.values():
            if not ep.config.settings["DISABLED"]:
                self._start_endpoint(ep)
        self._publish()
        self.supervisor.launch()
        self.front.launch()
        if self.traffic.sections or any(ep.is_virtual for ep in self.endpoints.values()):
            # Endpoints without a server of their own: their jobs need the job runner.
            self.jobrunner.launch()
        try:
            while not self.done:
                for key, _ in self.sel.select(self._next_timeout()):
                    key.data(key.fileobj)
                self._reap()
                self._timers()
        finally:
            self._cleanup()
        return self.exit_code

    def _next_timeout(self) -> float:
        deadlines = [ep.restart_at for ep in self.endpoints.values() if ep.restart_at]
        deadlines += [c.stop_deadline for c in self._children() if c.stop_deadline]
        deadlines += [s.restart_at for s in self.services() if s.restart_at]
        if not deadlines:
            return 5.0
        return max(0.0, min(deadlines) - self.clock())

    def services(self) -> tuple[Service, ...]:
        """The children of which there is one: front, supervisor, job runner."""
        return self.front, self.supervisor, self.jobrunner

    def _children(self) -> list[Child]:
        out = [s.child for s in self.services() if s.child]
        for ep in self.endpoints.values():
            out += ep.children()
        return out

    def _trees(self) -> dict[str, list[int]]:
        """The process trees to account: the gateway's own, and one per endpoint."""
        gateway = [os.getpid()] + [s.child.pid for s in self.services() if s.child]
        servers = {n: [c.pid for c in e.children()] for n, e in self.endpoints.items()}
        return {GATEWAY_TREE: gateway, **servers}

    def _timers(self) -> None:
        now = self.clock()
        for child in self._children():
            child.enforce(now)
        if self.shutting_down:
            return
        for ep in self.endpoints.values():
            if ep.restart_due(now):
                self._start_endpoint(ep)
        for service in self.services():
            if service.due(now):
                service.launch()


    def _read_signals(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.shutting_down:
                    log.warning("second stop signal: killing every child now")
                    for child in self._children():
                        child.kill_group()
                else:
                    log.info("received %s: draining and shutting down", signal.Signals(signum).name)
                    self.begin_shutdown()
            elif signum == signal.SIGHUP:
                log.info("SIGHUP: reloading every endpoint")
                for ep in self.endpoints.values():
                    if ep.state == State.READY and not ep.is_support:
                        self.reload_endpoint(ep)

    # -- doing what a transition asks ---------------------------------------------------
    def apply(self, ep: Endpoint, change: Change) -> None:
        """Carry out a transition's Change: the only place endpoint I/O follows from."""
        if change.log:
            log.error("%s: %s", ep.name, change.log)
        if change.info:
            log.info("%s %s", ep.name, change.info)
        for child in change.stop:
            child.terminate(self.config["STOP_TIMEOUT"])
        if change.signal is not None and ep.child is not None:
            os.kill(ep.child.pid, change.signal)
        if change.close_listeners:
            close_server_listeners(ep)
        if change.event is not None:
            kind, fields = change.event
            self.history.add_event(kind, **fields)
        if change.publish:
            self._publish()

    def _publish(self) -> None:
        write_routes(Path(self.paths.routes), self.endpoints, self.config.settings,
                     self.traffic.policies())

    # -- children -----------------------------------------------------------------------
    def _spawn_front(self) -> Child:
        assert self.front_listener is not None
        metrics = self.run_dir / "metrics"
        # A fresh folder per front: counters of dead front processes start over with it.
        shutil.rmtree(metrics, ignore_errors=True)
        metrics.mkdir()
        spec = front_spec(self.config, self.paths, self.admin_token, self.jobs.to_dict(),
                          tenants_spec(self.config, self.cache_dir), self.internal_token)
        return self._spawn("front", "gateway", FRONT_MODULE, spec,
                           fds=(self.front_listener.fileno(),),
                           env={"PROMETHEUS_MULTIPROC_DIR": str(metrics),
                                "BIS_SERVER_METRICS_DIR": str(self.server_metrics)})

    def _spawn_supervisor(self) -> Child:
        spec = supervisor_spec(self.config, self.paths, str(self.cache_dir))
        return self._spawn("supervisor", "supervisor", SUPERVISOR_MODULE, spec)

    def _spawn_jobrunner(self) -> Child:
        url = front_url(self.host, self.port, bool(self.config["TLS_CERT"]))
        spec = jobrunner_spec(self.config, self.paths, self.jobs.to_dict(), url,
                              self.internal_token, tenants_spec(self.config, self.cache_dir))
        # Its jobs' per-tenant counters are merged with the servers' at scrape time.
        return self._spawn("jobrunner", "job runner", JOBRUNNER_MODULE, spec,
                           env={"PROMETHEUS_MULTIPROC_DIR": str(self.server_metrics)})

    def _spawn_server(self, ep: Endpoint) -> Child:
        spec = server_spec(self.config, self.paths, ep, self.jobs.to_dict(),
                           tenants_spec(self.config, self.cache_dir))
        return self._spawn("server", ep.name, SERVER_MODULE, spec,
                           fds=tuple(s.fileno() for s in ep.listeners), generation=ep.generation,
                           env={"PROMETHEUS_MULTIPROC_DIR": str(self.server_metrics)})

    def _spawn(self, role: str, name: str, module: str, spec: Any, **kw: Any) -> Child:
        return spawn(role, name, module, spec, hide=self._hidden_env(role), **kw)

    def _hidden_env(self, role: str) -> tuple[str, ...]:
        """Variables of our environment a child of ``role`` does not get (besides the
        admin token's, which no child gets: :func:`.children.child_env`).

        The one place that decides it for every child. The variables holding remote
        endpoints' keys (``REMOTE_API_KEY: env:VAR``) reach the front alone, which
        calls the remotes; endpoint code, support scripts, the supervisor and the job
        runner never see them.
        """
        if role == "front":
            return ()
        refs = (ep.config.settings["REMOTE_API_KEY"] or "" for ep in self.endpoints.values())
        return tuple(ref[4:] for ref in refs if ref.startswith("env:"))

    def _allocate_port(self, ep: Endpoint) -> int:
        if ep.config.settings["PORT"] is not None:
            return int(ep.config.settings["PORT"])
        if self._next_port == 0:
            return free_port(ep.config.settings["HOST"])
        port = self._next_port
        self._next_port += 1
        return port

    def _open_listeners(self, ep: Endpoint) -> None:
        if not ep.listeners:
            open_server_listeners(ep, self.run_dir, self._allocate_port)

    def _start_endpoint(self, ep: Endpoint) -> None:
        """Spawn the endpoint's process; a server becomes READY when a worker reports in."""
        if ep.is_virtual:
            self.apply(ep, ep.virtual_started(self.clock()))
            return
        try:
            if ep.is_support:
                script = endpoint_file(self.paths.endpoints_dir, ep.config.module_name)
                ep.next_generation()
                assert self.local_address is not None
                payload = support_payload(ep, self.local_address, self.port)
                child = spawn_script(ep.name, str(script),
                                     ["--config_endpoint", json.dumps(payload)],
                                     hide=self._hidden_env("support"),
                                     launcher=support_launcher(self.local_address, self.port,
                                                               self.config["TLS_CERT"]))
            else:
                self._open_listeners(ep)
                ep.next_generation()
                child = self._spawn_server(ep)
        except (ConfigError, DiscoveryError) as exc:
            self.apply(ep, ep.start_failed(str(exc)))
            return
        self.apply(ep, ep.started(child, self.clock()))

    def reload_endpoint(self, ep: Endpoint) -> None:
        """Zero-downtime reload: start a new generation beside the old one, switch when ready."""
        if ep.pending is not None:
            return
        ep.next_generation()
        ep.reload_started(self._spawn_server(ep))

    def stop_endpoint(self, ep: Endpoint) -> None:
        self.apply(ep, ep.stop())

    def _reap(self) -> None:
        for service in self.services():
            if service.child and service.child.poll() is not None:
                self._service_exited(service)
        for ep in self.endpoints.values():
            for child in list(ep.draining):
                if child.poll() is not None:
                    self.apply(ep, ep.drained(child, self.shutting_down))
            if ep.pending and ep.pending.poll() is not None:
                self.apply(ep, ep.pending_exited(ep.pending.poll()))
            if ep.child and ep.child.poll() is not None:
                self.apply(ep, ep.exited(ep.child.poll(), self.clock(), self.shutting_down))
        if self.shutting_down and not self._children():
            self.done = True

    def _service_exited(self, service: Service) -> None:
        assert service.child is not None
        code = service.child.poll()
        if self.shutting_down:
            service.child = None
            log.info("%s stopped (exit %s)", service.name, code)
            if service is self.front:
                for ep in self.endpoints.values():
                    self.stop_endpoint(ep)
            return
        delay = service.exited(self.clock())
        log.error("%s exited with %s; restarting in %.0f s", service.name, code, delay)
        self.history.add_event("service_exit", service=service.name, exit_code=code,
                               restart_in_s=delay)

    # -- events from servers -----------------------------------------------------------
    def _read_notify(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            try:
                msg = json.loads(data)
                if isinstance(msg, dict):
                    self.on_event(msg)
            except Exception:  # noqa: BLE001 - no event may stop the manager
                log.exception("bad event on the notify socket: %.200r", data)

    def on_event(self, msg: dict[str, Any]) -> None:
        """Dispatch one notify-socket event; an unknown one is logged and dropped."""
        try:
            event = Event(msg.get("event"))
        except ValueError:
            log.warning("unknown event %.100r dropped", msg.get("event"))
            return
        if event is Event.NOTIFICATION:
            if json_depth(msg, NOTIFICATION_MAX_DEPTH) > NOTIFICATION_MAX_DEPTH:
                log.warning("notification nested deeper than %d levels dropped",
                            NOTIFICATION_MAX_DEPTH)
            else:
                self.notifications.append(msg)
            return
        name = msg.get("endpoint")
        ep = self.endpoints.get(name) if isinstance(name, str) else None
        if ep is not None:
            self.apply(ep, ENDPOINT_EVENTS[event](ep, msg, self.clock()))

    # -- shutdown ------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Stop taking work: the front drains first, then servers, then we exit."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self.history.add_event("shutdown", pid=os.getpid())
        for ep in self.endpoints.values():
            ep.cancel_restart()
        if self.supervisor.child is not None:
            # Nothing to watch any more: draining servers are busy, not hung.
            self.supervisor.child.terminate(5)
        for service in (self.front, self.jobrunner):
            if service.child is not None:
                service.child.terminate(self.config["STOP_TIMEOUT"] + 5)
        if self.front_listener is not None:
            # Our copy of the gateway socket would keep accepting connections into its
            # backlog while the front drains; once the front's copies close too, new
            # callers are refused instead of left hanging.
            self.front_listener.close()
            self.front_listener = None
        if self.front.child is None:
            # No front to drain first (it died and waits for its restart): stop the rest now.
            for ep in self.endpoints.values():
                self.stop_endpoint(ep)

    def _cleanup(self) -> None:
        for child in self._children():
            child.kill_group()
        signal.set_wakeup_fd(-1)
        for ep in self.endpoints.values():
            close_server_listeners(ep)
        if self.front_listener is not None:
            self.front_listener.close()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()
        if self.control_server is not None:
            self.control_server.close()
        self._wake_r.close()
        self._wake_w.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
