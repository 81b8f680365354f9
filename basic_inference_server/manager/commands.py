"""Management commands on endpoints: list, start, stop, scale, reload, hang reports.

Each handler answers the command of :mod:`..control_api` it is marked with; the
arguments arrive checked against the command's type, and every other input is
checked before anything acts on it.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import Callable
from typing import Any, TypeVar

from .. import control_api as api
from ..config import EndpointConfig, file_section, parse_endpoint
from ..contracts import probe_path, quota_to_json
from ..discovery import endpoint_file
from ..errors import ConfigError, DiscoveryError
from ..names import VERSION_SEP
from ..traffic.settings import TRAFFIC_KEYS
from .children import Service
from .control import Reply, error, handles
from .core import EXIT_OK, Core
from .listeners import check_resolves
from .placement import NoRoom
from .remote_commands import remote_targets
from .specs import job_targets, warn_unchecked_keys
from .state import Endpoint, State

log = logging.getLogger(__name__)

RESTARTABLE = (State.STOPPED, State.FAILED, State.CRASHLOOP, State.IDLE)


def _pid(service: Service) -> int | None:
    return service.child.pid if service.child else None


A = TypeVar("A", api.OnEndpoint, api.ScaleArgs)
EndpointCommand = Callable[["EndpointCommands", Endpoint, A], Reply]


def on_endpoint(method: EndpointCommand[A]) -> Callable[[EndpointCommands, A], Reply]:
    """A command on the endpoint ``SIGNATURE`` names: 404 for an unknown one, else
    ``method(self, endpoint, args)``."""

    @functools.wraps(method)
    def command(self: EndpointCommands, args: A) -> Reply:
        name = args["SIGNATURE"]
        ep = self.core.endpoints.get(name)
        if ep is None:
            return error(404, f"unknown endpoint {name[:100]!r}",
                         AVAIL_SERVERS=sorted(self.core.endpoints))
        return method(self, ep, args)

    return command


class EndpointCommands:
    """The commands that act on endpoints and the process tree."""

    def __init__(self, core: Core) -> None:
        self.core = core

    @handles(api.LIST_SERVERS)
    def list_servers(self, _args: api.NoArgs) -> Reply:
        """Every endpoint with its state, the traffic policies and the gateway's processes."""
        core = self.core
        names = sorted(core.endpoints, key=lambda n: (n != core.config["DEFAULT_SERVER"], n))
        avail = [n for n in names if not core.endpoints[n].is_support
                 and core.endpoints[n].state not in (State.STOPPED, State.STOPPING)]
        return 200, {"AVAIL_SERVERS": avail,
                     "DEFAULT_SERVER": core.config["DEFAULT_SERVER"],
                     "SERVERS": core.rollouts.annotated({n: self._described(n) for n in names}),
                     "TRAFFIC": core.traffic.policies(),
                     "ROLLOUTS": core.rollouts.listing(),
                     "GATEWAY": {"pid": os.getpid(), "port": core.port,
                                 "front_pid": _pid(core.front),
                                 "supervisor_pid": _pid(core.supervisor),
                                 "jobrunner_pid": _pid(core.jobrunner)}}

    def _described(self, name: str) -> dict[str, Any]:
        """An endpoint as /list_servers shows it, with where its workers are placed
        (``gpu_placement``: workers per GPU index, with GPU_MEMORY_MB)."""
        ep = self.core.endpoints[name]
        described = ep.describe()
        quota = self.core.placer.quota((name, ep.child.generation)) if ep.child else None
        if quota is not None:
            described["gpu_placement"] = quota_to_json(quota)
        return described

    @handles(api.METRICS)
    def metrics(self, args: api.NoArgs) -> Reply:
        """What /metrics exposes besides the front's own counters."""
        _, servers = self.list_servers(args)
        return 200, {"SERVERS": servers["SERVERS"], "HEALTH": self.core.health,
                     "TRAFFIC_STATE": self.core.rollouts.metrics(),
                     "LEDGER": self.core.ledger.status() if self.core.ledger else None}

    @handles(api.START_SERVER)
    def start_server(self, args: api.StartArgs) -> Reply:
        """Start an endpoint, with new settings when given; every input is validated
        before anything changes, and a running endpoint is left exactly as it is."""
        name = args["SIGNATURE"]
        overrides = {k: v for k, v in args.items() if k != "SIGNATURE"}
        ep = self.core.endpoints.get(name)
        if ep is not None and ep.state not in RESTARTABLE:
            return self._running(ep, overrides)
        if ep is None and VERSION_SEP in name:
            return self._unknown_version(name)
        try:
            cfg = self._checked_config(name, ep, overrides)
        except ConfigError as exc:
            return error(400, str(exc))
        except DiscoveryError as exc:
            return error(404, str(exc))
        count = cfg.settings["NR_WORKERS"] if ep is None or overrides else ep.target_workers
        refused = self._no_room(name, cfg, count)
        if refused is not None:
            return refused
        ep = self._configured(name, ep, cfg, bool(overrides))
        self.core.start_endpoint(ep)
        return 200, {"RESULT": f"{name} starting", **ep.describe()}

    def _configured(self, name: str, ep: Endpoint | None, cfg: EndpointConfig,
                    changed: bool) -> Endpoint:
        """The endpoint to start: a new one, or ``ep`` with ``cfg`` when its settings
        ``changed``; its failures forgotten."""
        if ep is None:
            ep = self.core.endpoints[name] = Endpoint(config=cfg,
                                                      target_workers=cfg.settings["NR_WORKERS"])
        elif changed:
            self.core.apply(ep, ep.reconfigure(cfg))
        ep.reset_failures()
        return ep

    def _no_room(self, name: str, cfg: EndpointConfig, count: int,
                  keep: tuple[str, int] | None = None) -> Reply | None:
        """429 ``models_unavailable`` with the GPU figures when ``count`` workers of an
        endpoint placed by memory (GPU_MEMORY_MB) fit on no GPU; None when they fit."""
        if cfg.is_support or cfg.settings["URLS"] or cfg.settings["PIPELINE"]:
            return None
        try:
            self.core.placer.place(name, cfg.settings, count, keep)
        except NoRoom as exc:
            return error(429, str(exc), **exc.fields())
        return None

    @staticmethod
    def _unknown_version(name: str) -> Reply:
        return error(404, f"unknown version {name[:100]!r}: the versions of an endpoint are "
                          f"those its VERSIONS name in the configuration file")

    @staticmethod
    def _running(ep: Endpoint, overrides: dict[str, Any]) -> Reply:
        """The answer of ``/start_server`` on an endpoint that runs: nothing changes."""
        if overrides:
            return error(409, f"{ep.name} is already {ep.state.value}: nothing changed, the "
                              f"settings {sorted(overrides)} are not applied. Use "
                              f"/update_workers to scale, or /kill_server then "
                              f"/start_server to start with other settings",
                         **ep.describe())
        return 200, {"RESULT": f"{ep.name} is already {ep.state.value}; nothing changed",
                     **ep.describe()}

    def _checked_config(self, name: str, ep: Endpoint | None,
                        overrides: dict[str, Any]) -> EndpointConfig:
        """The settings to start with, their file found and their host resolved
        (raises ConfigError or DiscoveryError)."""
        cfg = self._start_config(name, ep, overrides)
        if not (cfg.settings["URLS"] or cfg.settings["PIPELINE"]):
            endpoint_file(self.core.paths.endpoints_dir, cfg.module_name)
        if not cfg.is_support and cfg.settings["TCP_PORT"]:
            check_resolves(cfg.settings["HOST"])
        return cfg

    def _start_config(self, name: str, ep: Endpoint | None,
                      overrides: dict[str, Any]) -> EndpointConfig:
        """The settings ``/start_server`` starts ``name`` with (raises ConfigError).

        A known endpoint starts as it ran, the call's settings on top. One the gateway
        does not know yet starts from its section in the configuration file as the file
        is now (the operator added it after the start), the call's settings on top.
        """
        policy = sorted(set(overrides) & set(TRAFFIC_KEYS))
        if policy:
            raise ConfigError(f"{', '.join(policy)} are set in the configuration file only")
        if ep is not None and not overrides:
            # A version ("name@label") starts again as configured: its name is not a
            # section's.
            return ep.config
        where = f"start_server {name}"
        parse_endpoint(name, overrides, where, refs=False)  # the call's own: no env:/file:
        if ep is not None:
            raw = {**ep.config.worker_config(), **overrides}
            raw.pop("DISABLED", None)
            return parse_endpoint(name, raw, where, refs=False)
        source = self.core.config.source
        section = file_section(source, name) or {}
        later = sorted(set(section) & set(TRAFFIC_KEYS))
        if later:
            raise ConfigError(f"{source}: {name} has {', '.join(later)}, read at the "
                              f"gateway's start only: restart the gateway to serve it")
        section.pop("DISABLED", None)
        cfg = parse_endpoint(name, {**section, **overrides}, f"{source}: CONFIG_ENDPOINTS.{name}")
        if section:
            log.info("%s: started from its section in %s", name, source)
        warn_unchecked_keys(cfg)
        return cfg

    @handles(api.KILL_SERVER)
    @on_endpoint
    def kill_server(self, ep: Endpoint, _args: api.OnEndpoint) -> Reply:
        """Stop an endpoint gracefully; it stays stopped until started again."""
        self.core.stop_endpoint(ep)
        return 200, {"RESULT": f"{ep.name} stopping", **ep.describe()}

    @handles(api.UPDATE_WORKERS)
    @on_endpoint
    def update_workers(self, ep: Endpoint, args: api.ScaleArgs) -> Reply:
        """Set an endpoint server's worker count (the command's type bounds it)."""
        count = args["NR_WORKERS"]
        if ep.is_support or ep.is_virtual:
            return error(400, f"{ep.name} is a {ep.kind()} endpoint and has no workers here")
        if ep.child is not None:
            # The workers that run stay where they are; the ones added are placed.
            key = (ep.name, ep.child.generation)
            try:
                quota = self.core.placer.place(ep.name, ep.config.settings, count, keep=key)
            except NoRoom as exc:
                return error(429, str(exc), **exc.fields())
            self.core.placer.claim(key, ep.config.settings, quota)
        previous = ep.target_workers
        self.core.apply(ep, ep.scale(count))
        return 200, {"RESULT": f"{ep.name}: NR_WORKERS {previous} -> {count}", **ep.describe()}

    @handles(api.RELOAD_SERVER)
    @on_endpoint
    def reload_server(self, ep: Endpoint, _args: api.OnEndpoint) -> Reply:
        """Start a new generation of a READY server beside the serving one."""
        if ep.is_virtual:
            return error(400, f"{ep.name} is a {ep.kind()} endpoint: no code runs here to reload")
        if ep.is_support or ep.state != State.READY:
            return error(409, f"{ep.name} is {ep.state.value}; only a READY server reloads")
        if ep.pending is not None:
            return error(409, f"{ep.name} is already reloading (generation "
                              f"{ep.pending.generation}); try again when it is done")
        # The new generation loads beside the serving one: its workers need room too.
        refused = self._no_room(ep.name, ep.config, ep.target_workers)
        if refused is not None:
            return refused
        self.core.reload_endpoint(ep)
        return 200, {"RESULT": f"{ep.name}: reloading (generation {ep.generation})"}

    @handles(api.SUPERVISION)
    def supervision(self, _args: api.NoArgs) -> Reply:
        """What the supervisor watches: the serving generation of each endpoint."""
        core = self.core
        targets = {}
        for name, ep in core.endpoints.items():
            if ep.child is None or ep.is_support or core.shutting_down:
                continue
            s = ep.config.settings
            targets[name] = {
                "pid": ep.child.pid,
                "generation": ep.child.generation,
                "ping_interval": s["PING_INTERVAL"],
                "ping_timeout": min(s["PING_TIMEOUT"], s["PING_INTERVAL"]),
                "ping_misses": s["PING_MISSES"],
                "workers": {pid: probe_path(path) for pid, path in ep.worker_sockets.items()},
            }
        remotes = {} if core.shutting_down else remote_targets(core.endpoints)
        return 200, {"endpoints": targets, "remotes": remotes, "trees": core.trees()}

    @handles(api.JOB_TARGETS)
    def job_targets(self, _args: api.NoArgs) -> Reply:
        """What the job runner serves: endpoints whose jobs run through the front."""
        if self.core.shutting_down:
            return 200, {"endpoints": {}}
        return 200, {"endpoints": job_targets(self.core.endpoints, self.core.traffic.sections)}

    @handles(api.REPORT_HUNG)
    def report_hung(self, args: api.HungReport) -> Reply:
        """The supervisor found a server, or some of its workers, stuck: replace them."""
        ep = self.core.endpoints.get(args["SIGNATURE"])
        if ep is None or ep.child is None or self.core.shutting_down \
                or not ep.serves(args["generation"]):
            return error(409, "stale report: that generation is no longer serving")
        reason = args.get("reason") or "hung"
        if args.get("server"):
            self.core.apply(ep, ep.hung(reason))
            ep.child.kill_group()
            return 200, {"RESULT": f"{ep.name}: server killed, restarting"}
        return self._kill_workers(ep, [p for p in args.get("pids", []) if p in ep.ready_pids],
                                  reason)

    def _kill_workers(self, ep: Endpoint, pids: list[int], reason: str) -> Reply:
        """Kill stuck workers; their gunicorn master starts new ones."""
        for pid in pids:
            log.error("%s: worker %d %s; killing it", ep.name, pid, reason)
            try:
                os.kill(pid, signal.SIGKILL)  # its gunicorn master starts a new one
            except ProcessLookupError:
                pass  # it died meanwhile: replaced all the same
        if pids:
            self.core.history.add_event("worker_hung", endpoint=ep.name, pids=pids, reason=reason)
        return 200, {"RESULT": f"{ep.name}: killed workers {pids}"}

    @handles(api.PING)
    def ping(self, _args: api.NoArgs) -> Reply:
        """The manager's loop answers (``/health/live``)."""
        return 200, {"RESULT": "pong"}

    @handles(api.SHUTDOWN)
    def shutdown(self, _args: api.ShutdownArgs) -> Reply:
        """Drain and exit: the front first, then the servers."""
        self.core.begin_shutdown()
        return 200, {"RESULT": "shutting down: draining in-flight requests, then exiting",
                     "EXIT_CODE": EXIT_OK}
