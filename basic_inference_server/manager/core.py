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
import logging
import os
import secrets
import selectors
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..audit import AuditLog
from ..config import GatewayConfig
from ..errors import ConfigError, DiscoveryError
from ..health.gpu import RECORDING_ENV
from ..health.history import History
from ..health.memory import GATEWAY_TREE
from ..ledger import LAST_BATCH_S, ledger_shipper
from ..privfiles import private_dir
from ..queues import jobs_spec
from .children import Child, Service
from .control import ControlServer, Handler
from .inbox import Inbox
from .listeners import (
    admin_token,
    close_server_listeners,
    listen_tcp,
    reach_address,
    sweep_stale_run_dirs,
)
from .placement import GpuPlacer, NoRoom
from .rollouts import RolloutController
from .spawner import Spawner
from .specs import Paths, configured_endpoints
from .state import STABLE_AFTER, Change, Endpoint, write_routes
from .traffic import TrafficTable

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 78  # EX_CONFIG: the configuration is wrong, restarting will not help

class Core:
    """Owns the process tree of one gateway: the loop, the children and the endpoints.

    What the management commands do is in their handlers, objects given the core
    (:mod:`.manager`); they act through its public methods.
    """

    def __init__(self, config: GatewayConfig, endpoints_dir: str | Path, host: str = "0.0.0.0",
                 port: int = 5002, cache_dir: str | Path = "_cache",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        if config["NVML_RECORDING"]:
            # Every process of the gateway reads GPU figures from the recording: the
            # placement here, the supervisor's samples, the workers' memory guards.
            os.environ[RECORDING_ENV] = str(Path(config["NVML_RECORDING"]).resolve())
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
        self.paths = Paths.in_run_dir(self.run_dir, endpoints_dir)
        # Endpoint servers' metrics (model manager), merged into the front's /metrics.
        # The front's request metrics (made anew at each front start) and the servers'.
        self.front_metrics = self.run_dir / "metrics"
        self.server_metrics = self.run_dir / "metrics-servers"
        self.server_metrics.mkdir()
        self.endpoints = configured_endpoints(config)
        self.traffic = TrafficTable(config.endpoints, self.cache_dir)
        self.rollouts = RolloutController(self.traffic, self.cache_dir)
        self.front_listener: socket.socket | None = None
        self.control_server: ControlServer | None = None
        # Where processes of this box reach the front (set once it listens).
        self.local_address: str | None = None
        self.spawner = Spawner(self)
        self.placer = GpuPlacer()  # GPU_MEMORY_MB: which GPU each worker goes to
        self.front = Service("gateway front", self.spawner.front, STABLE_AFTER)
        self.supervisor = Service("supervisor", self.spawner.supervisor, STABLE_AFTER)
        # Started once an endpoint has no server of its own to run its jobs.
        self.jobrunner = Service("job runner", self.spawner.jobrunner, STABLE_AFTER)
        self.notifications: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self.history = History(cache_dir)
        self.audit = AuditLog(self.cache_dir)  # read for /history; the fronts write it
        self.ledger = ledger_shipper(config["LEDGER_POSTGRES"], self.cache_dir)
        # The supervisor's latest sample, with the status and alerts computed from it.
        self.health: dict[str, Any] | None = None
        self.jobs = jobs_spec(config["QUEUE"], config["RESULTS"], config["JOB_TTL"], cache_dir)
        self.sel = selectors.DefaultSelector()
        self.shutting_down = False
        self.exit_code = EXIT_OK
        self.done = False
        self.inbox = Inbox(self)
        # Last: a handler may read anything the core holds.
        self.handlers = self.command_handlers()

    def command_handlers(self) -> dict[str, Handler]:
        """The control commands' handlers, by command: :class:`.manager.Manager` gives them."""
        return {}

    # -- set-up -------------------------------------------------------------------
    def _setup(self) -> None:
        """Open the gateway's socket (the port it got, when 0 asked for any), the control
        socket and the inbox."""
        self.front_listener = listen_tcp(self.host, self.port)
        if self.port == 0:
            self.port = self.front_listener.getsockname()[1]
        self.local_address = reach_address(self.front_listener)
        control = socket.socket(socket.AF_UNIX)
        control.bind(self.paths.control)
        control.listen(64)
        control.setblocking(False)
        self.control_server = ControlServer(self.handlers, self.sel)
        self.sel.register(control, selectors.EVENT_READ, self.control_server.accept)
        self.inbox.open(self.sel)

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
                self.start_endpoint(ep)
        self.publish()
        if self.ledger is not None:
            self.ledger.start()
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
        """Seconds the loop may sleep: until the next restart or stop deadline is due,
        at most 5 s when none is."""
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
        """Every process the manager started and has not reaped yet: the services,
        each endpoint's serving, pending and draining children."""
        out = [s.child for s in self.services() if s.child]
        for ep in self.endpoints.values():
            out += ep.children()
        return out

    def trees(self) -> dict[str, list[int]]:
        """The process trees to account: the gateway's own, and one per endpoint."""
        gateway = [os.getpid()] + [s.child.pid for s in self.services() if s.child]
        servers = {n: [c.pid for c in e.children()] for n, e in self.endpoints.items()}
        return {GATEWAY_TREE: gateway, **servers}

    def kill_all(self) -> None:
        """Kill every child's process group now (a second stop signal)."""
        for child in self._children():
            child.kill_group()

    def on_event(self, msg: dict[str, Any]) -> None:
        """One event of the notify socket (see :class:`.inbox.Inbox`)."""
        self.inbox.on_event(msg)

    def _timers(self) -> None:
        """What is due by the clock: stop deadlines enforced (a child past its grace is
        killed), endpoints and services restarted once their backoff is over."""
        now = self.clock()
        for child in self._children():
            child.enforce(now)
        if self.shutting_down:
            return
        for ep in self.endpoints.values():
            if ep.restart_due(now):
                self.start_endpoint(ep)
        for service in self.services():
            if service.due(now):
                service.launch()


    # -- doing what a transition asks ---------------------------------------------------
    def apply(self, ep: Endpoint, change: Change) -> None:
        """Carry out a transition's Change: the only place endpoint I/O follows from.

        In order: its log lines, the children it stops, the signal to the serving
        master, the listeners it frees, its history event, and the route table.
        """
        if change.log:
            log.error("%s: %s", ep.name, change.log)
        if change.info:
            log.info("%s %s", ep.name, change.info)
        for child in change.stop:
            child.terminate(self.config["STOP_TIMEOUT"])
        if change.signal is not None and ep.child is not None:
            self.spawner.signal(ep, change.signal, change.workers)
        if change.close_listeners:
            close_server_listeners(ep)
        if change.event is not None:
            kind, fields = change.event
            self.history.add_event(kind, **fields)
        if change.publish:
            self.publish()

    def publish(self) -> None:
        """Write the route table the front reads: the endpoints, their states and
        sockets, and the traffic policies."""
        write_routes(Path(self.paths.routes), self.endpoints, self.config.settings,
                     self.traffic.policies())

    # -- children -----------------------------------------------------------------------
    def start_endpoint(self, ep: Endpoint) -> None:
        """Spawn the endpoint's process; a server becomes READY when a worker reports in.

        A virtual endpoint (remote, pipeline) has no process: it is started at once. A
        file that cannot be found or loaded fails the start, with its reason.
        """
        if ep.is_virtual:
            self.apply(ep, ep.virtual_started(self.clock()))
            return
        spawned = self.clock()  # spawn to READY counts from here (start_s)
        try:
            child = self.spawner.support(ep) if ep.is_support else self.spawner.server(ep)
        except (ConfigError, DiscoveryError, NoRoom) as exc:
            self.apply(ep, ep.start_failed(str(exc)))
            return
        self.apply(ep, ep.started(child, spawned))

    def reload_endpoint(self, ep: Endpoint) -> None:
        """Zero-downtime reload: start a new generation beside the old one, switch when ready."""
        if ep.pending is not None:
            return
        try:
            ep.reload_started(self.spawner.server(ep))
        except NoRoom as exc:
            self.apply(ep, ep.reload_refused(str(exc)))

    def stop_endpoint(self, ep: Endpoint) -> None:
        """Stop an endpoint gracefully: its servers drain, then exit."""
        self.apply(ep, ep.stop())

    def _reap(self) -> None:
        """Account for every child that exited since the last round; the loop ends once
        a shutdown has no child left."""
        for service in self.services():
            if service.child and service.child.poll() is not None:
                self._service_exited(service)
        for ep in self.endpoints.values():
            self._reap_endpoint(ep)
        self.placer.forget((name, c.generation) for name, ep in self.endpoints.items()
                           for c in ep.children())
        if self.shutting_down and not self._children():
            self.done = True

    def _reap_endpoint(self, ep: Endpoint) -> None:
        """An endpoint's exited children: a drained old generation, a reload that failed,
        the serving server (restarted with backoff unless shutting down)."""
        for child in list(ep.draining):
            if child.poll() is not None:
                self.apply(ep, ep.drained(child, self.shutting_down))
        if ep.pending and ep.pending.poll() is not None:
            self.apply(ep, ep.pending_exited(ep.pending.poll()))
        if ep.child and ep.child.poll() is not None:
            self.apply(ep, ep.exited(ep.child.poll(), self.clock(), self.shutting_down))

    def _service_exited(self, service: Service) -> None:
        """A service exited: gone for good while shutting down (the front's end stops
        the servers), else restarted with backoff."""
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

    # -- shutdown ------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Stop taking work: the front drains first, then servers, then we exit.

        The supervisor goes at once, the front and the job runner get the stop timeout
        and 5 s more; the servers are stopped when the front is gone (see
        :meth:`_service_exited`). A second call does nothing.
        """
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
        """On the way out, whatever happened: kill what is left, close every socket and
        remove the run folder."""
        self.kill_all()
        if self.ledger is not None:
            self.ledger.stop(LAST_BATCH_S)  # once every writer of the journal is gone
        for ep in self.endpoints.values():
            close_server_listeners(ep)
        if self.front_listener is not None:
            self.front_listener.close()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()
        if self.control_server is not None:
            self.control_server.close()
        self.inbox.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
