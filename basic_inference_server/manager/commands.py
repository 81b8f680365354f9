"""Management commands on endpoints: list, start, stop, scale, reload, hang reports.

Each ``cmd_<name>`` answers the control command ``<name>`` (see :mod:`.control`):
every input is checked before anything acts on it.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from ..config import MAX_WORKERS, EndpointConfig, file_section, parse_endpoint
from ..contracts import probe_path
from ..discovery import endpoint_file
from ..errors import ConfigError, DiscoveryError
from ..traffic.settings import TRAFFIC_KEYS
from .control import Reply, error
from .core import EXIT_OK, Core, warn_unchecked_keys
from .listeners import check_resolves
from .remote_commands import remote_targets
from .specs import job_targets
from .state import Endpoint, State

log = logging.getLogger(__name__)

RESTARTABLE = (State.STOPPED, State.FAILED, State.CRASHLOOP)


EndpointCommand = Callable[["EndpointCommands", Endpoint, dict[str, Any]], Reply]


def on_endpoint(method: EndpointCommand) -> Callable[[EndpointCommands, dict[str, Any]], Reply]:
    """A command on the endpoint ``SIGNATURE`` names: 400 without a name, 404 for an
    unknown one, else ``method(self, endpoint, args)``."""

    @functools.wraps(method)
    def command(self: EndpointCommands, args: dict[str, Any]) -> Reply:
        name = args.get("SIGNATURE")
        if not isinstance(name, str) or not name:
            return error(400, "SIGNATURE (the endpoint name) is required")
        ep = self.endpoints.get(name)
        if ep is None:
            return error(404, f"unknown endpoint {name[:100]!r}",
                         AVAIL_SERVERS=sorted(self.endpoints))
        return method(self, ep, args)

    return command


class EndpointCommands(Core):
    """The commands that act on endpoints and the process tree."""

    def cmd_list_servers(self, _args: dict[str, Any]) -> Reply:
        names = sorted(self.endpoints, key=lambda n: (n != self.config["DEFAULT_SERVER"], n))
        avail = [n for n in names if not self.endpoints[n].is_support
                 and self.endpoints[n].state not in (State.STOPPED, State.STOPPING)]
        return 200, {"AVAIL_SERVERS": avail,
                     "DEFAULT_SERVER": self.config["DEFAULT_SERVER"],
                     "SERVERS": self.rollouts.annotated({n: self.endpoints[n].describe()
                                                         for n in names}),
                     "TRAFFIC": self.traffic.policies(),
                     "ROLLOUTS": self.rollouts.listing(),
                     "GATEWAY": {"pid": os.getpid(), "port": self.port,
                                 "front_pid": self.front.child.pid if self.front.child else None,
                                 "supervisor_pid": (self.supervisor.child.pid
                                                    if self.supervisor.child else None),
                                 "jobrunner_pid": (self.jobrunner.child.pid
                                                   if self.jobrunner.child else None)}}

    def cmd_metrics(self, args: dict[str, Any]) -> Reply:
        """What /metrics exposes besides the front's own counters."""
        _, servers = self.cmd_list_servers(args)
        return 200, {"SERVERS": servers["SERVERS"], "HEALTH": self.health,
                     "TRAFFIC_STATE": self.rollouts.metrics()}

    def cmd_start_server(self, args: dict[str, Any]) -> Reply:
        """Start an endpoint, with new settings when given; every input is validated
        before anything changes, and a running endpoint is left exactly as it is."""
        name = args.get("SIGNATURE")
        if not isinstance(name, str) or not name:
            return error(400, "SIGNATURE (the endpoint name) is required")
        overrides = {k: v for k, v in args.items() if k != "SIGNATURE"}
        ep = self.endpoints.get(name)
        if ep is not None and ep.state not in RESTARTABLE:
            if overrides:
                return error(409, f"{name} is already {ep.state.value}: nothing changed, the "
                                  f"settings {sorted(overrides)} are not applied. Use "
                                  f"/update_workers to scale, or /kill_server then "
                                  f"/start_server to start with other settings",
                             **ep.describe())
            return 200, {"RESULT": f"{name} is already {ep.state.value}; nothing changed",
                         **ep.describe()}
        try:
            cfg = self._start_config(name, ep, overrides)
            if not (cfg.settings["URLS"] or cfg.settings["PIPELINE"]):
                endpoint_file(self.paths.endpoints_dir, cfg.module_name)
            if not cfg.is_support and cfg.settings["TCP_PORT"]:
                check_resolves(cfg.settings["HOST"])
        except ConfigError as exc:
            return error(400, str(exc))
        except DiscoveryError as exc:
            return error(404, str(exc))
        if ep is None:
            ep = self.endpoints[name] = Endpoint(config=cfg,
                                                 target_workers=cfg.settings["NR_WORKERS"])
        elif overrides:
            self.apply(ep, ep.reconfigure(cfg))
        ep.reset_failures()
        self._start_endpoint(ep)
        return 200, {"RESULT": f"{name} starting", **ep.describe()}

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
        section = file_section(self.config.source, name) or {}
        later = sorted(set(section) & set(TRAFFIC_KEYS))
        if later:
            raise ConfigError(f"{self.config.source}: {name} has {', '.join(later)}, read at the "
                              f"gateway's start only: restart the gateway to serve it")
        section.pop("DISABLED", None)
        cfg = parse_endpoint(name, {**section, **overrides},
                             f"{self.config.source}: CONFIG_ENDPOINTS.{name}")
        if section:
            log.info("%s: started from its section in %s", name, self.config.source)
        warn_unchecked_keys(cfg)
        return cfg

    @on_endpoint
    def cmd_kill_server(self, ep: Endpoint, args: dict[str, Any]) -> Reply:
        self.stop_endpoint(ep)
        return 200, {"RESULT": f"{ep.name} stopping", **ep.describe()}

    @on_endpoint
    def cmd_update_workers(self, ep: Endpoint, args: dict[str, Any]) -> Reply:
        count = args.get("NR_WORKERS")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_WORKERS:
            return error(400, f"NR_WORKERS must be an integer from 1 to {MAX_WORKERS}")
        if ep.is_support or ep.is_virtual:
            return error(400, f"{ep.name} is a {ep.kind()} endpoint and has no workers here")
        previous = ep.target_workers
        self.apply(ep, ep.scale(count))
        return 200, {"RESULT": f"{ep.name}: NR_WORKERS {previous} -> {count}", **ep.describe()}

    @on_endpoint
    def cmd_reload_server(self, ep: Endpoint, args: dict[str, Any]) -> Reply:
        if ep.is_virtual:
            return error(400, f"{ep.name} is a {ep.kind()} endpoint: no code runs here to reload")
        if ep.is_support or ep.state != State.READY:
            return error(409, f"{ep.name} is {ep.state.value}; only a READY server reloads")
        if ep.pending is not None:
            return error(409, f"{ep.name} is already reloading (generation "
                              f"{ep.pending.generation}); try again when it is done")
        self.reload_endpoint(ep)
        return 200, {"RESULT": f"{ep.name}: reloading (generation {ep.generation})"}

    def cmd_supervision(self, _args: dict[str, Any]) -> Reply:
        """What the supervisor watches: the serving generation of each endpoint."""
        targets = {}
        for name, ep in self.endpoints.items():
            if ep.child is None or ep.is_support or self.shutting_down:
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
        remotes = {} if self.shutting_down else remote_targets(self.endpoints)
        return 200, {"endpoints": targets, "remotes": remotes, "trees": self._trees()}

    def cmd_job_targets(self, _args: dict[str, Any]) -> Reply:
        """What the job runner serves: endpoints whose jobs run through the front."""
        if self.shutting_down:
            return 200, {"endpoints": {}}
        return 200, {"endpoints": job_targets(self.endpoints, self.traffic.sections)}

    def cmd_report_hung(self, args: dict[str, Any]) -> Reply:
        """The supervisor found a server, or some of its workers, stuck: replace them."""
        ep = self.endpoints.get(str(args.get("SIGNATURE")))
        if ep is None or ep.child is None or self.shutting_down \
                or not ep.serves(args.get("generation")):
            return error(409, "stale report: that generation is no longer serving")
        reason = str(args.get("reason") or "hung")
        if args.get("server"):
            self.apply(ep, ep.hung(reason))
            ep.child.kill_group()
            return 200, {"RESULT": f"{ep.name}: server killed, restarting"}
        pids = [int(p) for p in args.get("pids") or [] if int(p) in ep.ready_pids]
        for pid in pids:
            log.error("%s: worker %d %s; killing it", ep.name, pid, reason)
            try:
                os.kill(pid, signal.SIGKILL)  # its gunicorn master starts a new one
            except ProcessLookupError:
                pass  # it died meanwhile: replaced all the same
        if pids:
            self.history.add_event("worker_hung", endpoint=ep.name, pids=pids, reason=reason)
        return 200, {"RESULT": f"{ep.name}: killed workers {pids}"}

    def cmd_ping(self, _args: dict[str, Any]) -> Reply:
        return 200, {"RESULT": "pong"}

    def cmd_shutdown(self, _args: dict[str, Any]) -> Reply:
        self.begin_shutdown()
        return 200, {"RESULT": "shutting down: draining in-flight requests, then exiting",
                     "EXIT_CODE": EXIT_OK}
