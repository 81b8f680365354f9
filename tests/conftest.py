"""Shared helpers: start the real gateway (``run_gateway.py``) and watch its process tree.

Every gateway runs ``sys.executable run_gateway.py`` in a new session, on a free port,
with its servers on free ports (``FIRST_SERVER_PORT: 0``), a config written to a temp
folder and a private copy of ``tests/fixtures/endpoints`` (tests may edit it). Waiting
is always a condition polled against a deadline (:func:`wait_until`), never a fixed
sleep. Tearing a gateway down SIGKILLs the manager's process group and asserts that
no process of the tree is left: the tree must follow its manager (die-with-parent).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
FIXTURE_ENDPOINTS = FIXTURES / "endpoints"
RUN_GATEWAY = ROOT / "run_gateway.py"
HTTP_TIMEOUT = 10.0
SHUTDOWN_CMD = {"SIGNATURE": "SAFE_KILL_SERVER_CMD"}
# States in which an endpoint has stopped changing on its own for a while.
SETTLED = ("READY", "FAILED", "CRASHLOOP", "STOPPED")
# Every gateway the fixtures start gets this admin token (env BIS_ADMIN_TOKEN), and the
# Gateway helpers send it: pass token=None to send no Authorization header, or another
# string to send that one.
ADMIN_TOKEN = "test-admin-token-0123456789"
_GATEWAY_TOKEN = object()


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               message: str = "", ignore: tuple[type[BaseException], ...] = (
                   requests.RequestException,)) -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` passes.

    Exceptions listed in ``ignore`` (by default HTTP errors) count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            value, last_exc = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"; last error: {last_exc!r}" if last_exc else ""
            raise AssertionError(
                f"not true within {timeout:g} s: {message or getattr(predicate, '__name__', predicate)}"
                f"{extra}")
        time.sleep(interval)


async def until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.005,
                message: str = "") -> Any:
    """:func:`wait_until` in an event loop (its other tasks run between polls); what
    ``predicate`` returns is awaited when it is awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"not true within {timeout:g} s: {message or predicate}"
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_gone(proc: psutil.Process) -> bool:
    """True when the process has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def write_endpoint(folder: Path, name: str, source: str) -> Path:
    path = Path(folder) / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    return path


class Gateway:
    """One running gateway: its manager process, URLs, HTTP helpers and process tree."""

    def __init__(self, proc: subprocess.Popen, port: int, workdir: Path, config_path: Path,
                 endpoints_dir: Path, log_path: Path, token: str | None = ADMIN_TOKEN) -> None:
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
        self.workdir = workdir
        self.config_path = config_path
        self.endpoints_dir = endpoints_dir
        self.log_path = log_path
        self.manager = psutil.Process(proc.pid)
        self.seen: dict[int, psutil.Process] = {proc.pid: self.manager}
        self.stopped = False

    # -- process tree ------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> list[psutil.Process]:
        """The manager and all its live descendants; every one is remembered in ``seen``."""
        procs: list[psutil.Process] = []
        try:
            procs = [self.manager, *self.manager.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return [p for p in procs if not is_gone(p)]

    def tree_pids(self) -> list[int]:
        return sorted(p.pid for p in self.tree())

    def remember(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                self.seen.setdefault(pid, psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass

    def leftovers(self) -> list[psutil.Process]:
        return [p for p in self.seen.values() if not is_gone(p)]

    def assert_all_gone(self, timeout: float = 10.0) -> None:
        try:
            wait_until(lambda: not self.leftovers(), timeout=timeout,
                       message="every process of the gateway tree has exited")
        except AssertionError:
            left = [(p.pid, _cmdline(p)) for p in self.leftovers()]
            raise AssertionError(f"processes left after {timeout:g} s: {left}\n"
                                 f"{self.log_tail()}") from None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "--- gateway log tail ---\n" + "\n".join(self.log_text().splitlines()[-lines:])

    # -- HTTP ------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return self.base + path

    def _auth(self, kw: dict[str, Any], token: Any) -> dict[str, Any]:
        """``kw`` with the timeout and the Authorization header (the gateway's token by default)."""
        kw.setdefault("timeout", HTTP_TIMEOUT)
        token = self.token if token is _GATEWAY_TOKEN else token
        headers = dict(kw.pop("headers", None) or {})
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")
        kw["headers"] = headers
        return kw

    def get(self, path: str, token: Any = _GATEWAY_TOKEN, **kw: Any) -> requests.Response:
        return requests.get(self.url(path), **self._auth(kw, token))

    def post(self, path: str, json: Any = None, token: Any = _GATEWAY_TOKEN,  # noqa: A002
             **kw: Any) -> requests.Response:
        return requests.post(self.url(path), json=json, **self._auth(kw, token))

    def run(self, signature: str, **fields: Any) -> requests.Response:
        timeout = fields.pop("_timeout", HTTP_TIMEOUT)
        return self.post("/run", {"SIGNATURE": signature, **fields}, timeout=timeout)

    def servers(self) -> dict[str, Any]:
        resp = self.get("/list_servers")
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        self.remember([s["pid"] for s in body["SERVERS"].values() if s["pid"]]
                      + [pid for s in body["SERVERS"].values() for pid in s["worker_pids"]])
        return body

    def server(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.servers()["SERVERS"][name]
        return info

    def state(self, name: str) -> str:
        return str(self.server(name)["state"])

    def wait_state(self, name: str, states: str | tuple[str, ...], timeout: float = 15.0) -> dict[str, Any]:
        wanted = (states,) if isinstance(states, str) else states

        def reached() -> dict[str, Any] | None:
            self._check_alive()
            info = self.server(name)
            return info if info["state"] in wanted else None

        try:
            return wait_until(reached, timeout=timeout, message=f"{name} in {wanted}")  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /health/ready answers 200 (every started endpoint READY)."""

        def ready() -> bool:
            self._check_alive()
            return self.get("/health/ready", timeout=2).status_code == 200

        try:
            wait_until(ready, timeout=timeout, message="/health/ready answers 200")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None
        self.tree()

    def wait_settled(self, timeout: float = 30.0) -> None:
        """Until the front answers and no endpoint is starting any more."""

        def settled() -> bool:
            self._check_alive()
            states = [s["state"] for s in self.servers()["SERVERS"].values()]
            return all(s in SETTLED for s in states)

        try:
            wait_until(settled, timeout=timeout, message="every endpoint settled")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None
        self.tree()

    def _check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"the gateway manager exited with {code}\n{self.log_tail()}")

    # -- stop --------------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL the manager's process group (the manager is its session leader)."""
        self.tree()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """Kill the manager's group, reap it, assert that the whole tree followed."""
        if self.stopped:
            return
        self.stopped = True
        try:
            self.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.assert_all_gone(timeout=10)
        finally:
            for p in self.leftovers():  # only processes of this tree, by their pid
                try:
                    p.kill()
                except psutil.Error:
                    pass
            self._remove_run_dir()

    def _remove_run_dir(self) -> None:
        # A SIGKILLed manager cannot remove its run dir (Unix sockets, route table).
        match = re.search(r"run dir (\S+)", self.log_text())
        if match and Path(match.group(1)).name.startswith("bis-"):
            shutil.rmtree(match.group(1), ignore_errors=True)


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:160]
    except psutil.Error:
        return "?"


def gateway_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIS_")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["BIS_ADMIN_TOKEN"] = ADMIN_TOKEN
    env.update(extra)
    return env


def spawn_gateway(workdir: Path, config: dict[str, Any] | str, *,
                  endpoints: Path | None = None, port: int | None = None,
                  env: dict[str, str] | None = None, host: str = "127.0.0.1") -> Gateway:
    """Write the config, copy the endpoints, start ``run_gateway.py``; does not wait."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config_gateway.json"
    if isinstance(config, str):
        config_path.write_text(config, encoding="utf-8")
    else:
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    if endpoints is None:
        endpoints = workdir / "endpoints"
        if not endpoints.exists():
            shutil.copytree(FIXTURE_ENDPOINTS, endpoints,
                            ignore=shutil.ignore_patterns("__pycache__"))
    port = port or free_port()
    log_path = workdir / "gateway.log"
    env = env or gateway_env()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(RUN_GATEWAY), "--host", host, "--port", str(port),
             "--config", str(config_path), "--endpoints", str(endpoints)],
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env)
    gw = Gateway(proc, port, workdir, config_path, endpoints, log_path,
                 token=env.get("BIS_ADMIN_TOKEN"))
    if host not in ("0.0.0.0", "::"):
        gw.base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return gw


def with_test_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """Free ports for the servers, and a short drain limit so stops stay quick."""
    out = {"FIRST_SERVER_PORT": 0, "STOP_TIMEOUT": 10, **config}
    return out


def stop_all(gateways: list[Gateway]) -> None:
    """Stop every gateway, then fail with what each one's stop found wrong (orphans...)."""
    errors = []
    for gw in gateways:
        try:
            gw.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors)


