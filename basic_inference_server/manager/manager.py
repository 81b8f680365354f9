"""The manager: the control plane. It runs no user code and never waits on HTTP.

One loop owns everything: it spawns the gateway front, the supervisor, one server per
endpoint and the support processes, reaps them the moment they exit, restarts them with
backoff, publishes the route table, and answers management commands on a Unix socket.
The supervisor watches and measures; what it reports, this loop acts on.
Signal handlers only wake the loop (``signal.set_wakeup_fd``); the loop acts.
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

from ..config import ENDPOINT_SETTINGS, MAX_WORKERS, GatewayConfig, check_host, is_loopback_host, parse_endpoint
from ..discovery import endpoint_file
from ..errors import ConfigError, DiscoveryError
from ..health.alerts import AlertTracker, Thresholds
from ..health.history import History
from ..health.memory import GATEWAY_TREE, seed_status
from ..ipc import MAX_MESSAGE, PEER_ADDR, PEER_PORT
from ..privfiles import private_dir, write_private
from ..procutil import free_port, pid_alive
from ..queues import jobs_spec
from ..redact import mask_url
from ..server.probe import probe_path
from ..tenants import tenants_spec
from .children import Child, Service, spawn, spawn_script
from .peers import peer_in_tree
from .state import STABLE_AFTER, Endpoint, State, write_routes

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 78  # EX_CONFIG: the configuration is wrong, restarting will not help
# gunicorn's exit codes for "a worker could not load the app": not a crash.
LOAD_FAILURE_CODES = {3, 4}
SUPPORT_PATH = "/support_update_status"
TOKEN_FILE = "admin_token"
# A support report (and a worker's notification) is kept and shown by /system_status
# (/notifications): bounded, so that nothing stored can break a later answer (orjson
# writes at most 254 levels).
SUPPORT_MAX_BYTES = 64 * 1024
SUPPORT_MAX_DEPTH = 32
# ERROR_TYPE of the manager's error answers, by HTTP status.
ERROR_TYPES = {400: "bad_request", 403: "forbidden", 404: "not_found", 409: "conflict",
               413: "payload_too_large", 500: "internal_error", 503: "unavailable"}

Reply = tuple[int, dict[str, Any]]


def error(status: int, message: str, **extra: Any) -> Reply:
    """An error answer of a command: ``ERROR`` and ``ERROR_TYPE``, plus ``extra``."""
    return status, {"ERROR": message, "ERROR_TYPE": ERROR_TYPES[status], **extra}


def json_depth(value: Any, limit: int) -> int:
    """Containers nested in a decoded JSON value; counting stops past ``limit``."""
    depth, level = 0, [value]
    while depth <= limit:
        level = [v for v in level if isinstance(v, (dict, list))]
        if not level:
            break
        depth += 1
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v)]
    return depth


def _sweep_stale_run_dirs() -> None:
    """Remove run folders of managers that died without cleaning up (SIGKILL)."""
    for folder in Path(tempfile.gettempdir()).glob("bis-*-*"):
        pid = folder.name.split("-")[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


class Manager:
    """Owns the process tree of one gateway."""

    def __init__(self, config: GatewayConfig, endpoints_dir: str | Path, host: str = "0.0.0.0",
                 port: int = 5002, cache_dir: str | Path = "_cache") -> None:
        self.config = config
        # Checked before anything is written there: a folder of another user (an older
        # image ran as root) is an error that says how to fix it.
        self.cache_dir = private_dir(cache_dir).resolve()
        self.admin_token = self._admin_token()
        self.endpoints_dir = str(Path(endpoints_dir).resolve())
        self.host = host
        self.port = port
        _sweep_stale_run_dirs()
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"bis-{os.getpid()}-"))
        self.routes_path = self.run_dir / "routes.json"
        self.control_path = str(self.run_dir / "control.sock")
        self.notify_path = str(self.run_dir / "notify.sock")
        # Endpoint servers' metrics (model manager), merged into the front's /metrics.
        self.server_metrics = self.run_dir / "metrics-servers"
        self.server_metrics.mkdir()
        self.endpoints: dict[str, Endpoint] = {}
        self.front_listener: socket.socket | None = None
        self.front = Service("gateway front", self._spawn_front, STABLE_AFTER)
        self.supervisor = Service("supervisor", self._spawn_supervisor, STABLE_AFTER)
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
        self._next_port = config["FIRST_SERVER_PORT"]
        if self._next_port is None:
            self._next_port = port + 1
        self._wake_r, self._wake_w = socket.socketpair()

    # -- set-up -------------------------------------------------------------------
    def _admin_token(self) -> str | None:
        """The management credential: configured, else generated into the cache folder.

        The token itself is never logged; its file is 0600.
        """
        if self.config["INSECURE_NO_ADMIN_AUTH"]:
            log.warning("INSECURE_NO_ADMIN_AUTH is true: anyone who reaches this gateway can "
                        "start, stop and shut down everything. For development only.")
            return None
        token = self.config.admin_token()
        if token is None:
            token = secrets.token_urlsafe(32)
            path = self.cache_dir / TOKEN_FILE
            write_private(path, token + "\n")
            log.info("admin token generated into %s (send it as 'Authorization: Bearer ...')",
                     path)
        return token

    def _listen_tcp(self, host: str, port: int) -> socket.socket:
        problem = check_host(host)
        if problem:
            raise ConfigError(f"HOST {problem}, got {host!r}")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except (OSError, UnicodeError, ValueError, OverflowError) as exc:
            sock.close()
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from None
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock

    def _listen_unix(self, path: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock

    def _setup(self) -> None:
        self.front_listener = self._listen_tcp(self.host, self.port)
        if self.port == 0:
            self.port = self.front_listener.getsockname()[1]
        control = socket.socket(socket.AF_UNIX)
        control.bind(self.control_path)
        control.listen(64)
        control.setblocking(False)
        self.sel.register(control, selectors.EVENT_READ, self._accept_control)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(self.notify_path)
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
        for name, cfg in self.config.endpoints.items():
            self.endpoints[name] = Endpoint(config=cfg, target_workers=cfg.settings["NR_WORKERS"])

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
        deadlines += [s.restart_at for s in (self.front, self.supervisor) if s.restart_at]
        if not deadlines:
            return 5.0
        return max(0.0, min(deadlines) - time.monotonic())

    def _children(self) -> list[Child]:
        out = [s.child for s in (self.front, self.supervisor) if s.child]
        for ep in self.endpoints.values():
            out += [c for c in (ep.child, ep.pending) if c] + ep.draining
        return out

    def _timers(self) -> None:
        now = time.monotonic()
        for child in self._children():
            child.enforce(now)
        if self.shutting_down:
            return
        for ep in self.endpoints.values():
            if ep.restart_at is not None and now >= ep.restart_at:
                ep.restart_at = None
                ep.restarts += 1
                self._start_endpoint(ep)
        for service in (self.front, self.supervisor):
            if service.due(now):
                service.launch()

    # -- signals ------------------------------------------------------------------------
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
                    if ep.state == State.READY and not ep.config.is_support:
                        self.reload_endpoint(ep)

    # -- children -----------------------------------------------------------------------
    def _spawn_front(self) -> Child:
        assert self.front_listener is not None
        spec = {
            "routes": str(self.routes_path),
            "control": self.control_path,
            "workers": self.config["GATEWAY_WORKERS"],
            "threads": self.config["GATEWAY_THREADS"],
            "max_request_size": self.config["MAX_REQUEST_SIZE"],
            "admin_token": self.admin_token,
            "server_name": self.config["SERVER_NAME"],
            "app_version": self.config["APP_VERSION"],
            "stop_timeout": self.config["STOP_TIMEOUT"],
            "access_log": self.config["ACCESS_LOG"],
            "allowed_hosts": self.config["ALLOWED_HOSTS"],
            "jobs": self.jobs.to_dict(),
            "header_timeout": self.config["HEADER_TIMEOUT"],
            "body_timeout": self.config["BODY_TIMEOUT"],
            "keepalive_timeout": self.config["KEEPALIVE_TIMEOUT"],
            "max_connections": self.config["MAX_CONNECTIONS"],
            "tls_cert": self.config["TLS_CERT"],
            "tls_key": self.config["TLS_KEY"],
            "tenants": tenants_spec(self.config, self.cache_dir),
        }
        metrics = self.run_dir / "metrics"
        # A fresh folder per front: counters of dead front processes start over with it.
        shutil.rmtree(metrics, ignore_errors=True)
        metrics.mkdir()
        return spawn("front", "gateway", "basic_inference_server.gateway", spec,
                     fds=(self.front_listener.fileno(),),
                     env={"PROMETHEUS_MULTIPROC_DIR": str(metrics),
                          "BIS_SERVER_METRICS_DIR": str(self.server_metrics)})

    def _spawn_supervisor(self) -> Child:
        spec = {"control": self.control_path,
                "sample_interval": self.config["HEALTH_SAMPLE_INTERVAL"],
                "disk_path": str(self.cache_dir)}
        return spawn("supervisor", "supervisor", "basic_inference_server.supervisor", spec)

    def _allocate_port(self, ep: Endpoint) -> int:
        if ep.config.settings["PORT"] is not None:
            return int(ep.config.settings["PORT"])
        if self._next_port == 0:
            return free_port(ep.config.settings["HOST"])
        port = self._next_port
        self._next_port += 1
        return port

    def _open_listeners(self, ep: Endpoint) -> None:
        if ep.listeners:
            return
        host = ep.config.settings["HOST"]
        ep.port = ep.port or self._allocate_port(ep)
        tcp = self._listen_tcp(host, ep.port)
        if not is_loopback_host(host):
            log.warning("%s: endpoint server listens on %s:%d, beyond loopback: callers there "
                        "bypass the gateway's checks (credential, Host, limits)",
                        ep.name, host, ep.port)
        ep.socket_path = str(self.run_dir / f"srv-{ep.name}.sock")
        ep.listeners = [tcp, self._listen_unix(ep.socket_path)]

    def _close_listeners(self, ep: Endpoint) -> None:
        for sock in ep.listeners:
            sock.close()
        ep.listeners = []
        if ep.socket_path and os.path.exists(ep.socket_path):
            os.unlink(ep.socket_path)

    def _server_spec(self, ep: Endpoint) -> dict[str, Any]:
        s = ep.config.settings
        return {
            "name": ep.name,
            "module": ep.config.module_name,
            "endpoints_dir": self.endpoints_dir,
            "host": s["HOST"],
            "port": ep.port,
            "socket": ep.socket_path,
            "nr_workers": ep.target_workers,
            "worker_config": ep.config.worker_config(),
            "notify": self.notify_path,
            "server_name": self.config["SERVER_NAME"],
            "app_version": self.config["APP_VERSION"],
            "stop_timeout": self.config["STOP_TIMEOUT"],
            "generation": ep.generation,
            "jobs": self.jobs.to_dict(),
            "max_request_size": self.config["MAX_REQUEST_SIZE"],
            "header_timeout": self.config["HEADER_TIMEOUT"],
            "body_timeout": self.config["BODY_TIMEOUT"],
        }

    def _server_env(self) -> dict[str, str]:
        return {"PROMETHEUS_MULTIPROC_DIR": str(self.server_metrics)}

    def _start_endpoint(self, ep: Endpoint) -> None:
        """Spawn the endpoint's process; it becomes READY when a worker reports in."""
        if ep.config.is_support:
            self._start_support(ep)
            return
        try:
            self._open_listeners(ep)
        except ConfigError as exc:
            ep.state, ep.last_error = State.FAILED, str(exc)
            log.error("%s: %s", ep.name, exc)
            self._publish()
            return
        ep.generation += 1
        ep.ready_pids.clear()
        ep.worker_sockets.clear()
        ep.reported_workers = None
        ep.child = spawn("server", ep.name, "basic_inference_server.server", self._server_spec(ep),
                         fds=tuple(s.fileno() for s in ep.listeners), generation=ep.generation,
                         env=self._server_env())
        ep.state = State.STARTING
        self._publish()

    def _start_support(self, ep: Endpoint) -> None:
        try:
            script = endpoint_file(self.endpoints_dir, ep.config.module_name)
        except (ConfigError, DiscoveryError) as exc:
            ep.state, ep.last_error = State.FAILED, str(exc)
            log.error("%s", exc)
            return
        gateway_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        # The script's command line is readable by every local user (and the original's
        # scripts print it): URLs go there with their passwords masked.
        settings = {k: mask_url(v) if ENDPOINT_SETTINGS[k].secret_ref and isinstance(v, str)
                    else v for k, v in ep.config.settings.items()}
        payload = {**settings, **ep.config.extra, "SERVER": gateway_host,
                   "SERVER_PORT": self.port, "SERVER_PATH": SUPPORT_PATH, "SUPPORT_NAME": ep.name}
        ep.child = spawn_script(ep.name, str(script), ["--config_endpoint", json.dumps(payload)])
        ep.generation += 1
        ep.state = State.READY
        ep.ready_since = time.monotonic()

    def reload_endpoint(self, ep: Endpoint) -> None:
        """Zero-downtime reload: start a new generation beside the old one, switch when ready."""
        if ep.pending is not None:
            return
        ep.generation += 1
        ep.pending = spawn("server", ep.name, "basic_inference_server.server",
                           self._server_spec(ep), fds=tuple(s.fileno() for s in ep.listeners),
                           generation=ep.generation, env=self._server_env())

    def stop_endpoint(self, ep: Endpoint) -> None:
        ep.restart_at = None
        for child in [c for c in (ep.child, ep.pending) if c]:
            child.terminate(self.config["STOP_TIMEOUT"])
            ep.draining.append(child)
        ep.child = ep.pending = None
        ep.ready_pids.clear()
        ep.worker_sockets.clear()
        ep.state = State.STOPPING if ep.draining else State.STOPPED
        self._publish()

    def _reap(self) -> None:
        for service in (self.front, self.supervisor):
            if service.child and service.child.poll() is not None:
                self._service_exited(service)
        for ep in self.endpoints.values():
            for child in list(ep.draining):
                if child.poll() is not None:
                    ep.draining.remove(child)
                    if ep.state == State.STOPPING and not ep.draining:
                        ep.state = State.STOPPED
                        if not self.shutting_down:
                            self._close_listeners(ep)
                        self._publish()
            if ep.pending and ep.pending.poll() is not None:
                ep.last_error = ep.last_error or f"reload failed (exit code {ep.pending.poll()})"
                log.error("%s: new generation exited with %s; keeping the old one", ep.name,
                          ep.pending.poll())
                ep.pending = None
                if ep.child is not None:
                    # Events carry their generation: listen to the one still serving again.
                    ep.generation = ep.child.generation
            if ep.child and ep.child.poll() is not None:
                self._endpoint_exited(ep, ep.child)
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
        delay = service.exited(time.monotonic())
        log.error("%s exited with %s; restarting in %.0f s", service.name, code, delay)
        self.history.add_event("service_exit", service=service.name, exit_code=code,
                               restart_in_s=delay)

    def _endpoint_exited(self, ep: Endpoint, child: Child) -> None:
        code = child.poll()
        ep.child = None
        ep.ready_pids.clear()
        ep.worker_sockets.clear()
        ep.ready_since = None
        if self.shutting_down or child.stop_deadline is not None:
            ep.state = State.STOPPED
            self._publish()
            return
        run_for = time.monotonic() - child.started_at
        ep.failures = 0 if run_for > STABLE_AFTER else ep.failures + 1
        if code in LOAD_FAILURE_CODES and not ep.config.is_support:
            ep.state = State.FAILED if ep.failures < 3 else State.CRASHLOOP
            ep.last_error = ep.last_error or f"model failed to load (exit code {code})"
        else:
            ep.state = State.RESTARTING if ep.failures < 3 else State.CRASHLOOP
            ep.last_error = child.kill_reason or f"process exited with code {code}"
        delay = ep.backoff()
        ep.restart_at = time.monotonic() + delay
        ep.last_exit = {"reason": ep.last_error, "exit_code": code, "at": time.time()}
        log.error("%s: %s; %s, restart in %.0f s", ep.name, ep.last_error, ep.state.value, delay)
        self.history.add_event("server_exit", endpoint=ep.name, exit_code=code, state=ep.state.value,
                               reason=ep.last_error, restart_in_s=delay)
        self._publish()

    # -- notifications from servers -----------------------------------------------------
    def _read_notify(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            try:
                msg = json.loads(data)
                if isinstance(msg, dict):
                    self._on_event(msg)
            except Exception:  # noqa: BLE001 - no event may stop the manager
                log.exception("bad event on the notify socket: %.200r", data)

    def _on_event(self, msg: dict[str, Any]) -> None:
        event = msg.get("event")
        if event == "notification":
            if json_depth(msg, SUPPORT_MAX_DEPTH) > SUPPORT_MAX_DEPTH:
                log.warning("notification nested deeper than %d levels dropped", SUPPORT_MAX_DEPTH)
                return
            self.notifications.append(msg)
            return
        ep = self.endpoints.get(msg.get("endpoint", ""))
        if ep is None:
            return
        gen = msg.get("generation")
        if event == "worker_ready" and ep.pending is not None and gen == ep.pending.generation:
            self._switch_generation(ep)
        # Worker events count for the generation that serves (ep.child), not for a reload
        # still pending: while one loads, the serving server keeps scaling and respawning.
        serving = gen is not None and ep.child is not None and gen == ep.child.generation
        if event == "worker_ready":
            if serving:
                ep.ready_pids.add(int(msg["pid"]))
                if msg.get("socket"):
                    ep.worker_sockets[int(msg["pid"])] = msg["socket"]
                    self._publish()
                if ep.state != State.READY:
                    ep.state = State.READY
                    ep.ready_since = time.monotonic()
                    ep.last_error = None
                    log.info("%s ready on port %s", ep.name, ep.port)
                    self._publish()
        elif event == "worker_exit" and serving:
            ep.ready_pids.discard(int(msg["pid"]))
            if ep.worker_sockets.pop(int(msg["pid"]), None):
                self._publish()
        elif event == "load_failed":
            ep.last_error = msg.get("error")
        elif event == "nworkers" and serving:
            ep.reported_workers = int(msg["value"])
            self._steer_workers(ep)

    def _switch_generation(self, ep: Endpoint) -> None:
        old, ep.child, ep.pending = ep.child, ep.pending, None
        ep.ready_pids.clear()
        ep.last_error = None  # the new generation loaded: an earlier failure is history
        ep.worker_sockets.clear()
        if old is not None:
            old.terminate(self.config["STOP_TIMEOUT"])
            ep.draining.append(old)
        log.info("%s reloaded: generation %d serving", ep.name, ep.generation)
        self.history.add_event("reload", endpoint=ep.name, generation=ep.generation)

    def _steer_workers(self, ep: Endpoint) -> None:
        """Move the server's worker count one step toward the target.

        One signal at a time: pending signals of one kind merge, so a burst of TTINs
        could count as one. gunicorn reports each change (nworkers_changed), which
        triggers the next step.
        """
        if ep.child is None or ep.reported_workers is None:
            return
        if ep.reported_workers < ep.target_workers:
            os.kill(ep.child.pid, signal.SIGTTIN)
        elif ep.reported_workers > ep.target_workers:
            os.kill(ep.child.pid, signal.SIGTTOU)

    # -- control socket --------------------------------------------------------------------
    def _accept_control(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.settimeout(2.0)
        try:
            buf = b""
            while not buf.endswith(b"\n") and len(buf) <= MAX_MESSAGE:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
            reply = self.handle_request(buf)
            conn.sendall(json.dumps(reply, default=str).encode() + b"\n")
        except OSError as exc:
            log.warning("control connection failed: %s", exc)
        except Exception:  # noqa: BLE001 - no command may stop the manager
            log.exception("control request failed")
        finally:
            conn.close()

    def handle_request(self, raw: bytes) -> dict[str, Any]:
        """One raw control request line -> its reply; bad framing is a 400."""
        request: Any = None
        if len(raw) > MAX_MESSAGE:
            status, body = error(413, f"control request over {MAX_MESSAGE} bytes")
        else:
            try:
                request = json.loads(raw)
            except (ValueError, RecursionError):
                pass
            if isinstance(request, dict):
                return self.handle_command(request.get("cmd", ""), request.get("args") or {})
            status, body = error(400, "a control request is one JSON object")
        return {"status": status, "body": body}

    def handle_command(self, cmd: Any, args: Any) -> dict[str, Any]:
        """Run one management command; the reply carries an HTTP status and a body.

        Every command runs behind this boundary: an exception is logged with its
        traceback and answered 500; the manager keeps running.
        """
        handler: Callable[[dict[str, Any]], Reply] | None = (
            getattr(self, f"cmd_{cmd}", None) if isinstance(cmd, str) and cmd.isidentifier()
            else None)
        if handler is None:
            status, body = error(404, f"unknown command {str(cmd)[:100]!r}")
        elif not isinstance(args, dict):
            status, body = error(400, "the arguments must be a JSON object")
        else:
            try:
                status, body = handler(args)
            except Exception as exc:  # noqa: BLE001 - the boundary: log, answer 500, go on
                log.exception("command %s failed", cmd)
                status, body = error(500, f"command {cmd} failed: {type(exc).__name__}: {exc}")
        return {"status": status, "body": body}

    def _endpoint_arg(self, args: dict[str, Any]) -> tuple[Endpoint | None, Reply | None]:
        name = args.get("SIGNATURE")
        if not isinstance(name, str) or not name:
            return None, error(400, "SIGNATURE (the endpoint name) is required")
        ep = self.endpoints.get(name)
        if ep is None:
            return None, error(404, f"unknown endpoint {name[:100]!r}",
                               AVAIL_SERVERS=sorted(self.endpoints))
        return ep, None

    def cmd_list_servers(self, _args: dict[str, Any]) -> Reply:
        names = sorted(self.endpoints, key=lambda n: (n != self.config["DEFAULT_SERVER"], n))
        avail = [n for n in names if not self.endpoints[n].config.is_support
                 and self.endpoints[n].state not in (State.STOPPED, State.STOPPING)]
        return 200, {"AVAIL_SERVERS": avail,
                     "DEFAULT_SERVER": self.config["DEFAULT_SERVER"],
                     "SERVERS": {n: self.endpoints[n].describe() for n in names},
                     "GATEWAY": {"pid": os.getpid(), "port": self.port,
                                 "front_pid": self.front.child.pid if self.front.child else None,
                                 "supervisor_pid": (self.supervisor.child.pid
                                                    if self.supervisor.child else None)}}

    def cmd_start_server(self, args: dict[str, Any]) -> Reply:
        """Start an endpoint, with new settings when given; every input is validated
        before anything changes, and a running endpoint is left exactly as it is."""
        name = args.get("SIGNATURE")
        if not isinstance(name, str) or not name:
            return error(400, "SIGNATURE (the endpoint name) is required")
        overrides = {k: v for k, v in args.items() if k != "SIGNATURE"}
        ep = self.endpoints.get(name)
        if ep is not None and ep.state not in (State.STOPPED, State.FAILED, State.CRASHLOOP):
            if overrides:
                return error(409, f"{name} is already {ep.state.value}: nothing changed, the "
                                  f"settings {sorted(overrides)} are not applied. Use "
                                  f"/update_workers to scale, or /kill_server then "
                                  f"/start_server to start with other settings",
                             **ep.describe())
            return 200, {"RESULT": f"{name} is already {ep.state.value}; nothing changed",
                         **ep.describe()}
        try:
            if ep is None:
                cfg = parse_endpoint(name, overrides, f"start_server {name}", refs=False)
            else:
                merged = {**ep.config.worker_config(), **overrides}
                merged.pop("DISABLED", None)
                cfg = parse_endpoint(name, merged, f"start_server {name}", refs=False)
            endpoint_file(self.endpoints_dir, cfg.module_name)
            if not cfg.is_support:
                self._check_listen(cfg.settings["HOST"])
        except ConfigError as exc:
            return error(400, str(exc))
        except DiscoveryError as exc:
            return error(404, str(exc))
        if ep is None:
            ep = self.endpoints[name] = Endpoint(config=cfg,
                                                 target_workers=cfg.settings["NR_WORKERS"])
        elif overrides:
            if ep.config.settings["HOST"] != cfg.settings["HOST"] \
                    or ep.config.settings["PORT"] != cfg.settings["PORT"]:
                self._close_listeners(ep)
                ep.port = None
            ep.config, ep.target_workers = cfg, cfg.settings["NR_WORKERS"]
        ep.failures, ep.restart_at, ep.last_error = 0, None, None
        self._start_endpoint(ep)
        return 200, {"RESULT": f"{name} starting", **ep.describe()}

    def _check_listen(self, host: str) -> None:
        """A listen address (already a valid name) that resolves here, checked before
        anything changes."""
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ConfigError(f"HOST {host!r} cannot be resolved: {exc}") from None

    def cmd_kill_server(self, args: dict[str, Any]) -> Reply:
        ep, err = self._endpoint_arg(args)
        if err:
            return err
        assert ep is not None
        self.stop_endpoint(ep)
        return 200, {"RESULT": f"{ep.name} stopping", **ep.describe()}

    def cmd_update_workers(self, args: dict[str, Any]) -> Reply:
        ep, err = self._endpoint_arg(args)
        if err:
            return err
        assert ep is not None
        count = args.get("NR_WORKERS")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_WORKERS:
            return error(400, f"NR_WORKERS must be an integer from 1 to {MAX_WORKERS}")
        if ep.config.is_support:
            return error(400, f"{ep.name} is a support process and has no workers")
        previous, ep.target_workers = ep.target_workers, count
        self._steer_workers(ep)
        return 200, {"RESULT": f"{ep.name}: NR_WORKERS {previous} -> {count}", **ep.describe()}

    def cmd_reload_server(self, args: dict[str, Any]) -> Reply:
        ep, err = self._endpoint_arg(args)
        if err:
            return err
        assert ep is not None
        if ep.config.is_support or ep.state != State.READY:
            return error(409, f"{ep.name} is {ep.state.value}; only a READY server reloads")
        if ep.pending is not None:
            return error(409, f"{ep.name} is already reloading (generation "
                              f"{ep.pending.generation}); try again when it is done")
        self.reload_endpoint(ep)
        return 200, {"RESULT": f"{ep.name}: reloading (generation {ep.generation})"}

    def _trees(self) -> dict[str, list[int]]:
        """The process trees to account: the gateway's own, and one per endpoint."""
        gateway = [os.getpid()] + [s.child.pid for s in (self.front, self.supervisor) if s.child]
        servers = {n: [c.pid for c in (e.child, e.pending, *e.draining) if c]
                   for n, e in self.endpoints.items()}
        return {GATEWAY_TREE: gateway, **servers}

    def cmd_supervision(self, _args: dict[str, Any]) -> Reply:
        """What the supervisor watches: the serving generation of each endpoint."""
        targets = {}
        for name, ep in self.endpoints.items():
            if ep.child is None or ep.config.is_support or self.shutting_down:
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
        return 200, {"endpoints": targets, "trees": self._trees()}

    def cmd_report_hung(self, args: dict[str, Any]) -> Reply:
        """The supervisor found a server, or some of its workers, stuck: replace them."""
        ep = self.endpoints.get(str(args.get("SIGNATURE")))
        if ep is None or ep.child is None or ep.child.generation != args.get("generation") \
                or self.shutting_down:
            return error(409, "stale report: that generation is no longer serving")
        reason = str(args.get("reason") or "hung")
        if args.get("server"):
            log.error("%s: %s; killing the server", ep.name, reason)
            ep.child.kill_reason = reason
            ep.child.kill_group()
            self.history.add_event("server_hung", endpoint=ep.name, reason=reason)
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

    def cmd_health_sample(self, sample: dict[str, Any]) -> Reply:
        """A sample from the supervisor: keep it, update alerts, add it to the history."""
        status = seed_status(sample)
        system, gpu = sample["system"], sample["gpu"]
        alerts = self._evaluate_alerts(system, gpu)
        self.history.add_sample({"system": system, "mem_servers": status["mem_servers"],
                                 "mem_gateway": status["mem_gateway"], "gpu": gpu})
        self.health = {"status": {**status, "system": system, "gpu": gpu,
                                  "sampled_at": sample.get("taken_at")},
                       "alerts": alerts, "trees": sample["trees"]}
        return 200, {"RESULT": "sample received"}

    def cmd_system_status(self, _args: dict[str, Any]) -> Reply:
        if self.health is None:
            return error(503, "the first health sample is not taken yet; retry shortly")
        support = {n: e.support_status for n, e in self.endpoints.items() if e.support_status}
        return 200, {"SYSTEM_STATUS": self.health["status"],
                     "SYSTEM_ALERTS": self.health["alerts"], "SUPPORT_STATUS": support,
                     "HISTORY": {"events": self.history.events(limit=100)}}

    def cmd_metrics(self, args: dict[str, Any]) -> Reply:
        """What /metrics exposes besides the front's own counters."""
        _, servers = self.cmd_list_servers(args)
        return 200, {"SERVERS": servers["SERVERS"], "HEALTH": self.health}

    def cmd_history(self, args: dict[str, Any]) -> Reply:
        """The rolling window of health samples and events (the dashboard's charts)."""
        try:
            limit = max(1, min(1440, int(args.get("samples", 120))))
        except (TypeError, ValueError):
            return error(400, "samples must be an integer")
        return 200, {"samples": self.history.samples(limit=limit),
                     "events": self.history.events(limit=100)}

    def _evaluate_alerts(self, system: dict[str, Any], gpu: dict[str, Any]) -> list[dict[str, Any]]:
        """Update the alert state; each raise and clear is logged and recorded once."""
        update = self.alerts.update({
            "system": system, "gpu": gpu,
            "restarts": {n: e.restarts for n, e in self.endpoints.items()},
            "crashloops": [n for n, e in self.endpoints.items() if e.state == State.CRASHLOOP],
        })
        for alert in update.raised:
            log.warning("alert raised: %s", alert["message"])
            self.history.add_event("alert_raised", **alert)
        for alert in update.cleared:
            log.info("alert cleared: %s", alert["name"])
            self.history.add_event("alert_cleared", **alert)
        return update.active

    def cmd_ping(self, _args: dict[str, Any]) -> Reply:
        return 200, {"RESULT": "pong"}

    def cmd_notifications(self, _args: dict[str, Any]) -> Reply:
        return 200, {"NOTIFICATIONS": list(self.notifications)}

    def cmd_support_update_status(self, args: dict[str, Any]) -> Reply:
        """A support process reports its status; only that process (or its children) may.

        The caller is identified by its connection, which the front passes under
        reserved keys: the socket must be open in the support process's tree.
        """
        report = {k: v for k, v in args.items() if k not in (PEER_ADDR, PEER_PORT)}
        name = report.get("SIGNATURE")
        ep = self.endpoints.get(name) if isinstance(name, str) else None
        if ep is None:
            ep = next((e for e in self.endpoints.values() if e.config.is_support), None)
        if ep is None or not ep.config.is_support:
            return error(404, f"no support process named {str(name)[:100]!r}")
        addr, port = args.get(PEER_ADDR), args.get(PEER_PORT)
        owner = ep.child.pid if ep.child is not None and ep.child.poll() is None else None
        try:
            verified = owner is not None and isinstance(addr, str) and \
                peer_in_tree(addr, int(port), owner)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            verified = False
        if not verified:
            return error(403, f"only the support process {ep.name} itself may report its status")
        if json_depth(report, SUPPORT_MAX_DEPTH) > SUPPORT_MAX_DEPTH:
            return error(400, f"status report nested deeper than {SUPPORT_MAX_DEPTH} levels")
        size = len(json.dumps(report, default=str))
        if size > SUPPORT_MAX_BYTES:
            return error(413, f"status report of {size} bytes; at most {SUPPORT_MAX_BYTES}")
        ep.support_status = {**report, "received_at": time.time()}
        return 200, {"RESULT": "status received"}

    def cmd_shutdown(self, _args: dict[str, Any]) -> Reply:
        self.begin_shutdown()
        return 200, {"RESULT": "shutting down: draining in-flight requests, then exiting",
                     "EXIT_CODE": EXIT_OK}

    # -- shutdown ------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Stop taking work: the front drains first, then servers, then we exit."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self.history.add_event("shutdown", pid=os.getpid())
        for ep in self.endpoints.values():
            ep.restart_at = None
        if self.supervisor.child is not None:
            # Nothing to watch any more: draining servers are busy, not hung.
            self.supervisor.child.terminate(5)
        if self.front.child is not None:
            self.front.child.terminate(self.config["STOP_TIMEOUT"] + 5)
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

    def _publish(self) -> None:
        write_routes(self.routes_path, self.endpoints, self.config.settings)

    def _cleanup(self) -> None:
        for child in self._children():
            child.kill_group()
        signal.set_wakeup_fd(-1)
        for ep in self.endpoints.values():
            self._close_listeners(ep)
        if self.front_listener is not None:
            self.front_listener.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
