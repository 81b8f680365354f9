"""What bench/bench_openai_peer.py and bench/openai_conformance_peer.py share: our gateway
and a LitServe app started in their own sessions on free ports, paused and resumed
whole, and stopped without leaving a process behind.

LitServe runs from its own venv (bench/setup_lit_llm.sh makes it): ``$LIT_LLM_VENV``,
by default ``$HOME/.cache/bis-peers/lit_llm_venv``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import requests
from bench_gateway import BenchError, free_port  # noqa: F401 - shared with the scripts

REPO = Path(__file__).resolve().parent.parent
RUN_GATEWAY = REPO / "run_gateway.py"
PEERS = Path(__file__).resolve().parent / "peers_openai"
LIT_VENV = Path(os.environ.get("LIT_LLM_VENV", Path.home() / ".cache" / "bis-peers" / "lit_llm_venv"))
ADMIN_TOKEN = os.urandom(16).hex()




def log(msg: str = "") -> None:
    """Progress on stderr (stdout holds the results)."""
    print(msg, file=sys.stderr, flush=True)


def run_in_scratch(name: str, run: Callable[[Any, Path], dict[str, Any]],
                   args: Any) -> dict[str, Any] | None:
    """``run(args, folder)`` in a scratch folder removed after it; None (said on stderr)
    when the benchmark could not run (BenchError)."""
    with tempfile.TemporaryDirectory(prefix=f"bis-{name}-") as tmp:
        try:
            return run(args, Path(tmp))
        except BenchError as exc:
            log(f"{name}: {exc}")
            return None


def poll(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.2,
         alive: Callable[[], None] | None = None) -> Any:
    """``check()`` until it is truthy; BenchError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        if alive is not None:
            alive()
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - not yet; the last one is reported
            last = exc
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}"
                             + (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


def lit_python() -> Path:
    python = LIT_VENV / "bin" / "python"
    if not python.exists():
        raise BenchError(f"no LitServe venv at {LIT_VENV}: run bash bench/setup_lit_llm.sh")
    return python


class Server:
    """A process started in its own session, with all its descendants."""

    def __init__(self, label: str, cmd: list[str], workdir: Path, env: dict[str, str],
                 port: int) -> None:
        self.label, self.cmd, self.workdir, self.env, self.port = label, cmd, workdir, env, port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"{label}.log"
        self.proc: subprocess.Popen | None = None
        self.seen: dict[int, psutil.Process] = {}
        self.leftovers: list[str] = []
        self.spawned_at = 0.0

    def start(self) -> Server:
        with open(self.log_path, "wb") as out:
            self.spawned_at = time.monotonic()
            self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=self.env)
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"{self.label} exited with {code}; log tail:\n{self.log_tail()}")

    def tree(self) -> list[psutil.Process]:
        """The process and its live descendants (each one remembered for the stop)."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return procs

    def groups(self) -> set[int]:
        found = set()
        for p in self.tree():
            try:
                found.add(os.getpgid(p.pid))
            except OSError:
                pass
        return found

    def signal_groups(self, sig: int) -> None:
        for pgid in self.groups():
            try:
                os.killpg(pgid, sig)
            except OSError:
                pass

    def pause(self) -> None:
        """SIGSTOP every process group of the tree (its idle polling then costs nothing)."""
        self.signal_groups(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_groups(signal.SIGCONT)

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def stop(self, grace: float = 10.0) -> list[str]:
        """SIGTERM the groups, then SIGKILL every group and process of the tree; what is
        still alive after that (nothing, normally) is returned and kept in ``leftovers``."""
        if self.proc is None:
            return self.leftovers
        self.signal_groups(signal.SIGCONT)
        groups = self.groups() | {self.proc.pid}
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self.tree()
        groups |= self.groups()
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        for p in self.seen.values():
            try:
                p.kill()
            except psutil.Error:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=10)
        self.leftovers = [f"{p.pid} {_cmdline(p)}" for p in alive if _exists(p)]
        self.proc = None
        return self.leftovers


def _exists(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:140]
    except psutil.Error:
        return "?"


def checkout() -> dict[str, Any]:
    """The commit of this checkout and the files changed on top of it (the figures are
    of that code)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout
    return {"head": git("rev-parse", "--short", "HEAD").strip(),
            "modified": git("status", "--porcelain", "--untracked-files=no").splitlines()}


# -- our gateway -----------------------------------------------------------------------
def ours(workdir: Path, config: dict[str, Any], endpoint_files: list[Path],
         label: str = "ours") -> Server:
    """``run_gateway.py`` of this checkout with ``config`` and a folder holding only
    ``endpoint_files``; the admin token is :data:`ADMIN_TOKEN`."""
    workdir.mkdir(parents=True, exist_ok=True)
    endpoints = workdir / "endpoints"
    endpoints.mkdir(exist_ok=True)
    for path in endpoint_files:
        (endpoints / path.name).write_bytes(path.read_bytes())
    config_path = workdir / "config_gateway.json"
    config_path.write_text(json.dumps({"FIRST_SERVER_PORT": 0, "STOP_TIMEOUT": 5, **config},
                                      indent=2))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIS_")}
    env.update(BIS_ADMIN_TOKEN=ADMIN_TOKEN, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(RUN_GATEWAY), "--host", "127.0.0.1", "--port", str(port),
           "--config", str(config_path), "--endpoints", str(endpoints)]
    return Server(label, cmd, workdir, env, port).start()


def admin(server: Server, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(method, server.base + path, json=body, timeout=30,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def wait_gateway_ready(server: Server, names: list[str], timeout: float) -> None:
    """Until the gateway's front answers and every endpoint of ``names`` is READY."""
    def ready() -> bool:
        found = admin(server, "GET", "/list_servers").json()["SERVERS"]
        return all(found.get(n, {}).get("state") == "READY" for n in names)
    poll(f"{server.label}: {names} READY", ready, timeout, interval=0.5, alive=server.check_alive)


# -- LitServe ------------------------------------------------------------------------------
def lit(workdir: Path, app: str, args: list[str] | None = None, env: dict[str, str] | None = None,
        label: str = "litserve") -> Server:
    """``bench/peers_openai/<app>`` in the LitServe venv, on a free port."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [str(lit_python()), str(PEERS / app), "--port", str(port), *(args or [])]
    full_env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    full_env.update(PYTHONUNBUFFERED="1", **(env or {}))
    return Server(label, cmd, workdir, full_env, port).start()