class GatewayPool:
    """Starts gateways under one folder and tears them all down (asserting the tree dies)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[Gateway] = []

    def __call__(self, config: dict[str, Any], *, wait: str | None = "ready",
                 timeout: float = 30.0, **kw: Any) -> Gateway:
        workdir = self.base / f"gw{len(self.started)}"
        gw = spawn_gateway(workdir, with_test_defaults(config), **kw)
        self.started.append(gw)
        if wait == "ready":
            gw.wait_ready(timeout)
        elif wait == "settled":
            gw.wait_settled(timeout)
        return gw

    def close(self) -> None:
        stop_all(self.started)


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[GatewayPool]:
    """Function-scoped: ``gateways(config)`` starts one; all are killed after the test."""
    pool = GatewayPool(tmp_path)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def module_gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayPool]:
    """Module-scoped pool, for gateways that several tests share."""
    pool = GatewayPool(tmp_path_factory.mktemp("gateways"))
    yield pool
    pool.close()


def assert_error(resp: requests.Response, status: int) -> dict[str, Any]:
    """An error answer: the status, a JSON object body and an ``ERROR`` message."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text}"
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("ERROR"), str) and body["ERROR"], body
    return body


def assert_ok(resp: requests.Response) -> dict[str, Any]:
    """A success: 200 and a JSON object body without an ``ERROR`` field."""
    assert resp.status_code == 200, f"expected 200, got {resp.status_code}: {resp.text}"
    body = resp.json()
    assert isinstance(body, dict) and "ERROR" not in body, body
    return body


