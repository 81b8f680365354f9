"""How the manager starts each kind of child (the specs, the inherited sockets, the
environment each one gets) and signals a server's master."""

from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING, Any

from ..contracts import (
    FRONT_MODULE,
    JOBRUNNER_MODULE,
    SERVER_MODULE,
    SUPERVISOR_MODULE,
    quota_to_json,
    workers_path,
)
from ..discovery import endpoint_file
from ..privfiles import write_private
from ..procutil import free_port
from ..tenants import tenants_spec
from .children import Child, spawn, spawn_script
from .listeners import open_server_listeners
from .specs import (
    front_spec,
    front_url,
    jobrunner_spec,
    server_spec,
    supervisor_spec,
    support_launcher,
    support_payload,
)
from .state import Endpoint

if TYPE_CHECKING:
    from .core import Core


class Spawner:
    """Starts the core's children: the front, the supervisor, the job runner, an
    endpoint's server or support script."""

    def __init__(self, core: Core) -> None:
        self.core = core
        first = core.config["FIRST_SERVER_PORT"]
        self._next_port = core.port + 1 if first is None else first

    def front(self) -> Child:
        """The gateway front, on the gateway's socket, with a fresh metrics folder."""
        core = self.core
        assert core.front_listener is not None
        metrics = core.front_metrics
        # A fresh folder per front: counters of dead front processes start over with it.
        shutil.rmtree(metrics, ignore_errors=True)
        metrics.mkdir()
        spec = front_spec(core.config, core.paths, core.admin_token, core.jobs.to_dict(),
                          tenants_spec(core.config, core.cache_dir), core.internal_token,
                          str(core.cache_dir))
        return self._spawn("front", "gateway", FRONT_MODULE, spec,
                           fds=(core.front_listener.fileno(),),
                           env={"PROMETHEUS_MULTIPROC_DIR": str(metrics),
                                "BIS_SERVER_METRICS_DIR": str(core.server_metrics)})

    def supervisor(self) -> Child:
        """The supervisor."""
        spec = supervisor_spec(self.core.config, self.core.paths, str(self.core.cache_dir))
        return self._spawn("supervisor", "supervisor", SUPERVISOR_MODULE, spec)

    def jobrunner(self) -> Child:
        """The job runner, given the front's address and its own credential."""
        core = self.core
        url = front_url(core.host, core.port, bool(core.config["TLS_CERT"]))
        spec = jobrunner_spec(core.config, core.paths, core.jobs.to_dict(), url,
                              core.internal_token, tenants_spec(core.config, core.cache_dir))
        # Its jobs' per-tenant counters are merged with the servers' at scrape time.
        return self._spawn("jobrunner", "job runner", JOBRUNNER_MODULE, spec,
                           env={"PROMETHEUS_MULTIPROC_DIR": str(core.server_metrics)})

    def server(self, ep: Endpoint) -> Child:
        """A new generation of ``ep``'s server, on its listeners (opened at the first)."""
        core = self.core
        # First: a server whose workers fit on no GPU is not started (raises NoRoom).
        quota = core.placer.place(ep.name, ep.config.settings, ep.target_workers)
        if not ep.listeners:
            open_server_listeners(ep, core.run_dir, self._allocate_port)
        ep.next_generation()
        spec = server_spec(core.config, core.paths, ep, core.jobs.to_dict(),
                           tenants_spec(core.config, core.cache_dir), quota, core.cache_dir)
        child = self._spawn("server", ep.name, SERVER_MODULE, spec,
                            fds=tuple(s.fileno() for s in ep.listeners), generation=ep.generation,
                            env={"PROMETHEUS_MULTIPROC_DIR": str(core.server_metrics)})
        core.placer.claim((ep.name, ep.generation), ep.config.settings, quota)
        return child

    def support(self, ep: Endpoint) -> Child:
        """``ep``'s support script, told where the gateway is."""
        core = self.core
        script = endpoint_file(core.paths.endpoints_dir, ep.config.module_name)
        ep.next_generation()
        assert core.local_address is not None
        payload = support_payload(ep, core.local_address, core.port)
        return spawn_script(ep.name, str(script), ["--config_endpoint", json.dumps(payload)],
                            hide=self.hidden_env("support"),
                            launcher=support_launcher(core.local_address, core.port,
                                                      core.config["TLS_CERT"]))

    def signal(self, ep: Endpoint, sig: int, workers: int | None) -> None:
        """Signal ``ep``'s serving master; with ``workers``, the count it steers to (and
        its GPU quota, placed by memory) is written first (in the private run folder,
        where only this user reads)."""
        assert ep.child is not None and ep.socket_path is not None
        if workers is not None:
            quota = self.core.placer.quota((ep.name, ep.child.generation))
            steer = {"workers": workers, "gpu_quota": quota_to_json(quota)}
            write_private(workers_path(ep.socket_path, ep.child.generation), json.dumps(steer))
        os.kill(ep.child.pid, sig)

    def _spawn(self, role: str, name: str, module: str, spec: Any, **kw: Any) -> Child:
        return spawn(role, name, module, spec, hide=self.hidden_env(role), **kw)

    def hidden_env(self, role: str) -> tuple[str, ...]:
        """Variables of our environment a child of ``role`` does not get (besides the
        admin token's, which no child gets: :func:`.children.child_env`).

        The one place that decides it for every child. The variables holding remote
        endpoints' keys (``REMOTE_API_KEY: env:VAR``) reach the front alone, which
        calls the remotes; endpoint code, support scripts, the supervisor and the job
        runner never see them.
        """
        if role == "front":
            return ()
        refs = (ep.config.settings["REMOTE_API_KEY"] or ""
                for ep in self.core.endpoints.values())
        return tuple(ref[4:] for ref in refs if ref.startswith("env:"))

    def _allocate_port(self, ep: Endpoint) -> int:
        if ep.config.settings["PORT"] is not None:
            return int(ep.config.settings["PORT"])
        if self._next_port == 0:
            return free_port(ep.config.settings["HOST"])
        port = self._next_port
        self._next_port += 1
        return port