class Traffic:
    """Calls an endpoint in a loop from a background thread; records every answer."""

    def __init__(self, gw: Gateway, name: str, **fields: Any) -> None:
        self.gw, self.name, self.fields = gw, name, fields
        self.ok, self.failures, self.pids = 0, [], set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop.is_set():
            try:
                resp = self.gw.run(self.name, **self.fields)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded
                self.failures.append(repr(exc))
                self.stop.wait(0.01)  # not a busy loop when the gateway is down
                continue
            if resp.status_code == 200:
                self.ok += 1
                self.pids.add(resp.json()["worker_pid"])
            else:
                self.failures.append(f"{resp.status_code} {resp.text[:200]}")

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.ok > 0 or self.failures, timeout=10)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=15)


# -- services and markers ----------------------------------------------------------------
# Test tiers by folder, from cheap to costly; `pytest -m unit` runs without any service.
TIERS = ("unit", "static", "integration", "jobs", "security", "client", "scaleout", "multihost",
         "bench", "e2e", "contract", "tenants", "traffic", "docs", "gpu")
# tests/gpu/ needs a CUDA device and its driver: bench/gpu_check.sh runs it there
# (BIS_GPU_TESTS=1). Elsewhere the same paths run on NVML recordings.
collect_ignore = [] if os.environ.get("BIS_GPU_TESTS") == "1" else ["gpu"]
# Tests that take ten seconds or more each on a busy 2-core box (load runs, backoffs,
# hundreds of jobs, model loads); `-m "not slow"` leaves them out, CI runs them.
SLOW = ("tests/bench/", "tests/e2e/", "tests/integration/test_backoff.py",
        "tests/integration/test_embeddings.py", "tests/integration/test_models_http.py",
        "tests/integration/test_shutdown.py", "tests/integration/test_startup_time.py",
        "tests/integration/test_scale_to_zero.py",
        "tests/jobs/test_jobs_crash.py", "tests/jobs/test_scaleout.py", "tests/multihost/",
        "tests/contract/test_schemathesis.py", "tests/docs/test_examples.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier (its folder under tests/), and `slow` where it is."""
    for item in items:
        where = Path(item.path).resolve().relative_to(ROOT).as_posix()
        tier = where.split("/")[1]
        if tier in TIERS:
            item.add_marker(tier)
        if where.startswith(SLOW):
            item.add_marker("slow")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the test session's own (a free port, a temporary folder)."""
    from tests.services import start_redis

    service, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    service.stop()


@pytest.fixture(scope="session")
def amqp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A RabbitMQ node of the test session's own (free ports, a temporary folder; guest/guest)."""
    from tests.services import start_rabbitmq

    service, url = start_rabbitmq(tmp_path_factory.mktemp("rabbitmq"))
    yield url
    service.stop()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of the test's own (in :func:`redis_url`); its keys are deleted after."""
    import redis

    prefix = f"bis-test-{os.urandom(4).hex()}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server of the test session's own (a free port, a temporary folder)."""
    from tests.services import start_postgres

    service, url = start_postgres(tmp_path_factory.mktemp("postgres"))
    yield url
    service.stop()


@dataclass
class S3Server:
    """moto's S3-compatible server: its address, and its log of the requests it answered."""

    url: str
    log_path: Path

    def repository(self, bucket: str) -> str:
        """A MODEL_REPOSITORY URL for ``bucket`` on this server."""
        return f"s3://testing:s3cret-key@{bucket}?endpoint_url={self.url}&region=us-east-1"

    def gets(self, key: str) -> int:
        """GETs of ``key`` (``bucket/path``) the server answered so far."""
        text = self.log_path.read_text(errors="replace")
        return len(re.findall(rf'"GET /{re.escape(key)} HTTP', text))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3-compatible server of the test session's own (moto, a free port)."""
    from tests.services import start_moto

    service, url = start_moto(tmp_path_factory.mktemp("s3"))
    yield S3Server(url, service.log_path)
    service.stop()
